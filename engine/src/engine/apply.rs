//! One mutation on one account: its arguments checked against the
//! contract's ranges, its config-derived inputs resolved, then applied.
//!
//! The order is the contract's: an id used before decides the reply first
//! (a retry repeats, other arguments conflict), then the account's limits,
//! the plan's entitlement and the rate card, and only then the change.

use super::Catalog;
use crate::account::{Account, Applied, Ctx, GrantArgs};
use crate::command::{Charge, Mutation};
use crate::config::PlanTerms;
use crate::error::{Code, EngineError, Result};
use crate::id::{valid_id, Bytes};
use crate::pricing::{Priced, SkuPrice};
use crate::MAX_AMOUNT;
use std::sync::Arc;

/// Longest hold TTL accepted (contract §5: 1 to 86,400,000 ms).
pub const MAX_HOLD_TTL_MS: u64 = 86_400_000;

/// Checks a mutation's arguments against the contract's ranges.
pub(super) fn validate(account: &[u8], m: &Mutation) -> Result<()> {
    if !valid_id(account) {
        return Err(EngineError::invalid("account id must be 1 to 128 bytes"));
    }
    let id_ok = |b: &Bytes| valid_id(b.0);
    let amount_ok = |a: u64| a <= MAX_AMOUNT;
    let ttl_ok = |t: u64| (1..=MAX_HOLD_TTL_MS).contains(&t);
    let charge_ok = |c: &Charge| match c {
        Charge::Amount(a) => amount_ok(*a),
        Charge::Sku { qty, .. } => amount_ok(*qty),
    };
    let ok = match m {
        Mutation::Grant {
            grant_id,
            amount,
            priority,
            ..
        } => id_ok(grant_id) && amount_ok(*amount) && *priority <= crate::bucket::MAX_PRIORITY,
        Mutation::Reserve {
            hold_id,
            charge,
            ttl_ms,
            member,
        } => {
            id_ok(hold_id)
                && charge_ok(charge)
                && ttl_ms.is_none_or(ttl_ok)
                && member.as_ref().is_none_or(id_ok)
        }
        Mutation::Capture { hold_id, .. }
        | Mutation::Commit { hold_id, .. }
        | Mutation::Release { hold_id } => id_ok(hold_id),
        Mutation::Extend { hold_id, ttl_ms } => id_ok(hold_id) && ttl_ok(*ttl_ms),
        Mutation::Debit {
            debit_id,
            charge,
            member,
        } => id_ok(debit_id) && charge_ok(charge) && member.as_ref().is_none_or(id_ok),
        Mutation::Limit { member, cap } => id_ok(member) && cap.is_none_or(|c| amount_ok(c.limit)),
        Mutation::Alert { threshold, .. } => (1..=MAX_AMOUNT).contains(threshold),
        Mutation::Subscribe { .. }
        | Mutation::Seats { .. }
        | Mutation::Addon { .. }
        | Mutation::Unsubscribe => true,
    };
    if ok {
        Ok(())
    } else {
        Err(EngineError::invalid("argument out of range"))
    }
}

/// The config-derived inputs of one mutation. The journal record keeps
/// each of them, so replay decides as the original run did.
pub(super) struct Resolved {
    /// RESERVE's TTL: as the client sent it, else the default in force.
    pub ttl_ms: u64,
    /// The sku's shared name and price (`None`: not a sku, or no such sku).
    pub price: Option<(Arc<str>, Arc<SkuPrice>)>,
    /// SUBSCRIBE's plan terms.
    pub plan: Option<Arc<PlanTerms>>,
}

impl Resolved {
    /// A new command's inputs from today's catalog, and the default TTL a
    /// RESERVE without one gets (the record keeps it, so replay gives the
    /// hold the same expiry whatever the config says then).
    pub(super) fn from_catalog(cat: &Catalog, m: &Mutation) -> Result<(Resolved, Option<u64>)> {
        let default_ttl_ms = match m {
            Mutation::Reserve { ttl_ms: None, .. } => Some(cat.limits.hold_ttl_ms),
            _ => None,
        };
        let plan = match m {
            Mutation::Subscribe { plan, .. } => Some(
                cat.config
                    .plan(plan)
                    .cloned()
                    .ok_or_else(|| EngineError::not_found(format!("no such plan '{plan}'")))?,
            ),
            _ => None,
        };
        let resolved = Resolved {
            ttl_ms: reserve_ttl_ms(m, default_ttl_ms),
            price: sku_of(m).and_then(|sku| cat.sku(sku)),
            plan,
        };
        Ok((resolved, default_ttl_ms))
    }
}

