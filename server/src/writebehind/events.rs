//! Events to the Redis stream `creditd:events`, exactly once.
//!
//! The writer appends, in number order, the events whose journal record is
//! durable (so an event in the stream is never lost by a crash and its number
//! never reused). Each call is one script, fenced like every write: it reads
//! the last number it appended (`events_seq` in `creditd:meta`), appends only
//! events above it with `XADD ... *` (Redis-made ids, so consumer groups and
//! `XREAD` work as usual), and records the new last number, atomically. A
//! retried call after a lost reply thus appends nothing twice, and a flushed
//! Redis (`events_seq` gone) gets every event memory still keeps again.

use super::{EVENTS_STREAM, META_KEY};
use crate::lease::{LeaseKeys, FENCE_LUA};
use crate::resp::encode;
use creditd_engine::events::Event;
use redis::Value;

/// Events per call.
pub const EVENTS_PER_CALL: usize = 512;

/// KEYS: [events stream, meta, lease]. ARGV: [stream maxlen, lease value, n,
/// then n events of 7 fields: seq at type account member value threshold].
/// Returns the last event number in the stream (`events_seq`) after the call.
const EVENTS_LUA: &str = r#"
local stream = KEYS[1]
local kind = redis.call('TYPE', stream)['ok']
if kind ~= 'none' and kind ~= 'stream' then
  return redis.error_reply('WRONGTYPE ' .. stream .. ' is a ' .. kind .. ', not a stream')
end
local last = tonumber(redis.call('HGET', KEYS[2], 'events_seq')) or 0
local n = tonumber(ARGV[3])
for j = 0, n - 1 do
  local e = 4 + j * 7
  local seq = tonumber(ARGV[e])
  if seq > last then
    redis.call('XADD', stream, 'MAXLEN', '~', ARGV[1], '*',
      'seq', ARGV[e], 'at', ARGV[e + 1], 'type', ARGV[e + 2], 'account', ARGV[e + 3],
      'member', ARGV[e + 4], 'value', ARGV[e + 5], 'threshold', ARGV[e + 6])
    last = seq
  end
end
if n > 0 then
  redis.call('HSET', KEYS[2], 'events_seq', last)
end
return last
"#;

/// The script's source: the fence (lease in KEYS[3], value in ARGV[2]) first.
pub fn source() -> String {
    let fence = FENCE_LUA
        .replace("KEYS[fence_key]", "KEYS[3]")
        .replace("ARGV[fence_arg]", "ARGV[2]");
    format!("{fence}{EVENTS_LUA}")
}

/// Appends one `EVALSHA` streaming `events` (none: only reads `events_seq`).
pub fn encode_call(out: &mut Vec<u8>, sha: &str, lease: &str, maxlen: u64, events: &[Event]) {
    encode::array_header(out, 3 + 3 + 3 + 7 * events.len());
    encode::bulk(out, b"EVALSHA");
    encode::bulk(out, sha.as_bytes());
    encode::bulk_u64(out, 3);
    encode::bulk(out, EVENTS_STREAM.as_bytes());
    encode::bulk(out, META_KEY.as_bytes());
    encode::bulk(out, LeaseKeys::keyspace().lease.as_bytes());
    encode::bulk_u64(out, maxlen);
    encode::bulk(out, lease.as_bytes());
    encode::bulk_u64(out, events.len() as u64);
    for e in events {
        encode::bulk_u64(out, e.seq);
        encode::bulk_u64(out, e.at_ms);
        encode::bulk(out, e.kind.as_str().as_bytes());
        encode::bulk(out, &e.account);
        encode::bulk(out, e.member.as_deref().unwrap_or(b""));
        encode::bulk_u64(out, e.value);
        encode::bulk_u64(out, e.threshold);
    }
}

/// The stream's last event number from a call's reply.
pub fn streamed_seq(reply: &Value) -> Option<u64> {
    match reply {
        Value::Int(n) if *n >= 0 => Some(*n as u64),
        _ => None,
    }
}

/// The events to stream next: after `streamed`, in order, up to the first
/// whose record is not durable yet (`durable_seq`), at most a call's worth.
pub fn ready(all: Vec<Event>, durable_seq: u64) -> Vec<Event> {
    all.into_iter()
        .take_while(|e| e.journal_seq <= durable_seq)
        .take(EVENTS_PER_CALL)
        .collect()
}
