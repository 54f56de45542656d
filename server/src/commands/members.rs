//! LIMIT, MEMBERS, ALERT, EVENTS: members' caps inside a pooled account,
//! low-balance thresholds, and the events they raise.

use super::{end, id, is, parse_amount, parse_u64, reply_outcome, Failure, Flow, Session};
use crate::app::App;
use crate::resp::encode;
use creditd_engine::account::{Cap, Per};
use creditd_engine::id::Bytes;
use creditd_engine::Mutation;

/// EVENTS' default and largest COUNT (contract §10).
const EVENTS_DEFAULT: u64 = 100;
const EVENTS_MAX: u64 = 10_000;

/// `LIMIT account member amount [PER day|month|cycle]` or `LIMIT account member NONE`
pub fn limit(app: &App, _: &mut Session, a: &[&[u8]], out: &mut Vec<u8>) -> Result<Flow, Failure> {
    let account = id(a[1])?;
    let member = Bytes(id(a[2])?);
    let cap = if is(a[3], "NONE") {
        end(a, 4)?;
        None
    } else {
        let limit = parse_amount(a[3], "amount")?;
        let mut per = Per::Cycle;
        let mut i = 4;
        if i < a.len() && is(a[i], "PER") {
            let word = a.get(i + 1).ok_or_else(Failure::syntax)?;
            per =
                Per::parse(word).ok_or_else(|| Failure::err("PER must be day, month or cycle"))?;
            i += 2;
        }
        end(a, i)?;
        Some(Cap { limit, per })
    };
    let m = Mutation::Limit { member, cap };
    Ok(reply_outcome(out, app.execute(account, &m)?))
}

/// `MEMBERS account`
pub fn members(
    app: &App,
    s: &mut Session,
    a: &[&[u8]],
    out: &mut Vec<u8>,
) -> Result<Flow, Failure> {
    let (members, seq) = app.engine.members(id(a[1])?);
    encode::array_header(out, members.len());
    for m in &members {
        encode::map_header(out, s.proto, 6);
        encode::bulk_str(out, "member");
        encode::bulk(out, &m.member);
        encode::bulk_str(out, "limit");
        encode::integer(out, m.limit.map_or(-1, |l| l as i64));
        encode::bulk_str(out, "per");
        encode::bulk_str(out, m.per.as_str());
        encode::bulk_str(out, "used");
        encode::integer(out, m.used as i64);
        encode::bulk_str(out, "held");
        encode::integer(out, m.held as i64);
        encode::bulk_str(out, "period_end");
        encode::integer(out, m.period_end_ms as i64);
    }
    Ok(Flow::Wait(seq))
}

/// `ALERT account threshold [DEL]`
pub fn alert(app: &App, _: &mut Session, a: &[&[u8]], out: &mut Vec<u8>) -> Result<Flow, Failure> {
    let account = id(a[1])?;
    let threshold = parse_amount(a[2], "threshold")?;
    if threshold == 0 {
        return Err(Failure::err("threshold out of range (1 to 10^15)"));
    }
    let remove = match a.get(3) {
        None => false,
        Some(word) if is(word, "DEL") => true,
        Some(_) => return Err(Failure::syntax()),
    };
    end(a, if remove { 4 } else { 3 })?;
    let m = Mutation::Alert { threshold, remove };
    Ok(reply_outcome(out, app.execute(account, &m)?))
}

/// `EVENTS [AFTER seq] [COUNT n]`
pub fn events(app: &App, s: &mut Session, a: &[&[u8]], out: &mut Vec<u8>) -> Result<Flow, Failure> {
    let mut after = None;
    let mut count = None;
    let mut i = 1;
    while i < a.len() {
        let value = a.get(i + 1).ok_or_else(Failure::syntax)?;
        if is(a[i], "AFTER") && after.is_none() {
            after = Some(parse_u64(value, "AFTER")?);
        } else if is(a[i], "COUNT") && count.is_none() {
            let n = parse_u64(value, "COUNT")?;
            if !(1..=EVENTS_MAX).contains(&n) {
                return Err(Failure::err(format!(
                    "COUNT out of range (1 to {EVENTS_MAX})"
                )));
            }
            count = Some(n);
        } else {
            return Err(Failure::syntax());
        }
        i += 2;
    }
    let count = count.unwrap_or(EVENTS_DEFAULT) as usize;
    let (events, seq) = app.engine.events_after(after.unwrap_or(0), count);
    encode::array_header(out, events.len());
    for e in &events {
        encode::map_header(out, s.proto, 7);
        encode::bulk_str(out, "seq");
        encode::integer(out, e.seq as i64);
        encode::bulk_str(out, "at");
        encode::integer(out, e.at_ms as i64);
        encode::bulk_str(out, "type");
        encode::bulk_str(out, e.kind.as_str());
        encode::bulk_str(out, "account");
        encode::bulk(out, &e.account);
        encode::bulk_str(out, "member");
        encode::bulk(out, e.member.as_deref().unwrap_or(b""));
        encode::bulk_str(out, "value");
        encode::integer(out, e.value as i64);
        encode::bulk_str(out, "threshold");
        encode::integer(out, e.threshold as i64);
    }
    Ok(Flow::Wait(seq))
}
