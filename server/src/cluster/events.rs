//! Events in cluster mode: each node appends the events it raised to the
//! one stream `creditd:events`, once their change is in Redis.
//!
//! A node numbers its own events (from its clock at start, so a restarted
//! node's numbers stay above those it gave before) and keeps them in
//! memory for EVENTS. The writer appends them in number order, after the
//! watermark covers their journal record (their account's change, or the
//! refusal's stamp, is in Redis). One script per batch, on the stream's
//! master: it reads the last number this node appended
//! (`{creditd:events}:nodes`, a hash by node id, in the stream's slot),
//! appends only events above it and records the new last number, so a
//! retried batch appends nothing twice. The stream entry names the node.
//!
//! What this cannot give (docs/CLUSTER.md): an event whose change reached
//! Redis but whose node died before appending it is not in the stream
//! (the account's state in Redis already holds the crossing, so no other
//! node raises it again): in cluster mode the stream is at most once across
//! a node's death, exactly once otherwise.

use creditd_engine::events::Event;
use creditd_engine::slot::slot_of;
use redis::Cmd;

/// The stream (the single-node name) and the per-node numbers beside it:
/// the hash tag puts both in one slot, so one script may touch both.
pub const STREAM_KEY: &str = "creditd:events";
pub const NODES_KEY: &str = "{creditd:events}:nodes";

/// Events per call.
pub const EVENTS_PER_CALL: usize = 512;
/// The stream's `MAXLEN ~`.
pub const STREAM_MAXLEN: u64 = 1_000_000;

/// KEYS: [stream, nodes]. ARGV: [maxlen, node id, n, then n events of 7
/// fields: seq at type account member value threshold]. Returns the last
/// number this node appended.
pub const EVENTS_LUA: &str = r#"
local kind = redis.call('TYPE', KEYS[1])['ok']
if kind ~= 'none' and kind ~= 'stream' then
  return redis.error_reply('WRONGTYPE ' .. KEYS[1] .. ' is a ' .. kind .. ', not a stream')
end
local last = tonumber(redis.call('HGET', KEYS[2], ARGV[2])) or 0
local n = tonumber(ARGV[3])
for j = 0, n - 1 do
  local e = 4 + j * 7
  local seq = tonumber(ARGV[e])
  if seq > last then
    redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[1], '*',
      'seq', ARGV[e], 'at', ARGV[e + 1], 'type', ARGV[e + 2], 'account', ARGV[e + 3],
      'member', ARGV[e + 4], 'value', ARGV[e + 5], 'threshold', ARGV[e + 6],
      'node', ARGV[2])
    last = seq
  end
end
if n > 0 then
  redis.call('HSET', KEYS[2], ARGV[2], last)
end
return last
"#;

/// The slot of the stream and its hash.
pub fn slot() -> u16 {
    debug_assert_eq!(
        slot_of(STREAM_KEY.as_bytes()),
        slot_of(NODES_KEY.as_bytes())
    );
    slot_of(STREAM_KEY.as_bytes())
}

/// One call appending `events` for `node` (none: reads its last number).
pub fn call(sha: &str, node: &str, events: &[Event]) -> Cmd {
    let mut cmd = redis::cmd("EVALSHA");
    cmd.arg(sha)
        .arg(2)
        .arg(STREAM_KEY)
        .arg(NODES_KEY)
        .arg(STREAM_MAXLEN)
        .arg(node)
        .arg(events.len());
    for e in events {
        cmd.arg(e.seq)
            .arg(e.at_ms)
            .arg(e.kind.as_str())
            .arg(&e.account[..])
            .arg(e.member.as_deref().unwrap_or(b""))
            .arg(e.value)
            .arg(e.threshold);
    }
    cmd
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_stream_and_its_numbers_share_a_slot() {
        assert_eq!(
            slot_of(STREAM_KEY.as_bytes()),
            slot_of(NODES_KEY.as_bytes())
        );
    }
}
