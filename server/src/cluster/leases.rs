//! The scripts by which a node holds slots in Redis, and the fenced write.
//!
//! A slot's lease is `creditd:{tag}:lease` = `<node id> <epoch> <pid> <host>`
//! with an expiry of `cluster_lease_ms`; taking it increments the slot's
//! epoch counter (`creditd:{tag}:epoch`), the same scripts as the one-node
//! lease ([`crate::lease`]) applied per slot. A node renews all its slots
//! every third of the lease, one pipeline per Redis master, and counts them
//! valid until the renewal's send time plus 90 % of the lease: it stops
//! serving a slot before anyone else can take it.
//!
//! Every account write runs [`WRITE_LUA`], which first checks that the lease
//! still holds the writer's value: a node paused or cut off past its lease
//! never overwrites the slot's next owner, not even with a write already in
//! flight. An account is written only if its `(epoch, version,
//! history_seq)` is greater than the stored one: versions are journal seqs
//! of the writing process, comparable only within one epoch.

use super::keys;
use crate::lease::{ACQUIRE_LUA, FENCE_LUA, RELEASE_LUA};
use redis::Cmd;

/// Renews a lease held with ARGV[1]; a lapsed one is taken back if nobody
/// took it meanwhile. Returns 1 renewed, 3 taken back after lapsing, 2 taken
/// back after Redis lost the slot (its epoch counter fell behind: a flush or
/// a failover to a stale replica), 0 lost.
const RENEW_LUA: &str = r#"
local cur = redis.call('GET', KEYS[1])
if cur == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return 1
end
if not cur then
  local counter = tonumber(redis.call('GET', KEYS[2]) or '0')
  local mine = tonumber(ARGV[3])
  if counter <= mine then
    redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
    if counter < mine then
      redis.call('SET', KEYS[2], ARGV[3])
      return 2
    end
    return 3
  end
end
return 0
"#;

/// KEYS: [lease, index, account hashes...]; ARGV: [lease value, epoch, then
/// per account [`ACCOUNT_ARGS`]: id, version, history_seq, state, available,
/// held, spent, expired, granted, plan, seats]. Returns how many were written.
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
        ACQUIRE_LUA.to_string(),
        RENEW_LUA.to_string(),
        RELEASE_LUA.to_string(),
        write_source(),
    ]
}

/// The SHA1s of the scripts, in [`sources`] order.
pub struct Shas {
    pub acquire: String,
    pub renew: String,
    pub release: String,
    pub write: String,
}

impl Shas {
    pub fn new() -> Shas {
        let sha = |s: &str| redis::Script::new(s).get_hash().to_string();
        Shas {
            acquire: sha(ACQUIRE_LUA),
            renew: sha(RENEW_LUA),
            release: sha(RELEASE_LUA),
            write: sha(&write_source()),
        }
    }

    /// Takes the slot's lease if it is free (or this node's own from a
    /// previous process): `{1, value, replaced}` or `{0, holder, pttl}`.
    pub fn acquire(&self, slot: u16, id: &str, pid: u32, host: &str, ttl_ms: u64) -> Cmd {
        let mut cmd = redis::cmd("EVALSHA");
        cmd.arg(&self.acquire)
            .arg(2)
            .arg(keys::lease_key(slot))
            .arg(keys::epoch_key(slot))
            .arg(id)
            .arg(pid)
            .arg(host)
            .arg(ttl_ms);
        cmd
    }

    pub fn renew(&self, slot: u16, value: &str, epoch: u64, ttl_ms: u64) -> Cmd {
        let mut cmd = redis::cmd("EVALSHA");
        cmd.arg(&self.renew)
            .arg(2)
            .arg(keys::lease_key(slot))
            .arg(keys::epoch_key(slot))
            .arg(value)
            .arg(ttl_ms)
            .arg(epoch);
        cmd
    }

    pub fn release(&self, slot: u16, value: &str) -> Cmd {
        let mut cmd = redis::cmd("EVALSHA");
        cmd.arg(&self.release)
            .arg(1)
            .arg(keys::lease_key(slot))
            .arg(value);
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
        assert_eq!(sources().len(), 4);
    }
}
