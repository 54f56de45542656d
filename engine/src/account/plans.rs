//! Subscriptions: calendar cycles, per-seat allowances, add-on units,
//! upgrades with optional rollover, and renewals that happen on time.

use super::ledger::Credits;
use super::{Account, Applied, Ctx, Terms};
use crate::bucket::{BucketKind, DEFAULT_PRIORITY, NEVER};
use crate::calendar::{cycle_containing, cycle_start_ms};
use crate::config::PlanTerms;
use crate::error::{EngineError, Result};
use crate::history::Op;
use crate::id::Id;
use crate::MAX_AMOUNT;
use serde::{Deserialize, Serialize};
use std::sync::Arc;

/// Most seats or add-on units one subscription may have.
pub const MAX_SEATS: u32 = 1_000_000;

/// An account's current plan and cycle.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Subscription {
    pub plan: Id,
    /// The plan's terms when subscribed (a later CONFIG RELOAD does not change them).
    pub terms: Arc<PlanTerms>,
    pub anchor_ms: u64,
    /// Index of the current cycle counted from the anchor.
    pub cycle: u32,
    pub cycle_start_ms: u64,
    /// When the next cycle starts ([`NEVER`] if the calendar ran out).
    pub cycle_end_ms: u64,
    /// Seats paid for in this cycle.
    pub seats: u32,
    /// Seats from the next cycle on (a decrease waits for the renewal).
    pub seats_next: u32,
    pub addon_units: u32,
    pub addon_units_next: u32,
    /// UNSUBSCRIBE'd: no renewal at `cycle_end_ms`, where it ends. Until
    /// then a SUBSCRIBE to the same plan takes it back without a second
    /// allowance for the cycle.
    pub cancelled: bool,
}

fn allowance(per_unit: u64, units: u32) -> Result<u64> {
    per_unit
        .checked_mul(units as u64)
        .filter(|a| *a <= MAX_AMOUNT)
        .ok_or_else(|| EngineError::invalid("allowance exceeds 10^15 credits"))
}

/// What SEATS and ADDON change: paid units of the plan, each worth an
/// allowance per cycle. More units pay their allowance at once; fewer take
/// effect at the renewal (`*_next`).
#[derive(Clone, Copy)]
enum Units {
    Seats,
    Addon,
}

impl Units {
    fn least(self) -> u32 {
        match self {
            Units::Seats => 1,
            Units::Addon => 0,
        }
    }

    fn range_error(self) -> &'static str {
        match self {
            Units::Seats => "seats must be 1 to 1000000",
            Units::Addon => "units must be 0 to 1000000",
        }
    }

    fn per_unit(self, terms: &PlanTerms) -> Result<u64> {
        match self {
            Units::Seats => Ok(terms.credits_per_seat),
            Units::Addon => terms
                .addon_unit_credits
                .ok_or_else(|| EngineError::invalid("the plan has no add-ons")),
        }
    }

    fn current(self, sub: &Subscription) -> u32 {
        match self {
            Units::Seats => sub.seats,
            Units::Addon => sub.addon_units,
        }
    }

    /// This cycle's units and the next cycle's.
    fn counts(self, sub: &mut Subscription) -> (&mut u32, &mut u32) {
        match self {
            Units::Seats => (&mut sub.seats, &mut sub.seats_next),
            Units::Addon => (&mut sub.addon_units, &mut sub.addon_units_next),
        }
    }

    /// The allowance's bucket id prefix and kind, and its history op.
    fn bucket(self) -> (&'static str, BucketKind, Op) {
        match self {
            Units::Seats => ("", BucketKind::Subscription, Op::Seats),
            Units::Addon => ("addon:", BucketKind::Addon, Op::Addon),
        }
    }
}

/// A plan allowance's bucket terms: it ends with the cycle.
fn plan_credits(kind: BucketKind, amount: u64, expires_at_ms: u64) -> Credits {
    Credits {
        kind,
        amount,
        expires_at_ms,
        priority: DEFAULT_PRIORITY,
        from_plan: true,
    }
}

fn bucket_id(prefix: &str, plan: &[u8], cycle_start_ms: u64) -> Id {
    let mut id = Vec::with_capacity(prefix.len() + plan.len() + 24);
    id.extend_from_slice(prefix.as_bytes());
    id.extend_from_slice(plan);
    id.push(b'@');
    id.extend_from_slice(cycle_start_ms.to_string().as_bytes());
    id.truncate(crate::id::MAX_ID_BYTES);
    Id::new(&id)
}

fn cycle_bounds(anchor_ms: u64, terms: &PlanTerms, k: u32) -> Result<(u64, u64)> {
    let start = cycle_start_ms(anchor_ms, terms.period, k)
        .ok_or_else(|| EngineError::invalid("cycle out of the calendar's range"))?;
    let end = k
        .checked_add(1)
        .and_then(|k1| cycle_start_ms(anchor_ms, terms.period, k1))
        .unwrap_or(NEVER);
    Ok((start, end))
}

