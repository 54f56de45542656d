//! The scripts by which a node holds slots in Redis, and the fenced write.
//!
//! Two kinds of keys:
//! - **The node's lease** (its heartbeat), `creditd:node:<id>` =
//!   `<incarnation> <host> <port> <slot ranges> [leaving]`, expiring after
//!   `cluster_lease_ms`. A node renews it every third of the lease (one
//!   small script call, whatever the number of slots) and counts everything
//!   it holds valid until the renewal's send time plus 90 % of the lease, so
//!   it stops serving before its lease can lapse in Redis. The incarnation
//!   is new for every process and every rejoin.
//! - **A slot's fence**, `creditd:{tag}:fence` = `<node id> <epoch>
//!   <incarnation> <pid> <host>`, without expiry, with the slot's epoch
//!   counter `creditd:{tag}:epoch`. Claiming a slot ([`CLAIM_LUA`])
//!   increments the epoch and succeeds only if the fence is free or held by
//!   an incarnation that is not live (its lease lapsed: it stopped serving
//!   before that). A handed-over slot's fence is deleted.
//!
//! Every account write runs [`WRITE_LUA`], which first checks that the
//! slot's fence still holds the writer's value: a node paused or cut off
//! past its lease never overwrites the slot's next owner, not even with a
//! write already in flight. An account is written only if its `(epoch,
//! version, history_seq)` is greater than the stored one: versions are
//! journal seqs of the writing process, comparable only within one epoch.

use super::keys;
use crate::lease::{FENCE_LUA, RELEASE_LUA};
use redis::Cmd;

/// KEYS: [node key]; ARGV: [value, ttl ms, incarnation]. Renews the lease of
/// this incarnation: 1; 0 when it is gone (lapsed, or Redis lost it); -1
/// when another incarnation holds the node id (a second process with it).
const HEARTBEAT_LUA: &str = r#"
local cur = redis.call('GET', KEYS[1])
if not cur then
  return 0
end
if string.match(cur, '^(%S+)') ~= ARGV[3] then
  return -1
end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
return 1
"#;

/// KEYS: [fence, epoch]; ARGV: [node id, pid, host, incarnation, then the
/// live incarnations]. Takes the slot if its fence is free or held by an
/// incarnation not live: `{1, value}`; else `{0, holder}`.
const CLAIM_LUA: &str = r#"
local cur = redis.call('GET', KEYS[1])
if cur then
  local holder = string.match(cur, '^%S+ %S+ (%S+)')
  if holder == ARGV[4] then
    return {1, cur}
  end
  for i = 5, #ARGV do
    if holder == ARGV[i] then
      return {0, cur}
    end
  end
end
local epoch = redis.call('INCR', KEYS[2])
local value = ARGV[1] .. ' ' .. epoch .. ' ' .. ARGV[4] .. ' ' .. ARGV[2] .. ' ' .. ARGV[3]
redis.call('SET', KEYS[1], value)
return {1, value}
"#;

/// KEYS: [fence, epoch]; ARGV: [value, epoch]. After Redis lost data (a
/// flush, a failover to a stale replica): 1 the fence is intact; 2 it was
/// gone and is set again (every account of the slot must be written again);
/// 0 another node holds the slot.
const REFENCE_LUA: &str = r#"
local cur = redis.call('GET', KEYS[1])
if cur == ARGV[1] then
  return 1
end
if not cur then
  local counter = tonumber(redis.call('GET', KEYS[2]) or '0')
  if counter <= tonumber(ARGV[2]) then
    redis.call('SET', KEYS[1], ARGV[1])
    redis.call('SET', KEYS[2], ARGV[2])
    return 2
  end
end
return 0
"#;

