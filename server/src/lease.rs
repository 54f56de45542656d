//! A lease on Redis with a fencing epoch: how one creditd owns the state it
//! writes to a Redis keyspace, so that two processes never overwrite each
//! other.
//!
//! The lease is a string key holding `<node id> <epoch> <pid> <host>` with an
//! expiry of `cluster_lease_ms`. Taking it increments an epoch counter key, so
//! every acquisition gets a greater epoch than the one before. The owner renews
//! it every third of its length with a script that first checks it is still
//! the owner; a lease that lapsed is taken back only if nobody else took it
//! meanwhile (the epoch counter did not move).
//!
//! Fencing: a write script must check that the lease key holds exactly the
//! writer's own value ([`FENCE_LUA`]): a process paused or cut off past its
//! lease cannot write once a successor took the lease, not even with writes
//! already in flight, since the check runs inside Redis when the write runs.
//! (The node id is part of the value, so epochs restarting after Redis lost
//! the counter cannot make two owners look alike.)
//!
//! Validity here: a renewal sent at `t` keeps the lease valid in this process
//! until `t + ttl - ttl/10`, while Redis keeps it until at least `t + ttl`: this
//! process stops relying on its lease before anyone else can take it.
//!
//! The functions [`try_acquire`], [`renew`] and [`release`] work on any pair
//! of keys (a later cluster mode leases slots the same way); [`Lease`] keeps
//! one lease alive on a thread of its own.

use crate::node::NodeIdentity;
use crate::redis_reply::{int, text};
use crate::stop::{Stop, Worker};
use parking_lot::Mutex;
use redis::{Client, Connection, RedisResult, Script, Value};
use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The keys of one lease: the lease itself and its epoch counter.
#[derive(Clone, Debug)]
pub struct LeaseKeys {
    pub lease: String,
    pub epoch: String,
}

impl LeaseKeys {
    /// The lease on the whole creditd keyspace (one creditd per Redis keyspace).
    pub fn keyspace() -> LeaseKeys {
        LeaseKeys {
            lease: "creditd:lease".into(),
            epoch: "creditd:epoch".into(),
        }
    }
}

/// Lua that refuses a write unless `KEYS[fence_key]` (the lease) holds
/// `ARGV[fence_arg]` (the writer's lease value): `-FENCED` when another owner
/// holds it, `-NOLEASE` when nobody does (it lapsed or Redis lost it; the
/// owner takes it back on its next renewal, then writes again). A script
/// embeds it with the two placeholders replaced.
pub const FENCE_LUA: &str = r#"
local lease = redis.call('GET', KEYS[fence_key])
if lease ~= ARGV[fence_arg] then
  if lease then
    return redis.error_reply('FENCED the lease is held by ' .. lease .. '; this writer holds ' .. ARGV[fence_arg])
  end
  return redis.error_reply('NOLEASE nobody holds the lease')
end
"#;

const ACQUIRE_LUA: &str = r#"
local cur = redis.call('GET', KEYS[1])
if cur and string.match(cur, '^(%S+)') ~= ARGV[1] then
  return {0, cur, redis.call('PTTL', KEYS[1])}
end
local epoch = redis.call('INCR', KEYS[2])
local value = ARGV[1] .. ' ' .. epoch .. ' ' .. ARGV[2] .. ' ' .. ARGV[3]
redis.call('SET', KEYS[1], value, 'PX', ARGV[4])
return {1, value, cur or ''}
"#;

const RENEW_LUA: &str = r#"
local cur = redis.call('GET', KEYS[1])
if cur == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return {1}
end
if not cur then
  local counter = tonumber(redis.call('GET', KEYS[2]) or '0')
  if counter <= tonumber(ARGV[3]) then
    redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
    if counter < tonumber(ARGV[3]) then
      redis.call('SET', KEYS[2], ARGV[3])
    end
    return {1}
  end
end
return {0, cur or '', redis.call('PTTL', KEYS[1])}
"#;

pub(crate) const RELEASE_LUA: &str = r#"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
"#;

/// Who holds a lease, as its value and expiry say.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Holder {
    pub node_id: String,
    pub epoch: u64,
    pub pid: String,
    pub host: String,
    /// Milliseconds until it expires unless renewed; -1 without an expiry.
    pub expires_in_ms: i64,
}

impl Holder {
    fn parse(value: &str, expires_in_ms: i64) -> Holder {
        let mut parts = value.split(' ');
        let mut next = || parts.next().unwrap_or("?").to_string();
        Holder {
            node_id: next(),
            epoch: next().parse().unwrap_or(0),
            pid: next(),
            host: next(),
            expires_in_ms,
        }
    }
}

