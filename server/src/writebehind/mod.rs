//! Redis write-behind (issue 5): account state and an audit stream, written
//! behind to Redis off the hot path; recovery from Redis at start.
//!
//! The engine tracks which accounts changed (`Engine::track_dirty`). A writer
//! thread repeatedly takes every changed account in one pass over the shards
//! (serializing each under its shard lock), then writes them in pipelined
//! batches of [`BATCH_ACCOUNTS`] accounts (`EVALSHA` calls of
//! [`SCRIPT_ACCOUNTS`] each), sending the next batch before reading the
//! replies of the one before. An account changed 100 times between two
//! passes is written once.
//!
//! Versions: each account's state carries `version` = the journal seq of the
//! last record applied to it (`Account::applied_seq`), and `history_seq` = its
//! last history entry (time-driven changes such as expiries add history
//! without a journal record). The Lua script writes only a greater
//! `(version, history_seq)` pair, so an older write (a retry of a failed batch,
//! a write racing a restart) never overwrites a newer one, and it appends to the
//! audit stream only the history entries newer than the stored `history_seq`,
//! so a retry never duplicates them. The key schema is in docs/OPERATIONS.md.
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
//! server serves from memory and the journal. Past `redis_max_pending`,
//! mutations answer `-BUSY` and `/readyz` says why (see `App::execute`). On
//! reconnect, a `creditd:meta` watermark below the one last written means Redis
//! lost data (restarted without persistence, failed over): every account is
//! written again.

use crate::app::{App, WriteBehindStatus};
use crate::persist::{account_version, RedisBase};
use creditd_engine::account::Balance;
use creditd_engine::clock::wall_clock_ms;
use creditd_engine::history::HistoryEntry;
use creditd_engine::id::Id;
use creditd_engine::journal::Journal;
use creditd_engine::Engine;
use parking_lot::Mutex;
use redis::{AsyncConnectionConfig, Client, Value};
use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Prefix of the per-account hashes: `creditd:acct:<account id bytes>`.
pub const ACCOUNT_PREFIX: &[u8] = b"creditd:acct:";
/// The audit stream: one entry per history entry.
pub const AUDIT_STREAM: &str = "creditd:audit";
/// Writer metadata: `watermark`, `schema`, `updated_at_ms`.
pub const META_KEY: &str = "creditd:meta";
/// Version of the key schema, stored in `creditd:meta`.
pub const SCHEMA: u64 = 1;

/// Accounts per pipelined batch (two batches in flight at most).
const BATCH_ACCOUNTS: usize = 1024;
/// Bounds on one pass over the dirty lists (memory held by serialized
/// states); changed accounts beyond them wait for the next pass.
const PASS_ACCOUNTS: usize = 262_144;
const PASS_BYTES: usize = 256 << 20;
/// Accounts per EVALSHA call (one script run writes this many).
const SCRIPT_ACCOUNTS: usize = 64;
/// The send buffer is kept between batches up to this capacity.
const OUT_BUFFER_KEEP: usize = 16 << 20;
/// How often an idle writer looks for changes.
const IDLE_TICK: Duration = Duration::from_millis(5);
const BACKOFF_MIN: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(5);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
const RESPONSE_TIMEOUT: Duration = Duration::from_secs(5);
/// How long start-up keeps trying to reach Redis before it gives up.
const START_CONNECT_BUDGET: Duration = Duration::from_secs(10);
/// How long a graceful shutdown keeps writing what's left.
const STOP_DEADLINE: Duration = Duration::from_secs(5);
/// SCAN batch size during recovery.
const SCAN_COUNT: u64 = 1000;

