//! The write script: what one `EVALSHA` call does inside Redis, how a call is
//! encoded, and what its reply means.
//!
//! Every call first checks, atomically with its writes:
//! 1. the fence: the lease key holds this writer's lease value, so a process
//!    that lost its lease never overwrites its successor (`-FENCED`), and
//!    nothing is written while nobody holds the lease (`-NOLEASE`);
//! 2. the watermark: `creditd:meta` still holds at least the watermark this
//!    writer last wrote there; less (or no meta at all once it existed) means
//!    Redis lost data since (a flush, an eviction, a failover to a stale
//!    replica): `-LOSTDATA <watermark found>`, and the writer writes
//!    everything again.
//!
//! Then each account is written only if its `(version, history_seq)` is
//! greater than the stored one, so an older write (a retried batch, a write
//! racing a restart) never overwrites a newer one; its history entries go to
//! the audit stream only past both the stored `history_seq` and what this
//! writer already streamed for it, so a retry never duplicates them, even
//! after the account's key was replaced. An account whose key cannot be read
//! (a foreign key of another type) fails alone and is reported; the others
//! of the call are written. A call may also set the watermark (a pass
//! completed) and the writer's node id in `creditd:meta`.

use super::{ACCOUNT_PREFIX, AUDIT_STREAM, META_KEY};
use crate::formats::REDIS_SCHEMA;
use crate::lease::{LeaseKeys, FENCE_LUA};
use crate::redis_reply::text;
use crate::resp::encode;
use creditd_engine::account::Balance;
use creditd_engine::history::HistoryEntry;
use creditd_engine::id::Id;
use redis::Value;

/// KEYS: [audit stream, meta, lease, account hash...]. ARGV: [stream maxlen,
/// lease value, watermark expected in meta, 1 if meta must exist, new
/// watermark or '', node id, now ms, then per account: id, version,
/// history_seq, history seq already streamed, state, available, held, spent,
/// expired, granted, plan, seats, n, then n history entries of 5 fields (seq
/// at op id amount), oldest first]. Returns {written, then for each account
/// that failed: its position in the call (1-based), its error}.
const WRITE_LUA: &str = r#"
local stored = redis.call('HGET', KEYS[2], 'watermark')
if stored then
  if tonumber(stored) < tonumber(ARGV[3]) then
    return redis.error_reply('LOSTDATA ' .. stored)
  end
elseif ARGV[4] == '1' then
  return redis.error_reply('LOSTDATA none')
end
local stream = KEYS[1]
local maxlen = ARGV[1]
if #KEYS > 3 then
  local kind = redis.call('TYPE', stream)['ok']
  if kind ~= 'none' and kind ~= 'stream' then
    return redis.error_reply('WRONGTYPE ' .. stream .. ' is a ' .. kind .. ', not a stream')
  end