impl Account {
    /// Is a priced command for `feature` allowed by the account's plan?
    pub fn entitled(&self, feature: &str) -> bool {
        self.active_subscription()
            .is_none_or(|s| s.terms.includes(feature))
    }

    /// The plan in force: a cancelled one only waits for its cycle's end.
    pub(crate) fn active_subscription(&self) -> Option<&Subscription> {
        self.subscription.as_deref().filter(|s| !s.cancelled)
    }

    fn require_subscription(&self) -> Result<&Subscription> {
        self.active_subscription()
            .ok_or_else(|| EngineError::invalid("the account has no subscription"))
    }

    /// Grants the subscription's allowance for the current cycle's seats.
    fn grant_cycle(&mut self, terms: Terms, at_ms: u64, op: Op) -> Result<()> {
        let sub = self.subscription.as_deref().expect("subscribed");
        let amount = allowance(sub.terms.credits_per_seat, sub.seats)?;
        let addon = match sub.terms.addon_unit_credits {
            Some(per) if sub.addon_units > 0 => allowance(per, sub.addon_units)?,
            _ => 0,
        };
        // Renewals add up over the years: never past the account bound
        // (10^18), where the sums stop being safe from overflow. Reaching it
        // takes a thousand cycles of the largest allowance.
        let room = self.room();
        let amount = amount.min(room);
        let addon = addon.min(room - amount);
        let (plan, end, start) = (sub.plan.clone(), sub.cycle_end_ms, sub.cycle_start_ms);
        let sub_id = bucket_id("", &plan, start);
        self.add_credits(sub_id, plan_credits(BucketKind::Subscription, amount, end));
        self.log(terms, at_ms, op, plan.clone(), amount);
        if addon > 0 {
            let addon_id = bucket_id("addon:", &plan, start);
            self.add_credits(addon_id, plan_credits(BucketKind::Addon, addon, end));
            self.log(terms, at_ms, Op::Addon, plan, addon);
        }
        Ok(())
    }

    /// The next cycle begins at its instant `at_ms` (== the old cycle's end).
    /// Returns whether it renewed (a cancelled plan ends instead).
    pub(crate) fn renew(&mut self, terms: Terms, at_ms: u64) -> bool {
        let sub = self.subscription.as_deref_mut().expect("subscribed");
        debug_assert_eq!(sub.cycle_end_ms, at_ms);
        if sub.cancelled {
            self.subscription = None;
            return false;
        }
        sub.cycle += 1;
        sub.seats = sub.seats_next;
        sub.addon_units = sub.addon_units_next;
        match cycle_bounds(sub.anchor_ms, &sub.terms, sub.cycle) {
            Ok((start, end)) => {
                sub.cycle_start_ms = start;
                sub.cycle_end_ms = end;
            }
            Err(_) => {
                // The calendar ran out (year 9999): no more cycles.
                sub.cycle_end_ms = NEVER;
                return false;
            }
        }
        // Allowances were validated when set, so this cannot fail.
        self.grant_cycle(terms, at_ms, Op::Renew)
            .expect("allowance validated at subscribe");
        true
    }

    pub fn subscribe(
        &mut self,
        ctx: &Ctx,
        plan: &str,
        terms: Arc<PlanTerms>,
        seats: Option<u32>,
        anchor_ms: Option<u64>,
    ) -> Result<Applied> {
        let now = ctx.now_ms;
        if let Some(s) = seats {
            if s == 0 || s > MAX_SEATS {
                return Err(EngineError::invalid("SEATS must be 1 to 1000000"));
            }
        }
        let anchor = anchor_ms.unwrap_or(now);
        if anchor > now {
            return Err(EngineError::invalid("ANCHOR is in the future"));
        }
        if let Some(sub) = self.subscription.as_deref_mut() {
            let same_plan = &*sub.plan == plan.as_bytes();
            if sub.cancelled && same_plan {
                // Taking back a pending cancellation: this cycle's allowance
                // was granted already.
                sub.cancelled = false;
                let plan = sub.plan.clone();
                self.log(ctx.limits.terms, now, Op::Subscribe, plan, 0);
                if let Some(n) = seats {
                    self.set_seats(ctx, n)?;
                }
                return Ok(Applied::Changed(self.bal.available));
            }
            if sub.cancelled {
                // Another plan after UNSUBSCRIBE: the old credits stay until
                // they expire, as they would have without it.
                self.subscription = None;
            } else if same_plan {
                return match seats {
                    Some(n) => self.set_seats(ctx, n),
                    None => Ok(Applied::Repeated(self.bal.available)),
                };
            }
        }
        let seats = seats.unwrap_or(1);
        let amount = allowance(terms.credits_per_seat, seats)?;
        self.check_room(amount)?;
        let k = cycle_containing(anchor, terms.period, now)
            .ok_or_else(|| EngineError::invalid("ANCHOR out of the calendar's range"))?;
        let (start, end) = cycle_bounds(anchor, &terms, k)?;
        if self.subscription.is_some() {
            self.end_old_plan(ctx, now, &terms, end);
        }
        self.subscription = Some(Box::new(Subscription {
            plan: Id::new(plan.as_bytes()),
            terms,
            anchor_ms: anchor,
            cycle: k,
            cycle_start_ms: start,
            cycle_end_ms: end,
            seats,
            seats_next: seats,
            addon_units: 0,
            addon_units_next: 0,
            cancelled: false,
        }));
        self.next_due_ms = self.next_due_ms.min(end);
        self.grant_cycle(ctx.limits.terms, now, Op::Subscribe)?;
        Ok(Applied::Changed(self.bal.available))
    }