/// KEYS: [audit stream, account hash...]. ARGV: [stream maxlen, then per
/// account: id, version, history_seq, state, available, held, spent,
/// expired, granted, plan, seats, n, then n history entries of 5 fields
/// (seq at op id amount), oldest first]. Returns how many accounts it wrote.
const SCRIPT: &str = r#"
local stream = KEYS[1]
local maxlen = ARGV[1]
local a = 2
local written = 0
for k = 2, #KEYS do
  local key = KEYS[k]
  local version = tonumber(ARGV[a + 1])
  local hseq = tonumber(ARGV[a + 2])
  local n = tonumber(ARGV[a + 11])
  local cur = redis.call('HMGET', key, 'version', 'history_seq')
  local cv = tonumber(cur[1]) or -1
  local ch = tonumber(cur[2]) or 0
  if version > cv or (version == cv and hseq > ch) then
    redis.call('HSET', key,
      'version', ARGV[a + 1], 'history_seq', ARGV[a + 2], 'state', ARGV[a + 3],
      'available', ARGV[a + 4], 'held', ARGV[a + 5], 'spent', ARGV[a + 6],
      'expired', ARGV[a + 7], 'granted', ARGV[a + 8], 'plan', ARGV[a + 9],
      'seats', ARGV[a + 10])
    written = written + 1
    for j = 0, n - 1 do
      local e = a + 12 + j * 5
      if tonumber(ARGV[e]) > ch then
        redis.call('XADD', stream, 'MAXLEN', '~', maxlen, '*',
          'account', ARGV[a], 'seq', ARGV[e], 'at', ARGV[e + 1], 'op', ARGV[e + 2],
          'id', ARGV[e + 3], 'amount', ARGV[e + 4])
      end
    end
  end
  a = a + 12 + n * 5
end
return written
"#;

/// The Redis key of an account's hash.
pub fn account_key(account: &[u8]) -> Vec<u8> {
    let mut key = Vec::with_capacity(ACCOUNT_PREFIX.len() + account.len());
    key.extend_from_slice(ACCOUNT_PREFIX);
    key.extend_from_slice(account);
    key
}

/// The URL without its password, for logs and messages.
fn shown(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            format!("{}***@{}", &url[..scheme + 3], &url[at + 1..])
        }
        _ => url.to_string(),
    }
}

fn connection_config() -> AsyncConnectionConfig {
    AsyncConnectionConfig::new()
        .set_connection_timeout(Some(CONNECT_TIMEOUT))
        .set_response_timeout(Some(RESPONSE_TIMEOUT))
}

/// What start-up read from Redis.
pub struct Loaded {
    client: Client,
    url: String,
    /// Accounts restored into the engine.
    pub accounts: usize,
    /// The `creditd:meta` watermark found (0 if none).
    meta_watermark: u64,
    /// Versions of the accounts in Redis; the journal continues after them.
    pub base: RedisBase,
}