/// KEYS: [fence, index, account hashes...]; ARGV: [fence value, epoch, then
/// per account [`ACCOUNT_ARGS`]: id, version, history_seq, state,
/// available, held, spent, expired, granted, plan, seats]. Returns how many
/// were written.
const WRITE_LUA: &str = r#"
local epoch = tonumber(ARGV[2])
local written = 0
local a = 3
for k = 3, #KEYS do
  local key = KEYS[k]
  local cur = redis.call('HMGET', key, 'epoch', 'version', 'history_seq')
  local ce = tonumber(cur[1]) or -1
  local cv = tonumber(cur[2]) or -1
  local ch = tonumber(cur[3]) or -1
  local v = tonumber(ARGV[a + 1])
  local h = tonumber(ARGV[a + 2])
  if epoch > ce or (epoch == ce and (v > cv or (v == cv and h > ch))) then
    redis.call('HSET', key, 'epoch', ARGV[2], 'version', ARGV[a + 1],
      'history_seq', ARGV[a + 2], 'state', ARGV[a + 3], 'available', ARGV[a + 4],
      'held', ARGV[a + 5], 'spent', ARGV[a + 6], 'expired', ARGV[a + 7],
      'granted', ARGV[a + 8], 'plan', ARGV[a + 9], 'seats', ARGV[a + 10])
    redis.call('SADD', KEYS[2], ARGV[a])
    written = written + 1
  end
  a = a + 11
end
return written
"#;

/// Arguments per account in a write.
pub const ACCOUNT_ARGS: usize = 11;

/// The fenced write script's source.
pub fn write_source() -> String {
    let fence = FENCE_LUA
        .replace("KEYS[fence_key]", "KEYS[1]")
        .replace("ARGV[fence_arg]", "ARGV[1]");
    format!("{fence}{WRITE_LUA}")
}

/// Every script, as loaded on each Redis connection.
pub fn sources() -> Vec<String> {
    vec![
        HEARTBEAT_LUA.to_string(),
        CLAIM_LUA.to_string(),
        REFENCE_LUA.to_string(),
        RELEASE_LUA.to_string(),
        write_source(),
        super::events::EVENTS_LUA.to_string(),
    ]
}

/// The scripts' SHA1s, and the calls that use them.
pub struct Shas {
    heartbeat: String,
    claim: String,
    refence: String,
    release: String,
    pub write: String,
    pub events: String,
}

fn evalsha(sha: &str, keys: &[&str]) -> Cmd {
    let mut cmd = redis::cmd("EVALSHA");
    cmd.arg(sha).arg(keys.len());
    for key in keys {
        cmd.arg(*key);
    }
    cmd
}

impl Shas {
    pub fn new() -> Shas {
        let sha = |s: &str| redis::Script::new(s).get_hash().to_string();
        Shas {
            heartbeat: sha(HEARTBEAT_LUA),
            claim: sha(CLAIM_LUA),
            refence: sha(REFENCE_LUA),
            release: sha(RELEASE_LUA),
            write: sha(&write_source()),
            events: sha(super::events::EVENTS_LUA),
        }
    }

    pub fn heartbeat(&self, node_id: &str, value: &str, ttl_ms: u64, incarnation: &str) -> Cmd {
        let mut cmd = evalsha(&self.heartbeat, &[&keys::node_key(node_id)]);
        cmd.arg(value).arg(ttl_ms).arg(incarnation);
        cmd
    }

    /// Claims `slot` for this incarnation unless one of `live` holds it.
    pub fn claim(
        &self,
        slot: u16,
        node: &crate::node::NodeIdentity,
        incarnation: &str,
        live: &[String],
    ) -> Cmd {
        let mut cmd = evalsha(
            &self.claim,
            &[&keys::fence_key(slot), &keys::epoch_key(slot)],
        );
        cmd.arg(&node.id)
            .arg(node.pid)
            .arg(&node.host)
            .arg(incarnation)
            .arg(live);
        cmd
    }

    pub fn refence(&self, slot: u16, value: &str, epoch: u64) -> Cmd {
        let mut cmd = evalsha(
            &self.refence,
            &[&keys::fence_key(slot), &keys::epoch_key(slot)],
        );
        cmd.arg(value).arg(epoch);
        cmd
    }

    pub fn release(&self, slot: u16, value: &str) -> Cmd {
        let mut cmd = evalsha(&self.release, &[&keys::fence_key(slot)]);
        cmd.arg(value);
        cmd
    }
}

impl Default for Shas {
    fn default() -> Shas {
        Shas::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_write_checks_the_fence_first() {
        let s = write_source();
        assert!(s.find("KEYS[1]").unwrap() < s.find("HSET").unwrap());
        assert!(!s.contains("fence_key"));
        assert_eq!(
            sources().len(),
            6,
            "five lease and write scripts, and the events one"
        );
    }
}
