//! GRANT, DEBIT, QUOTE: credits in, credits out, prices.

use super::{
    end, id, is, name, parse_amount, parse_charge, parse_u64, reply_outcome, Failure, Flow, Session,
};
use crate::app::App;
use crate::resp::encode;
use creditd_engine::bucket::{BucketKind, DEFAULT_PRIORITY, MAX_PRIORITY};
use creditd_engine::id::Bytes;
use creditd_engine::{Expiry, Mutation};

/// `GRANT account grant_id amount [KIND kind] [EXPIRES at_ms | TTL ms] [PRIORITY p]`
pub fn grant(app: &App, _: &mut Session, a: &[&[u8]], out: &mut Vec<u8>) -> Result<Flow, Failure> {
    let account = id(a[1])?;
    let grant_id = Bytes(id(a[2])?);
    let amount = parse_amount(a[3], "amount")?;
    let mut kind = None;
    let mut expiry = None;
    let mut priority = None;
    let mut i = 4;
    while i < a.len() {
        let value = a.get(i + 1).ok_or_else(Failure::syntax)?;
        if is(a[i], "KIND") && kind.is_none() {
            kind = Some(BucketKind::parse(value).ok_or_else(|| {
                Failure::err("KIND must be subscription, addon, rollover, prepaid or promo")
            })?);
        } else if is(a[i], "EXPIRES") && expiry.is_none() {
            expiry = Some(Expiry::At(parse_u64(value, "EXPIRES")?));
        } else if is(a[i], "TTL") && expiry.is_none() {
            let ttl = parse_u64(value, "TTL")?;
            if ttl == 0 {
                return Err(Failure::err("TTL must be at least 1 ms"));
            }
            expiry = Some(Expiry::Ttl(ttl));
        } else if is(a[i], "PRIORITY") && priority.is_none() {
            let p = parse_u64(value, "PRIORITY")?;
            if p > MAX_PRIORITY as u64 {
                return Err(Failure::err("PRIORITY must be 0 to 100"));
            }
            priority = Some(p as u8);
        } else {
            return Err(Failure::syntax());
        }
        i += 2;
    }
    let m = Mutation::Grant {
        grant_id,
        amount,
        kind: kind.unwrap_or(BucketKind::Prepaid),
        expiry: expiry.unwrap_or(Expiry::Never),
        priority: priority.unwrap_or(DEFAULT_PRIORITY),
    };
    Ok(reply_outcome(out, app.execute(account, &m)?))
}

/// `DEBIT account debit_id (amount | SKU sku QTY n) [MEMBER m]`
pub fn debit(app: &App, _: &mut Session, a: &[&[u8]], out: &mut Vec<u8>) -> Result<Flow, Failure> {
    let account = id(a[1])?;
    let debit_id = Bytes(id(a[2])?);
    let (charge, mut i) = parse_charge(a, 3)?;
    let mut member = None;
    if i < a.len() && is(a[i], "MEMBER") {
        member = Some(Bytes(id(a.get(i + 1).ok_or_else(Failure::syntax)?)?));
        i += 2;
    }
    end(a, i)?;
    let m = Mutation::Debit {
        debit_id,
        charge,
        member,
    };
    Ok(reply_outcome(out, app.execute(account, &m)?))
}

/// `QUOTE sku qty`
pub fn quote(app: &App, _: &mut Session, a: &[&[u8]], out: &mut Vec<u8>) -> Result<Flow, Failure> {
    let sku = name(a[1], "sku")?;
    let qty = parse_amount(a[2], "qty")?;
    let cost = app.engine.quote(sku, qty)?;
    encode::integer(out, cost as i64);
    Ok(Flow::Done)
}
