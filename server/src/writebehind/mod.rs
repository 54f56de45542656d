//! Redis write-behind: account state and an audit stream, written behind to
//! Redis off the hot path; recovery from Redis at start.
//!
//! The engine tracks which accounts changed (`Engine::track_dirty`). A writer
//! thread ([`writer`]) repeatedly takes every changed account and writes it
//! with a version-checked, fenced Lua script ([`script`]); an account changed
//! 100 times between two passes is written once. The key schema is in
//! docs/OPERATIONS.md; its version is [`crate::formats::REDIS_SCHEMA`].
//!
//! Ownership: one creditd owns a Redis keyspace, by a lease with a fencing
//! epoch ([`crate::lease`]) taken before anything is loaded; every write
//! checks the lease inside Redis, so a process that lost it (paused, cut off)
//! never overwrites its successor. While the lease is not held, mutations
//! answer `-BUSY` (see [`Shared::refusal`]).
//!
//! Versions: each account's state carries `version` = the journal seq of the
//! last record applied to it (`Account::applied_seq`), and `history_seq` = its
//! last history entry (time-driven changes such as expiries add history
//! without a journal record). The script writes only a greater pair.
//!
//! Pending and lag: a pass notes the journal's last seq S when it starts, then
//! empties every dirty list; every change with seq <= S was marked dirty (under
//! its shard lock) before the pass locked that shard, so when the pass's writes
//! succeed, everything up to S is in Redis: S becomes the watermark.
//! `redis_pending` is the acknowledged (durable) seq minus the watermark;
//! `redis_lag_ms` the time since the watermark's pass started, while anything
//! is pending (an upper bound on the age of the oldest unwritten change).
//!
//! Outages: a failed batch's accounts are marked dirty again, the connection is
//! dropped and re-made with exponential backoff (100 ms to 5 s); meanwhile the
//! server serves from memory and the journal, as long as its lease holds and
//! the backlog stays under `redis_max_pending`.
//!
//! Lost data: every write, and a check every second while idle, compares the
//! `creditd:meta` watermark with the one this writer last wrote; less means
//! Redis lost data (a flush, an eviction, a failover to a stale replica), and
//! every account is written again.
//!
//! The data dir: when the state loaded from Redis is more than the data dir
//! holds, the data dir depends on Redis from then on ([`dependency`]).

pub mod dependency;
mod events;
mod load;
mod pass;
mod script;
mod writer;

pub use load::{load, Loaded};

use crate::app::{App, WriteBehindStatus};
use crate::lease::{Lease, LeaseStatus};
use crate::stop::Worker;
use creditd_journal::Journal;
use metrics::{counter, gauge};
use parking_lot::Mutex;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use writer::Writer;

/// Prefix of the per-account hashes: `creditd:acct:<account id bytes>`.
pub const ACCOUNT_PREFIX: &[u8] = b"creditd:acct:";
/// The audit stream: one entry per history entry.
pub const AUDIT_STREAM: &str = "creditd:audit";
/// The events stream: one entry per event (EVENTS), exactly once.
pub const EVENTS_STREAM: &str = "creditd:events";
/// Writer metadata: `watermark`, `schema`, `node`, `updated_at_ms`, `events_seq`.
pub const META_KEY: &str = "creditd:meta";

const BACKOFF_MIN: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(5);

/// The Redis key of an account's hash.
pub fn account_key(account: &[u8]) -> Vec<u8> {
    let mut key = Vec::with_capacity(ACCOUNT_PREFIX.len() + account.len());
    key.extend_from_slice(ACCOUNT_PREFIX);
    key.extend_from_slice(account);
    key
}

/// The URL without its password, for logs and messages.
pub fn shown(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            format!("{}***@{}", &url[..scheme + 3], &url[at + 1..])
        }
        _ => url.to_string(),
    }
}

/// What the rest of the server sees of the write-behind.
struct Shared {
    journal: Arc<Journal>,
    lease: Arc<Lease>,
    node_id: String,
    connected: AtomicBool,
    /// Every change with seq <= watermark is in Redis.
    watermark: AtomicU64,
    /// When the pass that set the watermark started (ms since `epoch`).
    watermark_at_ms: AtomicU64,
    epoch: Instant,
    max_pending: AtomicU64,
    /// Times Redis was found to have lost written data.
    data_loss_events: AtomicU64,
    /// Account writes (and whole calls) Redis refused.
    write_errors: AtomicU64,
    last_error: Mutex<String>,
    /// The last event number the `creditd:events` stream holds.
    events_streamed: AtomicU64,
}

impl Shared {
    fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }

    fn over_bound(&self) -> bool {
        self.pending() > self.max_pending.load(Ordering::Relaxed)
    }
}

impl WriteBehindStatus for Shared {
    fn connected(&self) -> bool {
        self.connected.load(Ordering::Relaxed)
    }

    fn pending(&self) -> u64 {
        // Acknowledged changes: replies wait for the durable seq.
        self.journal
            .durable_seq()
            .saturating_sub(self.watermark.load(Ordering::Acquire))
    }

    fn lag_ms(&self) -> u64 {
        if self.pending() == 0 {
            return 0;
        }
        self.now_ms()
            .saturating_sub(self.watermark_at_ms.load(Ordering::Acquire))
    }

