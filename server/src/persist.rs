//! Persistence glue: the on-disk journal behind the engine, recovery at
//! start, and fuzzy snapshots that keep the journal (and restart time) bounded.
//! The engine knows only its [`JournalSink`]; the journal knows only opaque
//! records: this is the one place that joins them.

use crate::formats::SNAPSHOT_MAGIC;
use creditd_engine::account::Account;
use creditd_engine::engine::JournalSink;
use creditd_engine::id::Id;
use creditd_engine::Engine;
use creditd_journal::{FsyncMode, Journal, OpenReport};
use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Instant;
use tokio::sync::watch;

/// The engine's journal sink over the on-disk journal.
///
/// Why a slot rather than the journal itself: the engine must exist before the
/// journal is open, because opening the journal is recovery, which replays the
/// snapshot and the records into the engine; and the engine takes its sink
/// when it is built. So the engine gets this empty slot, and it is filled once
/// recovery is done. Nothing is appended before that: the listener starts
/// after recovery (and until then `has_capacity` says no, so the engine
/// refuses mutations; an append would panic).
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

/// magic (8, [`SNAPSHOT_MAGIC`]) + shard count (4) + clock instant (8).
const SNAPSHOT_HEADER_BYTES: usize = 20;

/// Builds a snapshot body: the clock's instant, then every shard, one at a
/// time (each shard is locked only while it is serialized, so no request
/// waits long). The instant keeps a restarted test clock from going back to
/// before what the journal it replaces had recorded.
pub fn snapshot_body(engine: &Engine) -> Vec<u8> {
    let mut body = Vec::with_capacity(1 << 20);
    body.extend_from_slice(SNAPSHOT_MAGIC);
    body.extend_from_slice(&(engine.shard_count() as u32).to_le_bytes());
    body.extend_from_slice(&engine.now_ms().to_le_bytes());
    let mut part = Vec::new();
    for i in 0..engine.shard_count() {
        part.clear();
        engine.snapshot_shard(i, &mut part);
        body.extend_from_slice(&(part.len() as u64).to_le_bytes());
        body.extend_from_slice(&part);
    }
    // After every shard: every event of a change a shard part holds is in it.
    part.clear();
    engine.snapshot_events(&mut part);
    body.extend_from_slice(&(part.len() as u64).to_le_bytes());
    body.extend_from_slice(&part);
    body
}

/// What Redis held when the server started (`--redis`): recovery builds on it.
#[derive(Default)]
pub struct RedisBase {
    /// Journal appends continue at this seq or later: after every version Redis holds.
    pub min_next_seq: u64,
    /// Every account Redis holds, with its [`account_version`] there.
    pub versions: HashMap<Id, (u64, u64)>,
}

/// The version of an account's state: the last journal record applied to it,
/// then its last history entry (time-driven changes such as expiries and
/// renewals add history without a journal record). Both only grow, so a
/// greater pair is a newer state.
pub fn account_version(acct: &Account) -> (u64, u64) {
    (acct.applied_seq, acct.history_seq())
}

/// What a snapshot held.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Restored {
    pub accounts: usize,
    /// The clock's instant when the snapshot was taken.
    pub clock_ms: u64,
}

/// Loads a snapshot body into the engine. With `redis`, every account the
/// snapshot holds newer than Redis is marked dirty, so the write-behind
/// brings Redis up to date (replayed records mark their accounts themselves).
pub fn restore_snapshot(
    engine: &Engine,
    body: &[u8],
    redis: Option<&RedisBase>,
) -> Result<Restored, String> {
    if body.len() >= 8 && body[..6] == SNAPSHOT_MAGIC[..6] && body[..8] != SNAPSHOT_MAGIC[..] {
        return Err(format!(
            "snapshot format {} was written by another creditd version (this one reads {})",
            String::from_utf8_lossy(&body[6..8]),
            String::from_utf8_lossy(&SNAPSHOT_MAGIC[6..])
        ));
    }
    if body.len() < SNAPSHOT_HEADER_BYTES || &body[..8] != SNAPSHOT_MAGIC {
        return Err("not a creditd snapshot".into());
    }
    let shards = u32::from_le_bytes(body[8..12].try_into().expect("4 bytes")) as usize;
    let clock_ms = u64::from_le_bytes(body[12..20].try_into().expect("8 bytes"));
    let mut at = SNAPSHOT_HEADER_BYTES;
    let mut accounts = 0;
    for _ in 0..shards {
        let len_bytes = body.get(at..at + 8).ok_or("snapshot truncated")?;
        let len = u64::from_le_bytes(len_bytes.try_into().expect("8 bytes")) as usize;
        at += 8;
        let part = body.get(at..at + len).ok_or("snapshot truncated")?;
        accounts += match redis {
            None => engine.restore_shard(part)?,
            Some(base) => restore_part_marking(engine, part, base)?,
        };
        at += len;
    }
    let len_bytes = body.get(at..at + 8).ok_or("snapshot truncated")?;
    let len = u64::from_le_bytes(len_bytes.try_into().expect("8 bytes")) as usize;
    at += 8;
    let events = body.get(at..at + len).ok_or("snapshot truncated")?;
    engine.restore_events(events)?;
    at += len;
    if at != body.len() {
        return Err("snapshot has trailing bytes".into());
    }
    Ok(Restored { accounts, clock_ms })
}