impl fmt::Display for Holder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "node {} (pid {} on {}), epoch {}, ",
            self.node_id, self.pid, self.host, self.epoch
        )?;
        match self.expires_in_ms {
            ms if ms >= 0 => write!(f, "expires in {ms} ms unless renewed"),
            _ => write!(f, "without an expiry (set by hand?)"),
        }
    }
}

/// The outcome of [`try_acquire`].
#[derive(Debug)]
pub enum Acquired {
    /// Taken, with this value (and epoch); `replaced` is the value of this
    /// node's own earlier lease it replaced (a previous process on the same
    /// data dir that died), if any.
    Taken {
        value: String,
        epoch: u64,
        replaced: Option<Holder>,
    },
    /// Another node holds it.
    HeldBy(Holder),
}

fn lease_value_epoch(value: &str) -> u64 {
    Holder::parse(value, 0).epoch
}

/// Takes the lease if nobody else holds it (a lease of this same node is
/// taken over: the process that held it is this node's predecessor).
pub fn try_acquire(
    conn: &mut Connection,
    keys: &LeaseKeys,
    owner: &NodeIdentity,
    ttl_ms: u64,
) -> RedisResult<Acquired> {
    let reply: Vec<Value> = Script::new(ACQUIRE_LUA)
        .key(&keys.lease)
        .key(&keys.epoch)
        .arg(&owner.id)
        .arg(owner.pid)
        .arg(&owner.host)
        .arg(ttl_ms)
        .invoke(conn)?;
    let field = |i: usize| reply.get(i).cloned().unwrap_or(Value::Nil);
    if int(&field(0)) == 1 {
        let value = text(&field(1));
        let replaced = Some(text(&field(2)))
            .filter(|v| !v.is_empty())
            .map(|v| Holder::parse(&v, 0));
        Ok(Acquired::Taken {
            epoch: lease_value_epoch(&value),
            value,
            replaced,
        })
    } else {
        Ok(Acquired::HeldBy(Holder::parse(
            &text(&field(1)),
            int(&field(2)),
        )))
    }
}

/// Renews a lease held with `value`: `Ok(None)` when renewed (or taken back
/// after it lapsed, nobody having taken it since), `Ok(Some(holder))` when it
/// is lost (`holder` is the new owner, if any holds it now).
pub fn renew(
    conn: &mut Connection,
    keys: &LeaseKeys,
    value: &str,
    ttl_ms: u64,
) -> RedisResult<Option<Option<Holder>>> {
    let reply: Vec<Value> = Script::new(RENEW_LUA)
        .key(&keys.lease)
        .key(&keys.epoch)
        .arg(value)
        .arg(ttl_ms)
        .arg(lease_value_epoch(value))
        .invoke(conn)?;
    let field = |i: usize| reply.get(i).cloned().unwrap_or(Value::Nil);
    if int(&field(0)) == 1 {
        return Ok(None);
    }
    let holder = Some(text(&field(1)))
        .filter(|v| !v.is_empty())
        .map(|v| Holder::parse(&v, int(&field(2))));
    Ok(Some(holder))
}

/// Gives the lease up, if `value` still holds it (a successor can start at once).
pub fn release(conn: &mut Connection, keys: &LeaseKeys, value: &str) -> RedisResult<bool> {
    let deleted: i64 = Script::new(RELEASE_LUA)
        .key(&keys.lease)
        .arg(value)
        .invoke(conn)?;
    Ok(deleted == 1)
}

/// How a kept lease stands, as this process knows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LeaseStatus {
    Held,
    /// Not renewed in time (paused, or Redis unreachable): not to be relied
    /// on until renewed.
    Lapsed {
        for_ms: u64,
    },
    /// Another owner took it: lost for good.
    Lost(String),
}

struct Kept {
    client: Client,
    /// The Redis URL without its password, for messages.
    url: String,
    keys: LeaseKeys,
    value: String,
    epoch: u64,
    ttl_ms: u64,
    origin: Instant,
    /// Valid here until this many ms after `origin`.
    valid_until_ms: AtomicU64,
    /// Set once `lost` holds a reason (read on every mutation: no lock).
    is_lost: AtomicBool,
    lost: Mutex<Option<String>>,
}

impl Kept {
    fn now_ms(&self) -> u64 {
        self.origin.elapsed().as_millis() as u64
    }

    fn renew_interval(&self) -> Duration {
        Duration::from_millis(self.ttl_ms / 3)
    }

