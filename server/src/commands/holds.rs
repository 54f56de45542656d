//! RESERVE, CAPTURE, COMMIT, RELEASE, EXTEND: the life of a hold.

use super::{
    end, id, is, parse_charge, parse_ttl, parse_usage, reply_outcome, Failure, Flow, Session,
};
use crate::app::App;
use creditd_engine::id::Bytes;
use creditd_engine::Mutation;

/// `RESERVE account hold_id (amount | SKU sku QTY n) [TTL ms] [MEMBER m]`
pub fn reserve(
    app: &App,
    _: &mut Session,
    a: &[&[u8]],
    out: &mut Vec<u8>,
) -> Result<Flow, Failure> {
    let account = id(a[1])?;
    let hold_id = Bytes(id(a[2])?);
    let (charge, mut i) = parse_charge(a, 3)?;
    let mut ttl_ms = None;
    let mut member = None;
    while i < a.len() {
        let value = a.get(i + 1).ok_or_else(Failure::syntax)?;
        if is(a[i], "TTL") && ttl_ms.is_none() {
            ttl_ms = Some(parse_ttl(value, "TTL")?);
        } else if is(a[i], "MEMBER") && member.is_none() {
            member = Some(Bytes(id(value)?));
        } else {
            return Err(Failure::syntax());
        }
        i += 2;
    }
    let m = Mutation::Reserve {
        hold_id,
        charge,
        ttl_ms,
        member,
    };
    Ok(reply_outcome(out, app.execute(account, &m)?))
}

/// `CAPTURE account hold_id (total | QTY n)`
pub fn capture(
    app: &App,
    _: &mut Session,
    a: &[&[u8]],
    out: &mut Vec<u8>,
) -> Result<Flow, Failure> {
    let account = id(a[1])?;
    let hold_id = Bytes(id(a[2])?);
    let (usage, i) = parse_usage(a, 3)?;
    end(a, i)?;
    let m = Mutation::Capture { hold_id, usage };
    Ok(reply_outcome(out, app.execute(account, &m)?))
}

/// `COMMIT account hold_id [total | QTY n]`
pub fn commit(app: &App, _: &mut Session, a: &[&[u8]], out: &mut Vec<u8>) -> Result<Flow, Failure> {
    let account = id(a[1])?;
    let hold_id = Bytes(id(a[2])?);
    let usage = if a.len() > 3 {
        let (usage, i) = parse_usage(a, 3)?;
        end(a, i)?;
        Some(usage)
    } else {
        None
    };
    let m = Mutation::Commit { hold_id, usage };
    Ok(reply_outcome(out, app.execute(account, &m)?))
}

/// `RELEASE account hold_id`
pub fn release(
    app: &App,
    _: &mut Session,
    a: &[&[u8]],
    out: &mut Vec<u8>,
) -> Result<Flow, Failure> {
    let account = id(a[1])?;
    let m = Mutation::Release {
        hold_id: Bytes(id(a[2])?),
    };
    Ok(reply_outcome(out, app.execute(account, &m)?))
}

/// `EXTEND account hold_id ttl_ms`
pub fn extend(app: &App, _: &mut Session, a: &[&[u8]], out: &mut Vec<u8>) -> Result<Flow, Failure> {
    let account = id(a[1])?;
    let m = Mutation::Extend {
        hold_id: Bytes(id(a[2])?),
        ttl_ms: parse_ttl(a[3], "ttl_ms")?,
    };
    Ok(reply_outcome(out, app.execute(account, &m)?))
}