/// Recovery, first step (before the journal is opened): loads every account
/// Redis holds into `engine`. Keeps trying to reach Redis for
/// [`START_CONNECT_BUDGET`], then fails the start: serving without the state
/// Redis holds could hand out credits twice.
pub async fn load(engine: &Engine, url: &str) -> Result<Loaded, String> {
    let client = Client::open(url).map_err(|e| format!("--redis {}: bad URL: {e}", shown(url)))?;
    let started = Instant::now();
    let mut backoff = BACKOFF_MIN;
    let mut conn = loop {
        match client
            .get_multiplexed_async_connection_with_config(&connection_config())
            .await
        {
            Ok(conn) => break conn,
            Err(e) if started.elapsed() + backoff < START_CONNECT_BUDGET => {
                tracing::warn!(redis = %shown(url), "cannot reach Redis yet ({e}); retrying");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(BACKOFF_MAX);
            }
            Err(e) => {
                return Err(format!(
                    "cannot reach Redis at {} after {} s: {e}. With --redis, creditd loads its state from Redis before serving and will not start without it; start Redis, or start without --redis to serve from the local journal alone",
                    shown(url),
                    started.elapsed().as_secs()
                ))
            }
        }
    };
    let fail = |what: &str, e: redis::RedisError| {
        format!("loading state from Redis at {}: {what}: {e}", shown(url))
    };
    let (schema, meta_watermark): (Option<u64>, Option<u64>) = redis::cmd("HMGET")
        .arg(META_KEY)
        .arg("schema")
        .arg("watermark")
        .query_async(&mut conn)
        .await
        .map_err(|e| fail("HMGET creditd:meta", e))?;
    if let Some(schema) = schema.filter(|&s| s != SCHEMA) {
        return Err(format!(
            "Redis at {} holds creditd key schema {schema}; this creditd writes schema {SCHEMA}",
            shown(url)
        ));
    }
    let mut pattern = ACCOUNT_PREFIX.to_vec();
    pattern.push(b'*');
    let mut base = RedisBase::default();
    let mut max_version = meta_watermark.unwrap_or(0);
    let mut accounts = 0;
    let mut cursor: u64 = 0;
    loop {
        let (next, keys): (u64, Vec<Vec<u8>>) = redis::cmd("SCAN")
            .arg(cursor)
            .arg("MATCH")
            .arg(&pattern[..])
            .arg("COUNT")
            .arg(SCAN_COUNT)
            .query_async(&mut conn)
            .await
            .map_err(|e| fail("SCAN", e))?;
        if !keys.is_empty() {
            let mut pipe = redis::pipe();
            for key in &keys {
                pipe.cmd("HGET").arg(&key[..]).arg("state");
            }
            let states: Vec<Option<Vec<u8>>> = pipe
                .query_async(&mut conn)
                .await
                .map_err(|e| fail("HGET state", e))?;
            for (key, state) in keys.iter().zip(states) {
                let id = &key[ACCOUNT_PREFIX.len()..];
                let shown_key = String::from_utf8_lossy(key);
                let state =
                    state.ok_or_else(|| format!("Redis key {shown_key} has no 'state' field"))?;
                let acct = postcard::from_bytes::<creditd_engine::account::Account>(&state)
                    .map_err(|e| format!("Redis key {shown_key}: undecodable state: {e}"))?;
                let version = account_version(&acct);
                max_version = max_version.max(version.0);
                engine
                    .restore_account(id, acct)
                    .map_err(|e| format!("Redis key {shown_key}: {e}"))?;
                if base.versions.insert(Id::new(id), version).is_none() {
                    accounts += 1;
                }
            }
        }
        if next == 0 {
            break;
        }
        cursor = next;
    }
    base.min_next_seq = max_version + 1;
    Ok(Loaded {
        client,
        url: url.to_string(),
        accounts,
        meta_watermark: meta_watermark.unwrap_or(0),
        base,
    })
}

/// What the rest of the server sees of the write-behind.
struct Shared {
    journal: Arc<Journal>,
    connected: AtomicBool,
    /// Every change with seq <= watermark is in Redis.
    watermark: AtomicU64,
    /// When the pass that set the watermark started (ms since `epoch`).
    watermark_at_ms: AtomicU64,
    epoch: Instant,
    max_pending: AtomicU64,
    stop: AtomicBool,
}

impl Shared {
    fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
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

    fn over_bound(&self) -> bool {
        self.pending() > self.max_pending.load(Ordering::Relaxed)
    }
}

struct Running {
    shared: Arc<Shared>,
    thread: std::thread::JoinHandle<()>,
}

/// The write-behind of this process (one per process).
static RUNNING: Mutex<Option<Running>> = Mutex::new(None);