    /// Renews the lease every third of its length until stopped or lost
    /// (sooner again after a failed attempt: a cut connection must not cost
    /// the lease).
    fn keep(&self, stop: Stop) {
        let mut conn: Option<Connection> = None;
        let mut unreachable_logged = false;
        let mut lapsed_logged = false;
        while !stop.requested() {
            let wait = if conn.is_none() {
                self.renew_interval().min(RETRY_AFTER_FAILURE)
            } else {
                self.renew_interval()
            };
            stop.sleep(wait);
            if stop.requested() {
                break;
            }
            let sent_ms = self.now_ms();
            match self.renew_once(&mut conn) {
                Ok(None) => {
                    let margin = self.ttl_ms / 10;
                    self.valid_until_ms
                        .fetch_max(sent_ms + self.ttl_ms - margin, Ordering::AcqRel);
                    if lapsed_logged || unreachable_logged {
                        tracing::info!(redis = %self.url, epoch = self.epoch, "Redis lease renewed");
                    }
                    (lapsed_logged, unreachable_logged) = (false, false);
                }
                Ok(Some(holder)) => {
                    let by = holder.map_or_else(
                        || "its epoch counter moved on".to_string(),
                        |h| format!("now held by {h}"),
                    );
                    self.lose(format!("lost its lease on Redis at {}: {by}", self.url));
                    break;
                }
                Err(e) => {
                    conn = None;
                    if !unreachable_logged {
                        tracing::warn!(redis = %self.url, "cannot renew the Redis lease ({e}); retrying");
                        unreachable_logged = true;
                    }
                }
            }
            if let LeaseStatus::Lapsed { for_ms } = self.status() {
                if !lapsed_logged {
                    tracing::warn!(
                        redis = %self.url,
                        for_ms,
                        "the Redis lease lapsed (not renewed in time): mutations answer -BUSY until it is renewed"
                    );
                    lapsed_logged = true;
                }
            }
        }
    }

    fn renew_once(&self, conn: &mut Option<Connection>) -> RedisResult<Option<Option<Holder>>> {
        if conn.is_none() {
            let timeout = self.renew_interval().min(Duration::from_secs(1));
            let c = self.client.get_connection_with_timeout(timeout)?;
            c.set_read_timeout(Some(self.renew_interval()))?;
            c.set_write_timeout(Some(self.renew_interval()))?;
            *conn = Some(c);
        }
        let c = conn.as_mut().expect("connected");
        renew(c, &self.keys, &self.value, self.ttl_ms)
    }

    fn lose(&self, reason: String) {
        let mut lost = self.lost.lock();
        if lost.is_none() {
            tracing::error!(
                "THIS CREDITD {reason}. It no longer writes to Redis; mutations answer -BUSY and /readyz is 503. Changes it accepted that are not in Redis are in its journal only. Stop this process; the other creditd owns the Redis keyspace now."
            );
            *lost = Some(reason);
            self.is_lost.store(true, Ordering::Release);
        }
    }

    fn status(&self) -> LeaseStatus {
        if self.is_lost.load(Ordering::Acquire) {
            return LeaseStatus::Lost(self.lost.lock().clone().unwrap_or_default());
        }
        let now = self.now_ms();
        let until = self.valid_until_ms.load(Ordering::Acquire);
        if now < until {
            LeaseStatus::Held
        } else {
            LeaseStatus::Lapsed {
                for_ms: now - until,
            }
        }
    }
}

/// A lease this process holds, renewed by a thread of its own (stopped when
/// the lease is released or dropped).
pub struct Lease {
    kept: Arc<Kept>,
    keeper: Mutex<Option<Worker>>,
}

/// How soon the keeper tries again after a failed renewal.
const RETRY_AFTER_FAILURE: Duration = Duration::from_millis(100);
/// How long acquisition waits for another holder's lease to lapse, beyond its length.
const ACQUIRE_SLACK: Duration = Duration::from_millis(500);
/// How often acquisition looks again while another node holds the lease.
const ACQUIRE_POLL: Duration = Duration::from_millis(100);

