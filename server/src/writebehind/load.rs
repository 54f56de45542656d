//! Start-up with `--redis`: reach Redis, take the lease on its keyspace, and
//! load every account it holds into the engine, before the journal is opened.

use super::{shown, ACCOUNT_PREFIX, BACKOFF_MAX, BACKOFF_MIN, META_KEY};
use crate::formats::REDIS_SCHEMA;
use crate::lease::{Lease, LeaseKeys};
use crate::node::NodeIdentity;
use crate::persist::{account_version, RedisBase};
use creditd_engine::id::Id;
use creditd_engine::Engine;
use redis::{Client, Connection};
use std::time::{Duration, Instant};

/// How long start-up keeps trying to reach Redis before it gives up.
const START_CONNECT_BUDGET: Duration = Duration::from_secs(10);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
const LOAD_RESPONSE_TIMEOUT: Duration = Duration::from_secs(30);
/// SCAN batch size during recovery.
const SCAN_COUNT: u64 = 1000;

/// What start-up read from Redis, and the lease it holds.
pub struct Loaded {
    pub(super) client: Client,
    pub(super) url: String,
    pub(super) lease: Lease,
    pub(super) node_id: String,
    /// Accounts restored into the engine.
    pub accounts: usize,
    /// The `creditd:meta` watermark found (0 if none).
    pub(super) meta_watermark: u64,
    /// `creditd:meta` existed.
    pub(super) meta_present: bool,
    /// The node whose writer last wrote `creditd:meta`, if recorded.
    pub meta_node: Option<String>,
    /// Versions of the accounts in Redis; the journal continues after them.
    pub base: RedisBase,
    /// The last event number the `creditd:events` stream holds: new events
    /// are numbered after it, even if the data dir was lost.
    pub events_seq: u64,
}

impl Loaded {
    /// The highest journal seq Redis holds state of (a version or the watermark).
    pub fn redis_seq(&self) -> u64 {
        self.base.min_next_seq.saturating_sub(1)
    }

    /// Redis held state written by another node (another data dir).
    pub fn holds_other_nodes_state(&self) -> bool {
        self.accounts > 0 && self.meta_node.as_ref().is_some_and(|n| *n != self.node_id)
    }
}

fn connect_at_start(client: &Client, url: &str) -> Result<Connection, String> {
    let started = Instant::now();
    let mut backoff = BACKOFF_MIN;
    loop {
        match client.get_connection_with_timeout(CONNECT_TIMEOUT) {
            Ok(conn) => {
                conn.set_read_timeout(Some(LOAD_RESPONSE_TIMEOUT))
                    .and_then(|()| conn.set_write_timeout(Some(LOAD_RESPONSE_TIMEOUT)))
                    .map_err(|e| format!("Redis at {url}: {e}"))?;
                return Ok(conn);
            }
            Err(e) if started.elapsed() < START_CONNECT_BUDGET => {
                // The last wait is cut to the budget, so the last attempt
                // comes when the whole budget has passed.
                tracing::warn!(redis = %url, "cannot reach Redis yet ({e}); retrying");
                std::thread::sleep(backoff.min(START_CONNECT_BUDGET.saturating_sub(started.elapsed())));
                backoff = (backoff * 2).min(BACKOFF_MAX);
            }
            Err(e) => {
                return Err(format!(
                    "cannot reach Redis at {url} after {} s: {e}. With --redis, creditd loads its state from Redis before serving and will not start without it; start Redis, or start without --redis to serve from the local journal alone (refused if the data dir depends on Redis)",
                    started.elapsed().as_secs()
                ))
            }
        }
    }
}

/// Warns when Redis may evict creditd's keys: an evicted account is noticed
/// only if `creditd:meta` goes too. (Managed Redis may refuse CONFIG: then
/// nothing is said.)
fn warn_if_evicting(conn: &mut Connection, url: &str) {
    let policy: redis::RedisResult<Vec<String>> = redis::cmd("CONFIG")
        .arg("GET")
        .arg("maxmemory-policy")
        .query(conn);
    if let Some(policy) = policy.ok().and_then(|p| p.into_iter().nth(1)) {
        if policy.starts_with("allkeys") {
            tracing::warn!(
                redis = %url,
                policy,
                "Redis may evict creditd's keys (maxmemory-policy {policy}): an evicted account is written again only when it next changes, or when creditd:meta is evicted too. Set maxmemory-policy noeviction"
            );
        }
    }
}

/// `creditd:acct:*`, for SCAN.
fn account_pattern() -> Vec<u8> {
    let mut pattern = ACCOUNT_PREFIX.to_vec();
    pattern.push(b'*');
    pattern
}