/// Starts the write-behind (after recovery): publishes its status in
/// `app.redis` and starts the writer thread.
pub fn start(app: Arc<App>, loaded: Loaded) -> Result<(), String> {
    let Loaded {
        client,
        url,
        meta_watermark,
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
    let settings = app.engine.catalog().config.settings.clone();
    let shared = Arc::new(Shared {
        journal: app.journal.clone(),
        connected: AtomicBool::new(false),
        watermark: AtomicU64::new(watermark),
        watermark_at_ms: AtomicU64::new(0),
        epoch: Instant::now(),
        max_pending: AtomicU64::new(settings.redis_max_pending),
        stop: AtomicBool::new(false),
    });
    let writer = Writer {
        shared: shared.clone(),
        engine: app.engine.clone(),
        client,
        url: shown(&url),
        streamed: base
            .versions
            .into_iter()
            .map(|(id, (_, history_seq))| (id, history_seq))
            .collect(),
        meta_written: meta_watermark,
        conn: None,
        sha: String::new(),
        out: Vec::new(),
        linked: false,
        maxlen: settings.redis_stream_maxlen,
    };
    *app.redis.write() = Some(shared.clone());
    let thread = std::thread::Builder::new()
        .name("creditd-redis".into())
        .spawn(move || writer.run())
        .map_err(|e| format!("cannot start the Redis writer thread: {e}"))?;
    *RUNNING.lock() = Some(Running { shared, thread });
    Ok(())
}

/// Flushes and stops the write-behind, if any: writes what's dirty for up to
/// [`STOP_DEADLINE`] and logs what was left.
pub async fn stop(_app: &App) {
    let Some(running) = RUNNING.lock().take() else {
        return;
    };
    running.shared.stop.store(true, Ordering::Release);
    running.thread.thread().unpark();
    let thread = running.thread;
    let _ = tokio::task::spawn_blocking(move || thread.join()).await;
}

/// One account's state as taken from the engine.
struct Item {
    id: Id,
    version: u64,
    history_seq: u64,
    state: Vec<u8>,
    balance: Balance,
    plan: Option<Id>,
    seats: u32,
    /// History entries Redis does not have yet, oldest first.
    entries: Vec<HistoryEntry>,
}

/// A batch sent whose replies are not read yet.
struct Sent {
    /// The accounts written, with the history seq each write streams up to.
    accounts: Vec<(Id, u64)>,
    replies: usize,
    watermark: Option<u64>,
}

struct Writer {
    shared: Arc<Shared>,
    engine: Arc<Engine>,
    client: Client,
    url: String,
    /// Every account known to be in Redis, with the last history seq streamed for it.
    streamed: HashMap<Id, u64>,
    /// The last watermark written to `creditd:meta`.
    meta_written: u64,
    conn: Option<redis::Connection>,
    sha: String,
    /// Reused buffer of encoded commands.
    out: Vec<u8>,
    /// The link state last logged.
    linked: bool,
    maxlen: u64,
}

impl Writer {
    fn run(mut self) {
        let mut backoff = BACKOFF_MIN;
        let mut deadline: Option<Instant> = None;
        let drained = loop {
            if deadline.is_none() && self.shared.stop.load(Ordering::Acquire) {
                deadline = Some(Instant::now() + STOP_DEADLINE);
            }
            if deadline.is_some_and(|d| Instant::now() >= d) {
                break false;
            }
            self.refresh_settings();
            if self.conn.is_none() {
                if let Err(e) = self.connect() {
                    self.set_link(false, &e);
                    let mut wait = backoff;
                    if let Some(d) = deadline {
                        wait = wait.min(d.saturating_duration_since(Instant::now()));
                    }
                    self.pause(wait);
                    backoff = (backoff * 2).min(BACKOFF_MAX);
                    continue;
                }
                backoff = BACKOFF_MIN;
            }
            match self.pass() {
                Ok(0) if deadline.is_some() => break true,
                Ok(0) => self.pause(IDLE_TICK),
                Ok(_) => {}
                Err(e) => {
                    self.conn = None;
                    self.set_link(false, &e);
                }
            }
        };
        let pending = self.shared.pending();
        if drained {
            tracing::info!(
                redis = %self.url,
                "Redis write-behind stopped: every change is in Redis"
            );
        } else {
            tracing::warn!(
                redis = %self.url,
                accounts = self.engine.dirty_count(),
                changes = pending,
                "Redis write-behind stopped with changes not yet in Redis; they are in the journal and are written behind after the next start"
            );
        }
    }

    /// Sleeps for `wait`, or less if stop is requested (`stop` unparks).
    fn pause(&self, wait: Duration) {
        std::thread::park_timeout(wait);
    }

    fn refresh_settings(&mut self) {
        let catalog = self.engine.catalog();
        let settings = &catalog.config.settings;
        self.shared
            .max_pending
            .store(settings.redis_max_pending, Ordering::Relaxed);
        self.maxlen = settings.redis_stream_maxlen;
    }

    /// Logs a change of link state once (not every attempt).
    fn set_link(&mut self, up: bool, error: &str) {
        self.shared.connected.store(up, Ordering::Relaxed);
        if up == self.linked {
            tracing::debug!(redis = %self.url, up, "{error}");
            return;
        }
        self.linked = up;
        if up {
            tracing::info!(redis = %self.url, "Redis write-behind connected");
        } else {
            tracing::warn!(
                redis = %self.url,
                error,
                "Redis write-behind disconnected; serving from memory and the journal, retrying with backoff"
            );
        }
    }

    fn connect(&mut self) -> Result<(), String> {
        let err = |e: redis::RedisError| e.to_string();
        let mut conn = self
            .client
            .get_connection_with_timeout(CONNECT_TIMEOUT)
            .map_err(err)?;
        conn.set_read_timeout(Some(RESPONSE_TIMEOUT)).map_err(err)?;
        conn.set_write_timeout(Some(RESPONSE_TIMEOUT))
            .map_err(err)?;
        let sha: String = redis::cmd("SCRIPT")
            .arg("LOAD")
            .arg(SCRIPT)
            .query(&mut conn)
            .map_err(err)?;
        let stored: Option<u64> = redis::cmd("HGET")
            .arg(META_KEY)
            .arg("watermark")
            .query(&mut conn)
            .map_err(err)?;
        let stored = stored.unwrap_or(0);
        if stored < self.meta_written {
            // Redis lost writes (restarted without persistence, restored an
            // older dump, failed over): write every account again, with its
            // whole history still in memory (the script skips what's there).
            tracing::warn!(
                redis = %self.url,
                watermark = stored,
                expected = self.meta_written,
                accounts = self.streamed.len(),
                "Redis lost written-behind data; writing every account again"
            );
            for (id, history_seq) in self.streamed.iter_mut() {
                self.engine.mark_dirty(id);
                *history_seq = 0;
            }
            self.meta_written = stored;
        }
        self.conn = Some(conn);
        self.sha = sha;
        self.set_link(true, "");
        Ok(())
    }

    /// One pass over the dirty lists, then its writes. Returns how many
    /// accounts it wrote. A pass takes every account changed so far (each
    /// shard emptied under its lock, in one sweep), so when all its writes
    /// succeed, every change up to the journal seq read before the pass is
    /// in Redis: that seq becomes the watermark. Changes made meanwhile are
    /// the next pass's. Batches are pipelined two deep: the next one is sent
    /// before the replies of the one before are read.
    fn pass(&mut self) -> Result<usize, String> {
        let started_ms = self.shared.now_ms();
        let seq = self.shared.journal.stats().last_seq;
        let (items, deferred) = self.take_pass();
        // Past the pass bound: these wait for the next pass, and this pass
        // does not complete the watermark.
        self.mark_dirty(deferred.iter());
        let complete = deferred.is_empty();
        let mut in_flight: VecDeque<Sent> = VecDeque::with_capacity(2);
        let mut written = 0;
        let mut batches = items.chunks(BATCH_ACCOUNTS).peekable();
        let outcome = loop {
            if let Some(batch) = batches.next() {
                let watermark = (complete && batches.peek().is_none()).then_some(seq);
                match self.send(batch, watermark) {
                    Ok(sent) => in_flight.push_back(sent),
                    Err(e) => {
                        self.mark_dirty(batch.iter().map(|item| &item.id));
                        break Err(e);
                    }
                }
            }
            let Some(sent) = in_flight.front() else {
                break Ok(written);
            };
            if in_flight.len() < 2 && batches.peek().is_some() {
                continue;
            }
            match self.receive(sent) {
                Ok(()) => {
                    let sent = in_flight.pop_front().expect("one in flight");
                    written += sent.accounts.len();
                    for (id, history_seq) in sent.accounts {
                        self.streamed.insert(id, history_seq);
                    }
                    if let Some(watermark) = sent.watermark {
                        self.meta_written = self.meta_written.max(watermark);
                    }
                }
                Err(e) => break Err(e),
            }
        };
        if outcome.is_err() {
            // Whatever was not confirmed is written again later.
            for sent in &in_flight {
                self.mark_dirty(sent.accounts.iter().map(|(id, _)| id));
            }
            for batch in batches {
                self.mark_dirty(batch.iter().map(|item| &item.id));
            }
            return outcome;
        }
        if complete {
            self.shared
                .watermark_at_ms
                .store(started_ms, Ordering::Release);
            self.shared.watermark.fetch_max(seq, Ordering::AcqRel);
        }
        outcome
    }

    /// Marks accounts whose write failed dirty again: they are written later.
    fn mark_dirty<'a>(&self, ids: impl Iterator<Item = &'a Id>) {
        for id in ids {
            self.engine.mark_dirty(id);
        }
    }

    /// Takes every changed account in one sweep over the shards, serializing
    /// up to [`PASS_ACCOUNTS`] / [`PASS_BYTES`] of them; the ids beyond are
    /// returned to be marked dirty again (not here: the shard lock is held).
    fn take_pass(&self) -> (Vec<Item>, Vec<Id>) {
        let mut items: Vec<Item> = Vec::new();
        let mut deferred: Vec<Id> = Vec::new();
        let mut bytes = 0;
        self.engine.take_dirty(usize::MAX, |id, acct| {
            if items.len() >= PASS_ACCOUNTS || bytes >= PASS_BYTES {
                deferred.push(id.clone());
                return;
            }
            let (version, history_seq) = account_version(acct);
            let known = self.streamed.get(id).copied().unwrap_or(0);
            let entries = match history_seq.saturating_sub(known) {
                0 => Vec::new(),
                fresh => {
                    let mut all = acct.history(usize::try_from(fresh).unwrap_or(usize::MAX));
                    all.reverse();
                    all
                }
            };
            let view = acct.view();
            let state = postcard::to_allocvec(acct).expect("an account encodes");
            bytes += state.len();
            items.push(Item {
                id: id.clone(),
                version,
                history_seq,
                state,
                balance: view.balance,
                plan: view.plan,
                seats: view.seats,
                entries,
            });
        });
        (items, deferred)
    }

    /// Sends one batch as one pipeline, without waiting for the replies;
    /// with `watermark`, also records it in `creditd:meta`. The commands are
    /// encoded straight into one reused buffer.
    fn send(&mut self, batch: &[Item], watermark: Option<u64>) -> Result<Sent, String> {
        let mut out = std::mem::take(&mut self.out);
        out.clear();
        let mut replies = 0;
        for chunk in batch.chunks(SCRIPT_ACCOUNTS) {
            let args: usize = chunk.iter().map(|i| 13 + 5 * i.entries.len()).sum();
            resp::array(&mut out, 5 + args);
            resp::bulk(&mut out, b"EVALSHA");
            resp::bulk(&mut out, self.sha.as_bytes());
            resp::bulk_u64(&mut out, 1 + chunk.len() as u64);
            resp::bulk(&mut out, AUDIT_STREAM.as_bytes());
            for item in chunk {
                resp::bulk2(&mut out, ACCOUNT_PREFIX, &item.id);
            }
            resp::bulk_u64(&mut out, self.maxlen);
            for item in chunk {
                let b = &item.balance;
                resp::bulk(&mut out, &item.id);
                for v in [item.version, item.history_seq] {
                    resp::bulk_u64(&mut out, v);
                }
                resp::bulk(&mut out, &item.state);
                for v in [b.available, b.held, b.spent, b.expired, b.granted] {
                    resp::bulk_u64(&mut out, v);
                }
                resp::bulk(&mut out, item.plan.as_deref().unwrap_or(b""));
                resp::bulk_u64(&mut out, u64::from(item.seats));
                resp::bulk_u64(&mut out, item.entries.len() as u64);
                for e in &item.entries {
                    resp::bulk_u64(&mut out, e.seq);
                    resp::bulk_u64(&mut out, e.at_ms);
                    resp::bulk(&mut out, e.op.as_str().as_bytes());
                    resp::bulk(&mut out, &e.id);
                    resp::bulk_u64(&mut out, e.amount);
                }
            }
            replies += 1;
        }
        if let Some(seq) = watermark {
            resp::array(&mut out, 8);
            for word in [&b"HSET"[..], META_KEY.as_bytes(), b"watermark"] {
                resp::bulk(&mut out, word);
            }
            resp::bulk_u64(&mut out, seq);
            resp::bulk(&mut out, b"schema");
            resp::bulk_u64(&mut out, SCHEMA);
            resp::bulk(&mut out, b"updated_at_ms");
            resp::bulk_u64(&mut out, wall_clock_ms());
            replies += 1;
        }
        let sent = match self.conn.as_mut() {
            Some(conn) => conn.send_packed_command(&out).map_err(|e| e.to_string()),
            None => Err("not connected".to_string()),
        };
        if out.capacity() <= OUT_BUFFER_KEEP {
            self.out = out;
        }
        sent?;
        Ok(Sent {
            accounts: batch
                .iter()
                .map(|item| (item.id.clone(), item.history_seq))
                .collect(),
            replies,
            watermark,
        })
    }

    /// Reads the replies of one batch sent.
    fn receive(&mut self, sent: &Sent) -> Result<(), String> {
        let conn = self.conn.as_mut().ok_or("not connected")?;
        for _ in 0..sent.replies {
            match conn.recv_response() {
                Ok(Value::ServerError(e)) => return Err(format!("Redis answered: {e:?}")),
                Ok(_) => {}
                Err(e) => return Err(e.to_string()),
            }
        }
        Ok(())
    }
}