/// The sku a mutation charges, if any.
pub(super) fn sku_of<'a>(m: &Mutation<'a>) -> Option<&'a str> {
    match *m {
        Mutation::Reserve {
            charge: Charge::Sku { sku, .. },
            ..
        }
        | Mutation::Debit {
            charge: Charge::Sku { sku, .. },
            ..
        } => Some(sku),
        _ => None,
    }
}

/// RESERVE's TTL: the client's, else `default_ttl_ms` (0 for other commands).
pub(super) fn reserve_ttl_ms(m: &Mutation, default_ttl_ms: Option<u64>) -> u64 {
    match m {
        Mutation::Reserve { ttl_ms, .. } => ttl_ms.or(default_ttl_ms).unwrap_or(0),
        _ => 0,
    }
}

/// Entitlement, then the rate card (an unknown sku is NOTFOUND here, after
/// the idempotency check: a sku dropped by CONFIG RELOAD must not turn a
/// retry into a refusal).
fn price(
    acct: &Account,
    charge: Charge,
    price: Option<(Arc<str>, Arc<SkuPrice>)>,
) -> Result<Priced> {
    if let Some((_, p)) = &price {
        if !acct.entitled(&p.feature) {
            return Err(EngineError::new(
                Code::NotEntitled,
                format!("the plan does not include '{}'", p.feature),
            ));
        }
    }
    Priced::new(charge, price)
}

/// Applies one mutation to one account (new commands and replayed records alike).
/// The inputs are borrowed: the caller's journal record points at the same
/// price and plan, and only a new hold or subscription keeps a reference.
pub(super) fn apply(acct: &mut Account, ctx: &Ctx, m: &Mutation, r: &Resolved) -> Result<Applied> {
    match *m {
        Mutation::Grant {
            grant_id,
            amount,
            kind,
            expiry,
            priority,
        } => {
            let args = GrantArgs {
                amount,
                kind,
                expiry,
                priority,
            };
            if let Some(earlier) = acct.recall_grant(grant_id.0, &args) {
                return earlier;
            }
            acct.grant(ctx, grant_id.0, args)
        }
        Mutation::Reserve {
            hold_id,
            charge,
            ttl_ms,
            member,
        } => {
            let member = member.map(|m| m.0);
            if let Some(earlier) = acct.recall_reserve(hold_id.0, &charge, ttl_ms, member) {
                return earlier;
            }
            acct.check_hold_limit(ctx)?;
            let priced = price(acct, charge, r.price.clone())?;
            acct.reserve(ctx, hold_id.0, priced, (r.ttl_ms, ttl_ms), member)
        }
        Mutation::Capture { hold_id, usage } => acct.capture(ctx, hold_id.0, usage),
        Mutation::Commit { hold_id, usage } => acct.commit(ctx, hold_id.0, usage),
        Mutation::Release { hold_id } => acct.release(ctx, hold_id.0),
        Mutation::Extend { hold_id, ttl_ms } => acct.extend(ctx, hold_id.0, ttl_ms),
        Mutation::Debit {
            debit_id,
            charge,
            member,
        } => {
            let member = member.map(|m| m.0);
            if let Some(earlier) = acct.recall_debit(debit_id.0, &charge, member) {
                return earlier;
            }
            let priced = price(acct, charge, r.price.clone())?;
            acct.debit(ctx, debit_id.0, priced, member)
        }
        Mutation::Subscribe {
            plan,
            seats,
            anchor_ms,
        } => {
            let terms = r
                .plan
                .clone()
                .ok_or_else(|| EngineError::not_found(format!("no such plan '{plan}'")))?;
            acct.subscribe(ctx, plan, terms, seats, anchor_ms)
        }
        Mutation::Seats { seats } => acct.set_seats(ctx, seats),
        Mutation::Addon { units } => acct.set_addon(ctx, units),
        Mutation::Unsubscribe => acct.unsubscribe(ctx),
        Mutation::Limit { member, cap } => acct.limit(ctx, member.0, cap),
        Mutation::Alert { threshold, remove } => acct.alert(ctx, threshold, remove),
    }
}