/// Restores the account an account key's `state` holds into `engine`;
/// returns its version.
fn restore(engine: &Engine, key: &[u8], state: Option<Vec<u8>>) -> Result<(u64, u64), String> {
    let shown_key = String::from_utf8_lossy(key);
    let state = state.ok_or_else(|| format!("Redis key {shown_key} has no 'state' field"))?;
    let acct = postcard::from_bytes::<creditd_engine::account::Account>(&state)
        .map_err(|e| format!("Redis key {shown_key}: undecodable state: {e}"))?;
    let version = account_version(&acct);
    engine
        .restore_account(&key[ACCOUNT_PREFIX.len()..], acct)
        .map_err(|e| format!("Redis key {shown_key}: {e}"))?;
    Ok(version)
}

/// Restores every account Redis holds into `engine`; returns their versions.
fn load_accounts(
    conn: &mut Connection,
    engine: &Engine,
    fail: &dyn Fn(&str, redis::RedisError) -> String,
) -> Result<RedisBase, String> {
    let mut base = RedisBase::default();
    let mut cursor: u64 = 0;
    loop {
        let (next, keys): (u64, Vec<Vec<u8>>) = redis::cmd("SCAN")
            .arg(cursor)
            .arg("MATCH")
            .arg(account_pattern())
            .arg("COUNT")
            .arg(SCAN_COUNT)
            .query(conn)
            .map_err(|e| fail("SCAN", e))?;
        if !keys.is_empty() {
            let mut pipe = redis::pipe();
            for key in &keys {
                pipe.cmd("HGET").arg(&key[..]).arg("state");
            }
            let states: Vec<Option<Vec<u8>>> =
                pipe.query(conn).map_err(|e| fail("HGET state", e))?;
            for (key, state) in keys.iter().zip(states) {
                let version = restore(engine, key, state)?;
                let id = &key[ACCOUNT_PREFIX.len()..];
                base.versions.insert(Id::new(id), version);
            }
        }
        if next == 0 {
            return Ok(base);
        }
        cursor = next;
    }
}

/// Recovery, first step (before the journal is opened; blocking): takes the
/// lease on the Redis keyspace (waiting up to one lease length for a dead
/// owner's lease to lapse; a live owner makes the start fail), then loads
/// every account Redis holds into `engine`. Keeps trying to reach Redis for
/// [`START_CONNECT_BUDGET`], then fails the start: serving without the state
/// Redis holds could hand out credits twice.
pub fn load(
    engine: &Engine,
    url: &str,
    node: &NodeIdentity,
    lease_ms: u64,
) -> Result<Loaded, String> {
    let shown_url = shown(url);
    let client = Client::open(url).map_err(|e| format!("--redis {shown_url}: bad URL: {e}"))?;
    let mut conn = connect_at_start(&client, &shown_url)?;
    let lease = Lease::acquire(
        client.clone(),
        &shown_url,
        &mut conn,
        LeaseKeys::keyspace(),
        node,
        lease_ms,
    )?;
    warn_if_evicting(&mut conn, &shown_url);
    let fail = |what: &str, e: redis::RedisError| {
        format!("loading state from Redis at {shown_url}: {what}: {e}")
    };
    type Meta = (Option<u64>, Option<u64>, Option<String>, Option<u64>);
    let (schema, meta_watermark, meta_node, events_seq): Meta = redis::cmd("HMGET")
        .arg(META_KEY)
        .arg("schema")
        .arg("watermark")
        .arg("node")
        .arg("events_seq")
        .query(&mut conn)
        .map_err(|e| fail("HMGET creditd:meta", e))?;
    if let Some(schema) = schema.filter(|&s| s != REDIS_SCHEMA) {
        return Err(format!(
            "Redis at {shown_url} holds creditd key schema {schema}; this creditd writes schema {REDIS_SCHEMA}"
        ));
    }
    let mut base = load_accounts(&mut conn, engine, &fail)?;
    let accounts = base.versions.len();
    let max_version = base.versions.values().map(|v| v.0).max().unwrap_or(0);
    base.min_next_seq = max_version.max(meta_watermark.unwrap_or(0)) + 1;
    Ok(Loaded {
        client,
        url: url.to_string(),
        lease,
        node_id: node.id.clone(),
        accounts,
        meta_watermark: meta_watermark.unwrap_or(0),
        meta_present: meta_watermark.is_some(),
        meta_node,
        events_seq: events_seq.unwrap_or(0),
        base,
    })
}