    /// A plan change: the old subscription credits end now, moving into one
    /// rollover bucket (expiring with the new first cycle) if the new plan
    /// says so. Add-on units are cancelled; add-on credits already granted
    /// stay until their cycle ends.
    fn end_old_plan(&mut self, ctx: &Ctx, now: u64, new_terms: &PlanTerms, new_end: u64) {
        let mut leftover = 0u64;
        let mut expired = Vec::new();
        for b in self.buckets.iter_mut() {
            // Only the plan's own allowance: credits a GRANT made with
            // KIND subscription belong to whoever granted them.
            if !b.from_plan || b.kind != BucketKind::Subscription || !b.is_live(now) {
                continue;
            }
            if new_terms.upgrade_rollover {
                leftover += b.remaining;
            } else if b.remaining > 0 {
                expired.push((b.id.clone(), b.remaining));
                self.bal.expired += b.remaining;
            }
            self.bal.available -= b.remaining;
            b.remaining = 0;
            // Credits live holds took from it expire when released.
            b.expires_at_ms = now;
        }
        self.buckets.sort_by_key(|b| b.order_key());
        self.buckets.retain(|b| b.remaining > 0 || b.held_refs > 0);
        for (id, amount) in expired {
            self.log(ctx.limits.terms, now, Op::ExpireCredits, id, amount);
        }
        if leftover > 0 {
            // Moving credits between buckets: add_credits counts them as
            // granted and available again, so take them out of both first.
            self.bal.granted -= leftover;
            let plan = self.subscription.as_ref().expect("subscribed").plan.clone();
            let id = bucket_id("rollover:", &plan, now);
            self.add_credits(id, plan_credits(BucketKind::Rollover, leftover, new_end));
        }
        self.subscription = None;
    }

    /// SEATS: more seats add their allowance now; fewer take effect at the renewal.
    pub fn set_seats(&mut self, ctx: &Ctx, seats: u32) -> Result<Applied> {
        self.set_units(ctx, Units::Seats, seats)
    }

    /// ADDON: as SEATS, for the plan's recurring add-on units.
    pub fn set_addon(&mut self, ctx: &Ctx, units: u32) -> Result<Applied> {
        self.set_units(ctx, Units::Addon, units)
    }

    fn set_units(&mut self, ctx: &Ctx, what: Units, units: u32) -> Result<Applied> {
        if units < what.least() || units > MAX_SEATS {
            return Err(EngineError::invalid(what.range_error()));
        }
        let sub = self.require_subscription()?;
        let per_unit = what.per_unit(&sub.terms)?;
        allowance(per_unit, units)?;
        let current = what.current(sub);
        let (end, start, plan) = (sub.cycle_end_ms, sub.cycle_start_ms, sub.plan.clone());
        let added = if units > current {
            allowance(per_unit, units - current)?
        } else {
            0
        };
        self.check_room(added)?;
        let sub = self.subscription.as_deref_mut().expect("checked");
        let (now, next) = what.counts(sub);
        *now = (*now).max(units);
        *next = units;
        let (prefix, kind, op) = what.bucket();
        self.add_credits(
            bucket_id(prefix, &plan, start),
            plan_credits(kind, added, end),
        );
        self.log(ctx.limits.terms, ctx.now_ms, op, plan, added);
        Ok(Applied::Changed(self.bal.available))
    }

    /// No renewal at the cycle's end; what was granted stays until it expires.
    pub fn unsubscribe(&mut self, ctx: &Ctx) -> Result<Applied> {
        let Some(sub) = self.subscription.as_deref_mut().filter(|s| !s.cancelled) else {
            return Ok(Applied::Repeated(0));
        };
        sub.cancelled = true;
        let plan = sub.plan.clone();
        self.log(ctx.limits.terms, ctx.now_ms, Op::Unsubscribe, plan, 0);
        Ok(Applied::Changed(0))
    }
}