/// Tries [`try_acquire`] until the lease is taken, for up to one lease length
/// (plus [`ACQUIRE_SLACK`]) while another node holds it. Returns the value,
/// the epoch and when the winning attempt was sent.
fn take_when_free(
    conn: &mut Connection,
    keys: &LeaseKeys,
    owner: &NodeIdentity,
    ttl_ms: u64,
    url: &str,
) -> Result<(String, u64, Instant), String> {
    let started = Instant::now();
    let deadline = started + Duration::from_millis(ttl_ms) + ACQUIRE_SLACK;
    let mut waiting_logged = false;
    loop {
        let sent = Instant::now();
        let acquired = try_acquire(conn, keys, owner, ttl_ms)
            .map_err(|e| format!("taking the lease on Redis at {url}: {e}"))?;
        match acquired {
            Acquired::Taken {
                value,
                epoch,
                replaced,
            } => {
                match replaced {
                    Some(old) => tracing::info!(
                        redis = %url, epoch, previous_pid = %old.pid,
                        "took over the Redis lease this node held before (same data dir, previous process gone)"
                    ),
                    None => tracing::info!(redis = %url, epoch, "took the Redis lease"),
                }
                return Ok((value, epoch, sent));
            }
            Acquired::HeldBy(holder) => {
                let now = Instant::now();
                if now + ACQUIRE_POLL >= deadline || holder.expires_in_ms < 0 {
                    return Err(format!(
                        "Redis at {url} is owned by another creditd: {holder}; it stayed owned for the {} ms this process waited. One creditd may write a Redis keyspace: stop the other one, or give this one its own Redis (or database). A creditd that died loses its lease after cluster_lease_ms",
                        started.elapsed().as_millis()
                    ));
                }
                if !waiting_logged {
                    tracing::warn!(redis = %url, "another creditd holds the Redis lease: {holder}; waiting up to {ttl_ms} ms for it to lapse");
                    waiting_logged = true;
                }
                std::thread::sleep(ACQUIRE_POLL);
            }
        }
    }
}

impl Lease {
    /// Takes the lease, waiting up to one lease length (plus a little) for
    /// another holder's lease to lapse: a dead holder's does, a live one
    /// keeps renewing and the start is refused, naming the holder. Blocking.
    pub fn acquire(
        client: Client,
        url: &str,
        conn: &mut Connection,
        keys: LeaseKeys,
        owner: &NodeIdentity,
        ttl_ms: u64,
    ) -> Result<Lease, String> {
        let (value, epoch, sent) = take_when_free(conn, &keys, owner, ttl_ms, url)?;
        let origin = Instant::now();
        let valid_for = (ttl_ms - ttl_ms / 10).saturating_sub(sent.elapsed().as_millis() as u64);
        let kept = Arc::new(Kept {
            client,
            url: url.to_string(),
            keys,
            value,
            epoch,
            ttl_ms,
            origin,
            valid_until_ms: AtomicU64::new(valid_for),
            is_lost: AtomicBool::new(false),
            lost: Mutex::new(None),
        });
        let keeper = {
            let kept = kept.clone();
            Worker::thread("creditd-lease", move |stop| kept.keep(stop))?
        };
        Ok(Lease {
            kept,
            keeper: Mutex::new(Some(keeper)),
        })
    }

    pub fn epoch(&self) -> u64 {
        self.kept.epoch
    }

    /// The lease value: what a write script's fence compares.
    pub fn value(&self) -> &str {
        &self.kept.value
    }

    pub fn status(&self) -> LeaseStatus {
        self.kept.status()
    }

    /// A write was fenced: another owner holds the lease.
    pub fn fenced(&self, detail: &str) {
        self.kept.lose(format!(
            "lost its lease on Redis at {}: a write was refused ({detail})",
            self.kept.url
        ));
    }

    /// Asks for a renewal now (a write found no lease: it lapsed in Redis).
    pub fn renew_now(&self) {
        if let Some(keeper) = self.keeper.lock().as_ref() {
            keeper.wake();
        }
    }

    /// Stops renewing and gives the lease up if still held (graceful stop).
    pub fn release(&self) {
        // Stopped and joined as it drops (outside the lock).
        let keeper = self.keeper.lock().take();
        drop(keeper);
        if matches!(self.status(), LeaseStatus::Lost(_)) {
            return;
        }
        let released = self
            .kept
            .client
            .get_connection_with_timeout(Duration::from_secs(1))
            .and_then(|mut conn| release(&mut conn, &self.kept.keys, &self.kept.value));
        match released {
            Ok(_) => tracing::info!(redis = %self.kept.url, "Redis lease released"),
            Err(e) => tracing::warn!(
                redis = %self.kept.url,
                "could not release the Redis lease ({e}); it lapses after cluster_lease_ms"
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn holders_are_parsed_and_shown() {
        let h = Holder::parse("abc 7 1234 web-1", 2500);
        assert_eq!(h.node_id, "abc");
        assert_eq!(h.epoch, 7);
        assert_eq!(
            h.to_string(),
            "node abc (pid 1234 on web-1), epoch 7, expires in 2500 ms unless renewed"
        );
        assert!(Holder::parse("x", -1)
            .to_string()
            .contains("without an expiry"));
    }

    #[test]
    fn the_fence_has_its_placeholders() {
        assert!(FENCE_LUA.contains("KEYS[fence_key]") && FENCE_LUA.contains("ARGV[fence_arg]"));
    }
}