end
local out = {0}
local written = 0
local a = 8
for k = 4, #KEYS do
  local key = KEYS[k]
  local version = tonumber(ARGV[a + 1])
  local hseq = tonumber(ARGV[a + 2])
  local n = tonumber(ARGV[a + 12])
  local cur = redis.pcall('HMGET', key, 'version', 'history_seq')
  if cur['err'] then
    out[#out + 1] = k - 3
    out[#out + 1] = cur['err']
  else
    local cv = tonumber(cur[1]) or -1
    local ch = tonumber(cur[2]) or 0
    if version > cv or (version == cv and hseq > ch) then
      local from = math.max(ch, tonumber(ARGV[a + 3]))
      for j = 0, n - 1 do
        local e = a + 13 + j * 5
        if tonumber(ARGV[e]) > from then
          redis.call('XADD', stream, 'MAXLEN', '~', maxlen, '*',
            'account', ARGV[a], 'seq', ARGV[e], 'at', ARGV[e + 1], 'op', ARGV[e + 2],
            'id', ARGV[e + 3], 'amount', ARGV[e + 4])
        end
      end
      redis.call('HSET', key,
        'version', ARGV[a + 1], 'history_seq', ARGV[a + 2], 'state', ARGV[a + 4],
        'available', ARGV[a + 5], 'held', ARGV[a + 6], 'spent', ARGV[a + 7],
        'expired', ARGV[a + 8], 'granted', ARGV[a + 9], 'plan', ARGV[a + 10],
        'seats', ARGV[a + 11])
      written = written + 1
    end
  end
  a = a + 13 + n * 5
end
if ARGV[5] ~= '' then
  if not stored or tonumber(stored) < tonumber(ARGV[5]) then
    redis.call('HSET', KEYS[2], 'watermark', ARGV[5])
  end
  redis.call('HSET', KEYS[2], 'schema', 'SCHEMA_VERSION', 'node', ARGV[6], 'updated_at_ms', ARGV[7])
end
out[1] = written
return out
"#;

/// Arguments per account before its history entries, and per entry.
const ACCOUNT_ARGS: usize = 13;
const ENTRY_ARGS: usize = 5;

/// The script's source: the fence (lease in KEYS[3], value in ARGV[2]) first.
pub fn source() -> String {
    let fence = FENCE_LUA
        .replace("KEYS[fence_key]", "KEYS[3]")
        .replace("ARGV[fence_arg]", "ARGV[2]");
    let body = WRITE_LUA.replace("SCHEMA_VERSION", &REDIS_SCHEMA.to_string());
    format!("{fence}{body}")
}

/// One account's state as taken from the engine.
pub struct Item {
    pub id: Id,
    pub version: u64,
    pub history_seq: u64,
    /// The history seq this writer already streamed for the account.
    pub streamed: u64,
    pub state: Vec<u8>,
    pub balance: Balance,
    pub plan: Option<Id>,
    pub seats: u32,
    /// History entries Redis does not have yet, oldest first.
    pub entries: Vec<HistoryEntry>,
}

/// What every call carries besides its accounts.
pub struct Call<'a> {
    pub sha: &'a str,
    /// The writer's lease value (the fence).
    pub lease: &'a str,
    pub maxlen: u64,
    /// The watermark this writer last wrote to `creditd:meta`.
    pub expected_watermark: u64,
    /// `creditd:meta` exists (missing means Redis lost it).
    pub meta_must_exist: bool,
    /// Set the watermark (a pass completed).
    pub new_watermark: Option<u64>,
    pub node_id: &'a str,
    pub now_ms: u64,
}

impl Call<'_> {
    /// Appends one `EVALSHA` writing `items` (none: only the checks, and the
    /// watermark if given).
    pub fn encode(&self, out: &mut Vec<u8>, items: &[Item]) {
        let lease_keys = LeaseKeys::keyspace();
        let args: usize = items
            .iter()
            .map(|i| ACCOUNT_ARGS + ENTRY_ARGS * i.entries.len())
            .sum();
        encode::array_header(out, 3 + 3 + items.len() + 7 + args);
        encode::bulk(out, b"EVALSHA");
        encode::bulk(out, self.sha.as_bytes());
        encode::bulk_u64(out, 3 + items.len() as u64);
        encode::bulk(out, AUDIT_STREAM.as_bytes());
        encode::bulk(out, META_KEY.as_bytes());
        encode::bulk(out, lease_keys.lease.as_bytes());
        for item in items {
            encode::bulk_concat(out, ACCOUNT_PREFIX, &item.id);
        }
        encode::bulk_u64(out, self.maxlen);
        encode::bulk(out, self.lease.as_bytes());
        encode::bulk_u64(out, self.expected_watermark);
        encode::bulk_u64(out, u64::from(self.meta_must_exist));
        match self.new_watermark {
            Some(seq) => encode::bulk_u64(out, seq),
            None => encode::bulk(out, b""),
        }
        encode::bulk(out, self.node_id.as_bytes());
        encode::bulk_u64(out, self.now_ms);
        for item in items {
            let b = &item.balance;
            encode::bulk(out, &item.id);
            for v in [item.version, item.history_seq, item.streamed] {
                encode::bulk_u64(out, v);
            }
            encode::bulk(out, &item.state);
            for v in [b.available, b.held, b.spent, b.expired, b.granted] {
                encode::bulk_u64(out, v);
            }
            encode::bulk(out, item.plan.as_deref().unwrap_or(b""));
            encode::bulk_u64(out, u64::from(item.seats));
            encode::bulk_u64(out, item.entries.len() as u64);
            for e in &item.entries {
                encode::bulk_u64(out, e.seq);
                encode::bulk_u64(out, e.at_ms);
                encode::bulk(out, e.op.as_str().as_bytes());
                encode::bulk(out, &e.id);
                encode::bulk_u64(out, e.amount);
            }
        }
    }
}

