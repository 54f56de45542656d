//! Persistence glue: the journal behind the engine, recovery at start, and
//! fuzzy snapshots that keep the journal (and restart time) bounded.

use creditd_engine::engine::JournalSink;
use creditd_engine::journal::{FsyncMode, Journal, OpenReport};
use creditd_engine::Engine;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Instant;
use tokio::sync::watch;

/// The engine is built before the journal is open (recovery replays into
/// it), so its sink is a slot filled once the journal is ready. Nothing is
/// appended before that: the listener starts after recovery.
#[derive(Default)]
pub struct JournalSlot(OnceLock<Arc<Journal>>);

impl JournalSlot {
    pub fn set(&self, journal: Arc<Journal>) {
        assert!(self.0.set(journal).is_ok(), "journal set once");
    }
}

impl JournalSink for JournalSlot {
    fn has_capacity(&self) -> bool {
        self.0.get().is_some_and(|j| j.has_capacity())
    }
    fn append(&self, write: &mut dyn FnMut(&mut Vec<u8>)) -> u64 {
        self.0
            .get()
            .expect("no mutation before recovery finished")
            .append(write)
    }
}

const SNAPSHOT_MAGIC: &[u8; 8] = b"CDSNAP01";

/// Builds a snapshot body: every shard, one at a time (each shard is locked
/// only while it is serialized, so no request waits long).
pub fn snapshot_body(engine: &Engine) -> Vec<u8> {
    let mut body = Vec::with_capacity(1 << 20);
    body.extend_from_slice(SNAPSHOT_MAGIC);
    body.extend_from_slice(&(engine.shard_count() as u32).to_le_bytes());
    let mut part = Vec::new();
    for i in 0..engine.shard_count() {
        part.clear();
        engine.snapshot_shard(i, &mut part);
        body.extend_from_slice(&(part.len() as u64).to_le_bytes());
        body.extend_from_slice(&part);
    }
    body
}

/// Loads a snapshot body into the engine.
pub fn restore_snapshot(engine: &Engine, body: &[u8]) -> Result<usize, String> {
    if body.len() < 12 || &body[..8] != SNAPSHOT_MAGIC {
        return Err("not a creditd snapshot".into());
    }
    let shards = u32::from_le_bytes(body[8..12].try_into().expect("4 bytes")) as usize;
    let mut at = 12;
    let mut accounts = 0;
    for _ in 0..shards {
        let len_bytes = body.get(at..at + 8).ok_or("snapshot truncated")?;
        let len = u64::from_le_bytes(len_bytes.try_into().expect("8 bytes")) as usize;
        at += 8;
        let part = body.get(at..at + len).ok_or("snapshot truncated")?;
        accounts += engine.restore_shard(part)?;
        at += len;
    }
    if at != body.len() {
        return Err("snapshot has trailing bytes".into());
    }
    Ok(accounts)
}

/// What recovery found.
pub struct Recovery {
    pub journal: Arc<Journal>,
    pub report: OpenReport,
    /// Latest instant any record carried (a restarted test clock resumes there).
    pub max_at_ms: u64,
    pub snapshot_accounts: usize,
    pub elapsed_ms: u128,
}

/// Opens the journal, restores the latest snapshot and replays the rest
/// into `engine`, then checks every account's invariants.
pub fn recover(
    engine: &Engine,
    dir: &Path,
    mode: FsyncMode,
    durable: watch::Sender<u64>,
) -> Result<Recovery, String> {
    let started = Instant::now();
    let max_at = AtomicU64::new(0);
    let mut snapshot_accounts = 0;
    let on_durable = Box::new(move |seq: u64| {
        durable.send_replace(seq);
    });
    let (journal, report) = Journal::open(
        dir,
        mode,
        on_durable,
        |_, body| {
            snapshot_accounts = restore_snapshot(engine, body)?;
            Ok(())
        },
        |seq, payload| {
            let at = engine.replay(seq, payload)?;
            max_at.fetch_max(at, Ordering::Relaxed);
            Ok(())
        },
    )
    .map_err(|e| format!("journal recovery failed: {e}"))?;
    engine
        .check_all()
        .map_err(|e| format!("recovered state is inconsistent: {e}"))?;
    Ok(Recovery {
        journal: Arc::new(journal),
        report,
        max_at_ms: max_at.load(Ordering::Relaxed),
        snapshot_accounts,
        elapsed_ms: started.elapsed().as_millis(),
    })
}

/// Takes one fuzzy snapshot: rotate the journal, serialize shard by shard,
/// write it atomically, drop what it covers. Records that land in a shard
/// after the rotation but before its turn are in the snapshot and in the new
/// segment; replay skips them by each account's `applied_seq`.
pub fn take_snapshot(engine: &Engine, journal: &Journal) -> std::io::Result<(u64, usize)> {
    let first_seq = journal.rotate()?;
    let body = snapshot_body(engine);
    journal.write_snapshot(first_seq, &body)?;
    Ok((first_seq, body.len()))
}
