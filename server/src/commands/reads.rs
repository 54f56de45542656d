//! BALANCE, ACCOUNT, HISTORY: reads, each one consistent snapshot of one
//! account, replied once every change it shows is durable.

use super::{end, fields, id, is, parse_u64, Failure, Flow, Session};
use crate::app::App;
use crate::resp::encode::{self, Proto};
use creditd_engine::Balance;

/// Default HISTORY length (contract §5).
const HISTORY_DEFAULT: u64 = 100;

fn balance_pairs(b: &Balance) -> [(&'static str, u64); 5] {
    [
        ("available", b.available),
        ("held", b.held),
        ("spent", b.spent),
        ("expired", b.expired),
        ("granted", b.granted),
    ]
}

/// `BALANCE account`
pub fn balance(
    app: &App,
    s: &mut Session,
    a: &[&[u8]],
    out: &mut Vec<u8>,
) -> Result<Flow, Failure> {
    let (b, seq) = app.engine.read(id(a[1])?, |acct| acct.balance());
    fields(out, s.proto, &balance_pairs(&b));
    Ok(Flow::Wait(seq))
}

fn key(out: &mut Vec<u8>, k: &str) {
    encode::bulk_str(out, k);
}

fn int(out: &mut Vec<u8>, n: u64) {
    encode::integer(out, n as i64);
}

/// `ACCOUNT account`
pub fn account(
    app: &App,
    s: &mut Session,
    a: &[&[u8]],
    out: &mut Vec<u8>,
) -> Result<Flow, Failure> {
    let (v, seq) = app.engine.read(id(a[1])?, |acct| acct.view());
    let p = s.proto;
    encode::map_header(out, p, 11);
    for (k, n) in balance_pairs(&v.balance) {
        key(out, k);
        int(out, n);
    }
    key(out, "plan");
    encode::bulk(out, v.plan.as_deref().unwrap_or(b""));
    key(out, "seats");
    int(out, v.seats as u64);
    key(out, "cycle_start");
    int(out, v.cycle_start_ms);
    key(out, "cycle_end");
    int(out, v.cycle_end_ms);
    key(out, "buckets");
    encode::array_header(out, v.buckets.len());
    for b in &v.buckets {
        encode::map_header(out, p, 5);
        key(out, "id");
        encode::bulk(out, &b.id);
        key(out, "kind");
        encode::bulk_str(out, b.kind.as_str());
        key(out, "remaining");
        int(out, b.remaining);
        key(out, "expires_at");
        int(out, b.shown_expires_at());
        key(out, "priority");
        int(out, b.priority as u64);
    }
    key(out, "holds");
    encode::array_header(out, v.holds.len());
    for h in &v.holds {
        encode::map_header(out, p, 4);
        key(out, "id");
        encode::bulk(out, &h.id);
        key(out, "amount");
        int(out, h.amount);
        key(out, "captured");
        int(out, h.captured);
        key(out, "expires_at");
        int(out, h.expires_at_ms);
    }
    Ok(Flow::Wait(seq))
}

/// `HISTORY account [COUNT n]`
pub fn history(
    app: &App,
    s: &mut Session,
    a: &[&[u8]],
    out: &mut Vec<u8>,
) -> Result<Flow, Failure> {
    let account = id(a[1])?;
    let mut count = HISTORY_DEFAULT;
    let mut i = 2;
    if i < a.len() && is(a[i], "COUNT") {
        count = parse_u64(a.get(i + 1).ok_or_else(Failure::syntax)?, "COUNT")?;
        i += 2;
    }
    end(a, i)?;
    let count = count.min(u32::MAX as u64) as usize;
    let (entries, seq) = app.engine.read(account, |acct| acct.history(count));
    encode::array_header(out, entries.len());
    for e in &entries {
        write_entry(out, s.proto, e);
    }
    Ok(Flow::Wait(seq))
}

fn write_entry(out: &mut Vec<u8>, p: Proto, e: &creditd_engine::history::HistoryEntry) {
    encode::map_header(out, p, 5);
    key(out, "seq");
    int(out, e.seq);
    key(out, "at");
    int(out, e.at_ms);
    key(out, "op");
    encode::bulk_str(out, e.op.as_str());
    key(out, "id");
    encode::bulk(out, &e.id);
    key(out, "amount");
    int(out, e.amount);
}
