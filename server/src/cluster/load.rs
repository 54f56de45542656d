//! Loading slots from Redis when this node takes them: two round trips per
//! Redis master for a whole batch of slots: every slot's index of accounts
//! (`SMEMBERS creditd:{tag}:ids`), then every account's `state`.

use super::keys;
use super::redis::RedisNodes;
use creditd_engine::account::Account;
use creditd_engine::Engine;
use redis::Value;

/// Account states read per pipeline.
const STATES_PER_PIPELINE: usize = 4096;

/// Loads every account of `slots` into `engine`, after dropping whatever
/// the engine held of them (a change that raced the slot's last hand-over
/// from here was never acknowledged). Loaded accounts carry this process's
/// `applied_seq` 0: their state is in Redis already, so a retried request
/// they answer from their idempotency records waits for nothing.
/// Returns how many accounts were loaded.
pub fn load_slots(redis: &mut RedisNodes, engine: &Engine, slots: &[u16]) -> Result<usize, String> {
    let commands = slots
        .iter()
        .map(|&s| {
            let mut cmd = redis::cmd("SMEMBERS");
            cmd.arg(keys::index_key(s));
            (s, cmd)
        })
        .collect();
    let mut wanted: Vec<(u16, Vec<u8>)> = Vec::new();
    for (&slot, reply) in slots.iter().zip(redis.run(commands)) {
        let reply = reply.map_err(|e| format!("reading slot {slot}'s accounts: {e}"))?;
        let members = match reply {
            Value::Array(m) | Value::Set(m) => m,
            Value::Nil => Vec::new(),
            other => return Err(format!("slot {slot}'s index is not a set: {other:?}")),
        };
        for m in members {
            if let Value::BulkString(id) = m {
                wanted.push((slot, id));
            }
        }
    }
    engine.drop_slots(slots);
    let mut loaded = 0;
    for chunk in wanted.chunks(STATES_PER_PIPELINE) {
        let commands = chunk
            .iter()
            .map(|(slot, id)| {
                let mut cmd = redis::cmd("HGET");
                cmd.arg(keys::account_key(*slot, id)).arg("state");
                (*slot, cmd)
            })
            .collect();
        for ((_, id), reply) in chunk.iter().zip(redis.run(commands)) {
            let shown = String::from_utf8_lossy(id);
            let state = match reply.map_err(|e| format!("reading account {shown}: {e}"))? {
                Value::BulkString(b) => b,
                Value::Nil => {
                    tracing::warn!(account = %shown, "an account in a slot's index has no state in Redis; skipped");
                    continue;
                }
                other => return Err(format!("account {shown}: state is {other:?}")),
            };
            let mut acct: Account = postcard::from_bytes(&state)
                .map_err(|e| format!("account {shown}: undecodable state in Redis: {e}"))?;
            acct.applied_seq = 0;
            engine
                .restore_account(id, acct)
                .map_err(|e| format!("account {shown} from Redis: {e}"))?;
            loaded += 1;
        }
    }
    Ok(loaded)
}