/// RESP request encoding (arrays of bulk strings), written straight into a buffer.
mod resp {
    /// `v` in decimal: the digits are `buf[at..]`.
    fn digits(v: u64, buf: &mut [u8; 20]) -> usize {
        let mut at = buf.len();
        let mut v = v;
        loop {
            at -= 1;
            buf[at] = b'0' + (v % 10) as u8;
            v /= 10;
            if v == 0 {
                return at;
            }
        }
    }

    fn header(out: &mut Vec<u8>, kind: u8, len: usize) {
        let mut buf = [0u8; 20];
        let at = digits(len as u64, &mut buf);
        out.push(kind);
        out.extend_from_slice(&buf[at..]);
        out.extend_from_slice(b"\r\n");
    }

    pub fn array(out: &mut Vec<u8>, len: usize) {
        header(out, b'*', len);
    }

    pub fn bulk(out: &mut Vec<u8>, bytes: &[u8]) {
        bulk2(out, bytes, b"");
    }

    /// One bulk string made of two parts (a key prefix and an id).
    pub fn bulk2(out: &mut Vec<u8>, a: &[u8], b: &[u8]) {
        header(out, b'$', a.len() + b.len());
        out.extend_from_slice(a);
        out.extend_from_slice(b);
        out.extend_from_slice(b"\r\n");
    }

    pub fn bulk_u64(out: &mut Vec<u8>, v: u64) {
        let mut buf = [0u8; 20];
        let at = digits(v, &mut buf);
        bulk(out, &buf[at..]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resp_encoding() {
        let mut out = Vec::new();
        resp::array(&mut out, 3);
        resp::bulk(&mut out, b"HSET");
        resp::bulk2(&mut out, b"k:", b"a");
        resp::bulk_u64(&mut out, 0);
        resp::bulk_u64(&mut out, u64::MAX);
        assert_eq!(
            out,
            b"*3\r\n$4\r\nHSET\r\n$3\r\nk:a\r\n$1\r\n0\r\n$20\r\n18446744073709551615\r\n"
        );
    }

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
