//! SUBSCRIBE, SEATS, ADDON, UNSUBSCRIBE: plans and their cycles.

use super::{end, id, is, name, parse_u32, parse_u64, reply_outcome, Failure, Flow, Session};
use crate::app::App;
use crate::resp::encode;
use creditd_engine::Mutation;

/// `SUBSCRIBE account plan [SEATS n] [ANCHOR at_ms]`
pub fn subscribe(
    app: &App,
    _: &mut Session,
    a: &[&[u8]],
    out: &mut Vec<u8>,
) -> Result<Flow, Failure> {
    let account = id(a[1])?;
    let plan = name(a[2], "plan")?;
    let mut seats = None;
    let mut anchor_ms = None;
    let mut i = 3;
    while i < a.len() {
        let value = a.get(i + 1).ok_or_else(Failure::syntax)?;
        if is(a[i], "SEATS") && seats.is_none() {
            seats = Some(parse_u32(value, "SEATS")?);
        } else if is(a[i], "ANCHOR") && anchor_ms.is_none() {
            anchor_ms = Some(parse_u64(value, "ANCHOR")?);
        } else {
            return Err(Failure::syntax());
        }
        i += 2;
    }
    end(a, i)?;
    let m = Mutation::Subscribe {
        plan,
        seats,
        anchor_ms,
    };
    Ok(reply_outcome(out, app.execute(account, &m)?))
}

/// `SEATS account n`
pub fn seats(app: &App, _: &mut Session, a: &[&[u8]], out: &mut Vec<u8>) -> Result<Flow, Failure> {
    let account = id(a[1])?;
    let m = Mutation::Seats {
        seats: parse_u32(a[2], "seats")?,
    };
    Ok(reply_outcome(out, app.execute(account, &m)?))
}

/// `ADDON account units`
pub fn addon(app: &App, _: &mut Session, a: &[&[u8]], out: &mut Vec<u8>) -> Result<Flow, Failure> {
    let account = id(a[1])?;
    let m = Mutation::Addon {
        units: parse_u32(a[2], "units")?,
    };
    Ok(reply_outcome(out, app.execute(account, &m)?))
}

/// `UNSUBSCRIBE account`
pub fn unsubscribe(
    app: &App,
    _: &mut Session,
    a: &[&[u8]],
    out: &mut Vec<u8>,
) -> Result<Flow, Failure> {
    let account = id(a[1])?;
    let outcome = app.execute(account, &Mutation::Unsubscribe)?;
    encode::simple(out, "OK");
    Ok(Flow::Wait(outcome.wait_seq))
}
