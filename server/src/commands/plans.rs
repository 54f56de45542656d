//! PLAN (and its old names SUBSCRIBE and UNSUBSCRIBE), SEATS, ADDON: plans
//! and their cycles.
//!
//! `PLAN` is the name to use: stock clients treat a command named SUBSCRIBE
//! or UNSUBSCRIBE as Redis Pub/Sub (redis-cli waits for messages; ioredis
//! switches the connection to subscriber mode and fails on the reply).

use super::{end, id, is, name, parse_u32, parse_u64, reply_outcome, Failure, Flow, Session};
use crate::app::App;
use crate::resp::encode;
use creditd_engine::Mutation;

/// `PLAN account plan [SEATS n] [ANCHOR at_ms]` or `PLAN account NONE`.
pub fn plan(app: &App, s: &mut Session, a: &[&[u8]], out: &mut Vec<u8>) -> Result<Flow, Failure> {
    if a.len() == 3 && is(a[2], "NONE") {
        unsubscribe(app, s, &a[..2], out)
    } else {
        subscribe(app, s, a, out)
    }
}

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