/// Restores one shard part account by account, marking those the snapshot
/// holds newer than Redis.
fn restore_part_marking(engine: &Engine, part: &[u8], base: &RedisBase) -> Result<usize, String> {
    let accounts = Engine::decode_shard(part)?;
    let n = accounts.len();
    for (id, acct) in accounts {
        let newer = base
            .versions
            .get(id.as_slice())
            .is_none_or(|&in_redis| account_version(&acct) > in_redis);
        engine.restore_account(&id, acct)?;
        if newer {
            engine.mark_dirty(&id);
        }
    }
    Ok(n)
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
/// into `engine`, then checks every account's invariants. With `redis` (the
/// accounts Redis held, already restored into `engine`), records the Redis
/// state already reflects are skipped by `applied_seq`, and the journal
/// continues numbering after everything Redis holds.
pub fn recover(
    engine: &Engine,
    dir: &Path,
    mode: FsyncMode,
    durable: watch::Sender<u64>,
    redis: Option<&RedisBase>,
) -> Result<Recovery, String> {
    let started = Instant::now();
    let max_at = AtomicU64::new(0);
    let mut snapshot_accounts = 0;
    let on_durable = Box::new(move |seq: u64| {
        durable.send_replace(seq);
    });
    let min_next_seq = redis.map_or(1, |r| r.min_next_seq.max(1));
    let (journal, report) = Journal::open_with(
        dir,
        mode,
        min_next_seq,
        on_durable,
        |_, body| {
            let restored = restore_snapshot(engine, body, redis)?;
            snapshot_accounts = restored.accounts;
            max_at.fetch_max(restored.clock_ms, Ordering::Relaxed);
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

#[cfg(test)]
mod tests {
    use super::*;
    use creditd_engine::bucket::BucketKind;
    use creditd_engine::clock::SystemClock;
    use creditd_engine::config::Config;
    use creditd_engine::id::Bytes;
    use creditd_engine::{Expiry, MemoryJournal, Mutation};

    fn engine() -> Engine {
        Engine::new(
            Config::builtin(),
            Arc::new(SystemClock),
            Arc::new(MemoryJournal::discarding()),
        )
        .track_dirty(true)
    }

    fn grant(engine: &Engine, account: &[u8], id: &[u8]) {
        let m = Mutation::Grant {
            grant_id: Bytes(id),
            amount: 100,
            kind: BucketKind::Prepaid,
            expiry: Expiry::Never,
            priority: 50,
        };
        engine.execute(account, &m).unwrap();
    }

    fn dirty(engine: &Engine) -> Vec<Vec<u8>> {
        let mut ids = Vec::new();
        engine.take_dirty(usize::MAX, |id, _| ids.push(id.to_vec()));
        ids.sort();
        ids
    }

    #[test]
    fn snapshot_accounts_newer_than_redis_are_marked_dirty() {
        let source = engine();
        for account in [&b"same"[..], b"older-in-redis", b"absent"] {
            grant(&source, account, b"g1");
        }
        grant(&source, b"older-in-redis", b"g2");
        let body = snapshot_body(&source);
        let version = |account: &[u8]| {
            let mut v = (0, 0);
            source.take_dirty(usize::MAX, |_, _| {});
            source.mark_dirty(account);
            source.take_dirty(1, |_, acct| v = account_version(acct));
            v
        };
        let mut base = RedisBase::default();
        base.versions.insert(Id::new(b"same"), version(b"same"));
        let (applied, history) = version(b"older-in-redis");
        base.versions
            .insert(Id::new(b"older-in-redis"), (applied, history - 1));

        let restored = engine();
        assert_eq!(
            restore_snapshot(&restored, &body, Some(&base)).map(|r| r.accounts),
            Ok(3)
        );
        assert_eq!(
            dirty(&restored),
            vec![b"absent".to_vec(), b"older-in-redis".to_vec()]
        );
        assert_eq!(restored.balance(b"older-in-redis").available, 200);

        let plain = engine();
        assert_eq!(
            restore_snapshot(&plain, &body, None).map(|r| r.accounts),
            Ok(3)
        );
        assert!(dirty(&plain).is_empty());
        assert_eq!(plain.balance(b"same").available, 100);
    }
}