/// Why Redis refused a whole call (nothing of it was written).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// Another owner holds the lease: this writer must stop for good.
    Fenced(String),
    /// Redis lost data: the watermark it holds now (0: no meta at all).
    LostData(u64),
    /// Nobody holds the lease (it lapsed in Redis, or Redis lost it).
    NoLease,
    /// Redis does not know the script (`SCRIPT FLUSH`, a restart).
    NoScript,
    /// Any other error of the whole call (the stream key of another type,
    /// out of memory, a broken script).
    Failed(String),
}

impl Refusal {
    /// Which of two refusals in one pass decides what the writer does.
    fn rank(&self) -> u8 {
        match self {
            Refusal::Fenced(_) => 4,
            Refusal::LostData(_) => 3,
            Refusal::NoLease => 2,
            Refusal::NoScript => 1,
            Refusal::Failed(_) => 0,
        }
    }

    /// The more important of `self` and `other`.
    pub fn max(self, other: Refusal) -> Refusal {
        if other.rank() > self.rank() {
            other
        } else {
            self
        }
    }
}

/// What one call's reply says.
#[derive(Debug, PartialEq, Eq)]
pub enum Reply {
    /// The call ran; these accounts (0-based positions in the call) failed,
    /// with Redis's error for each.
    Ran {
        failed: Vec<(usize, String)>,
    },
    Refused(Refusal),
}

/// Reads one call's reply.
pub fn classify(reply: Value) -> Reply {
    match reply {
        Value::Array(items) => {
            let failed = items
                .get(1..)
                .unwrap_or(&[])
                .chunks(2)
                .filter_map(|pair| match pair {
                    [Value::Int(at), error] if *at >= 1 => Some((*at as usize - 1, text(error))),
                    _ => None,
                })
                .collect();
            Reply::Ran { failed }
        }
        Value::ServerError(e) => {
            let detail = e.details().unwrap_or("").to_string();
            Reply::Refused(match e.code() {
                "FENCED" => Refusal::Fenced(detail),
                "NOLEASE" => Refusal::NoLease,
                "NOSCRIPT" => Refusal::NoScript,
                "LOSTDATA" => Refusal::LostData(detail.parse().unwrap_or(0)),
                code => Refusal::Failed(format!("{code} {detail}").trim_end().to_string()),
            })
        }
        other => Reply::Refused(Refusal::Failed(format!(
            "unexpected reply from the write script: {other:?}"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_fence_comes_first_with_its_keys() {
        let s = source();
        assert!(s.find("KEYS[3]").unwrap() < s.find("LOSTDATA").unwrap());
        assert!(!s.contains("fence_key") && !s.contains("SCHEMA_VERSION"));
    }

    #[test]
    fn refusals_rank_by_what_the_writer_must_do() {
        let lost = Refusal::LostData(3);
        assert_eq!(
            lost.clone().max(Refusal::Fenced("x".into())),
            Refusal::Fenced("x".into())
        );
        assert_eq!(lost.clone().max(Refusal::NoScript), lost);
    }
}