    fn refusal(&self) -> Option<String> {
        match self.lease.status() {
            LeaseStatus::Held => {}
            // Replies carry no changing numbers, so clients may compare
            // messages; INFO has the figures.
            LeaseStatus::Lapsed { .. } => {
                return Some(
                    "the Redis lease lapsed and is not renewed yet (Redis unreachable, or this process was paused)".into(),
                )
            }
            LeaseStatus::Lost(reason) => {
                return Some(format!(
                    "this creditd {reason}; it no longer writes to Redis: stop it"
                ))
            }
        }
        self.over_bound().then(|| {
            format!(
                "the Redis write-behind backlog is over its bound (redis_max_pending = {})",
                self.max_pending.load(Ordering::Relaxed)
            )
        })
    }

    fn write_info(&self, out: &mut String) {
        let lease = match self.lease.status() {
            LeaseStatus::Held => "held",
            LeaseStatus::Lapsed { .. } => "lapsed",
            LeaseStatus::Lost(_) => "lost",
        };
        let last_error = self.last_error.lock().replace(['\r', '\n'], " ");
        let _ = write!(
            out,
            "redis_node_id:{}\r\nredis_lease:{lease}\r\nredis_lease_epoch:{}\r\nredis_data_loss_events:{}\r\nredis_write_errors:{}\r\nredis_last_error:{last_error}\r\nredis_events_streamed_seq:{}\r\n",
            self.node_id,
            self.lease.epoch(),
            self.data_loss_events.load(Ordering::Relaxed),
            self.write_errors.load(Ordering::Relaxed),
            self.events_streamed.load(Ordering::Relaxed),
        );
    }

    fn export_metrics(&self) {
        counter!("creditd_redis_data_loss_events_total")
            .absolute(self.data_loss_events.load(Ordering::Relaxed));
        counter!("creditd_redis_write_errors_total")
            .absolute(self.write_errors.load(Ordering::Relaxed));
        let held = matches!(self.lease.status(), LeaseStatus::Held);
        gauge!("creditd_redis_lease_held").set(u8::from(held) as f64);
        gauge!("creditd_redis_lease_epoch").set(self.lease.epoch() as f64);
        gauge!("creditd_redis_events_streamed_seq")
            .set(self.events_streamed.load(Ordering::Relaxed) as f64);
    }
}

/// The running write-behind: its writer thread and the lease it writes under.
pub struct WriteBehind {
    writer: Worker,
    lease: Arc<Lease>,
}

impl WriteBehind {
    /// Flushes and stops the write-behind: writes what's dirty for up to 5 s
    /// and logs what was left; then gives the lease up, so that a successor
    /// can start at once.
    pub async fn shutdown(self) {
        self.writer.shutdown().await;
        let lease = self.lease;
        let _ = tokio::task::spawn_blocking(move || lease.release()).await;
    }
}

/// Starts the write-behind (after recovery): publishes its status in
/// `app.redis` and starts the writer thread.
pub fn start(app: Arc<App>, loaded: Loaded) -> Result<WriteBehind, String> {
    let Loaded {
        client,
        url,
        lease,
        node_id,
        meta_watermark,
        meta_present,
        base,
        ..
    } = loaded;
    let last_seq = app.journal.stats().last_seq;
    // Everything already in Redis, or (if recovery found changes Redis lacks)
    // what Redis held at start.
    let watermark = if app.engine.dirty_count() == 0 {
        last_seq
    } else {
        (base.min_next_seq - 1).min(last_seq)
    };
    let max_pending = app.settings.read().redis_max_pending;
    let lease = Arc::new(lease);
    let shared = Arc::new(Shared {
        journal: app.journal.clone(),
        lease: lease.clone(),
        node_id: node_id.clone(),
        connected: AtomicBool::new(false),
        watermark: AtomicU64::new(watermark),
        watermark_at_ms: AtomicU64::new(0),
        epoch: Instant::now(),
        max_pending: AtomicU64::new(max_pending),
        data_loss_events: AtomicU64::new(0),
        write_errors: AtomicU64::new(0),
        last_error: Mutex::new(String::new()),
        events_streamed: AtomicU64::new(0),
    });
    *app.redis.write() = Some(shared.clone());
    let streamed = base
        .versions
        .into_iter()
        .map(|(id, (_, history_seq))| (id, history_seq))
        .collect();
    let (engine, writer_lease, settings) =
        (app.engine.clone(), lease.clone(), app.settings.clone());
    let writer = Worker::thread("creditd-redis", move |stop| {
        Writer::new(
            stop,
            shared,
            engine,
            writer_lease,
            client,
            shown(&url),
            node_id,
            streamed,
            meta_watermark,
            meta_present,
            settings,
        )
        .run()
    })?;
    Ok(WriteBehind { writer, lease })
}

/// A snapshot was written (`first_seq`): with `--redis`, it holds the whole
/// state, so the data dir no longer depends on Redis.
pub fn snapshot_taken(app: &App, first_seq: u64) {
    if app.opts.redis.is_some() && !app.opts.cluster {
        dependency::snapshot_taken(&app.opts.data_dir, first_seq);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_are_shown_without_passwords() {
        assert_eq!(
            shown("redis://:s3cret@127.0.0.1:6379/0"),
            "redis://***@127.0.0.1:6379/0"
        );
        assert_eq!(shown("redis://127.0.0.1:6379"), "redis://127.0.0.1:6379");
    }

    #[test]
    fn account_keys_are_prefixed_bytes() {
        assert_eq!(account_key(b"a\x00b"), b"creditd:acct:a\x00b".to_vec());
    }
}
