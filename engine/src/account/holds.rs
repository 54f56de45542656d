//! Holds: RESERVE takes credits aside, CAPTURE and COMMIT spend them (and
//! any excess from available), RELEASE returns them, EXTEND moves the
//! expiry. A closed hold is remembered for the idempotency window, so a
//! retried COMMIT or RELEASE repeats its reply.

use super::done_log::Kind;
use super::idempotency::Done;
use super::{Account, Applied, Ctx};
use crate::command::Usage;
use crate::error::{Code, EngineError, Result};
use crate::history::Op;
use crate::hold::{ClosedHold, Hold, HoldOutcome};
use crate::id::Id;
use crate::pricing::Priced;

impl Account {
    /// RESERVE of a new hold id (the caller ruled out a retry with
    /// [`Account::recall_reserve`] and priced the charge). `ttl_ms` is the
    /// hold's TTL, `ttl_given` the one the client sent, if any.
    pub fn reserve(
        &mut self,
        ctx: &Ctx,
        hold_id: &[u8],
        charge: Priced,
        (ttl_ms, ttl_given): (u64, Option<u64>),
        member: Option<&[u8]>,
    ) -> Result<Applied> {
        debug_assert!(self.check_hold_limit(ctx).is_ok(), "the caller checked");
        let amount = charge.amount;
        if amount > self.bal.available {
            return Err(EngineError::insufficient(amount, self.bal.available));
        }
        // The pool first (INSUFFICIENT wins), then the member's cap.
        if let Some(m) = member {
            self.check_member(ctx, m, amount)?;
        }
        let member = member.map(Id::new);
        if let Some(m) = &member {
            self.charge_member(m, ctx.now_ms, 0, amount);
        }
        let portions = self.take_for_hold(amount);
        let expires_at_ms = ctx.now_ms.saturating_add(ttl_ms);
        self.next_due_ms = self.next_due_ms.min(expires_at_ms);
        let id = Id::new(hold_id);
        self.holds.insert(
            id.clone(),
            Hold {
                charge: charge.args,
                ttl_given,
                amount,
                captured: 0,
                portions,
                expires_at_ms,
                price: charge.price,
                member,
            },
        );
        self.log(ctx.limits.terms, ctx.now_ms, Op::Reserve, id, amount);
        Ok(Applied::Changed(amount))
    }

    /// Refuses one more open hold past the account's limit (not on replay:
    /// the limit may have changed since). Checked before the charge is
    /// priced, so a full account says so whatever the sku.
    pub fn check_hold_limit(&self, ctx: &Ctx) -> Result<()> {
        if !ctx.replay && self.holds.len() >= ctx.limits.max_holds as usize {
            return Err(EngineError::invalid(format!(
                "too many open holds on this account (limit {})",
                ctx.limits.max_holds
            )));
        }
        Ok(())
    }

    /// The error for a command on a hold that is not open.
    fn closed_hold_error(&self, hold_id: &[u8], verb: &str) -> EngineError {
        match self.lookup_done(Kind::Hold, hold_id) {
            Some(Done::Hold(c)) => match c.outcome {
                HoldOutcome::Expired => EngineError::new(Code::Expired, "the hold expired"),
                HoldOutcome::Committed { .. } => {
                    EngineError::conflict(format!("cannot {verb}: the hold was committed"))
                }
                HoldOutcome::Released { .. } => {
                    EngineError::conflict(format!("cannot {verb}: the hold was released"))
                }
            },
            _ => EngineError::not_found("no such hold"),
        }
    }

    fn usage_total(hold: &Hold, usage: Usage) -> Result<u64> {
        match usage {
            Usage::Total(n) => Ok(n),
            Usage::Qty(q) => {
                let price = hold
                    .price
                    .as_ref()
                    .ok_or_else(|| EngineError::invalid("QTY needs a hold made with SKU"))?;
                price
                    .cost(q)
                    .map_err(|_| EngineError::invalid("amount out of range"))
            }
        }
    }

    /// Settles `delta` more credits of a hold: from what it holds, then the
    /// excess from available (within the pool, then within the member's
    /// cap). Checks first, so a refusal changes nothing. Returns the credits
    /// taken from the hold; the caller counts `delta` as the member's use.
    fn settle(&mut self, ctx: &Ctx, hold: &mut Hold, delta: u64) -> Result<u64> {
        let held = hold.held();
        let from_hold = delta.min(held);
        let excess = delta - from_hold;
        if excess > self.bal.available {
            return Err(EngineError::insufficient(excess, self.bal.available));
        }
        if let (Some(m), true) = (&hold.member, excess > 0) {
            self.check_member(ctx, m, excess)?;
        }
        if from_hold > 0 {
            let mut portions = std::mem::take(&mut hold.portions);
            self.spend_portions(&mut portions, from_hold);
            hold.portions = portions;
        }
        if excess > 0 {
            self.spend_available(excess);
        }
        Ok(from_hold)
    }

    pub fn capture(&mut self, ctx: &Ctx, hold_id: &[u8], usage: Usage) -> Result<Applied> {
        // The hold's own key is reused below: no allocation per capture.
        let Some((id, mut hold)) = self.holds.remove_entry(hold_id) else {
            return Err(self.closed_hold_error(hold_id, "capture"));
        };
        let result = (|| {
            let total = Self::usage_total(&hold, usage)?;
            if total <= hold.captured {
                return Ok(Applied::Repeated(hold.captured));
            }
            let delta = total - hold.captured;
            let from_hold = self.settle(ctx, &mut hold, delta)?;
            if let Some(m) = &hold.member {
                self.settle_member(m, ctx.now_ms, delta, from_hold);
            }
            hold.captured = total;
            Ok(Applied::Changed(delta))
        })();
        let captured = hold.captured;
        self.holds.insert(id.clone(), hold);
        match result? {
            Applied::Changed(delta) => {
                self.log(ctx.limits.terms, ctx.now_ms, Op::Capture, id, delta);
                Ok(Applied::Changed(captured))
            }
            repeated => Ok(repeated),
        }
    }

    pub fn commit(&mut self, ctx: &Ctx, hold_id: &[u8], usage: Option<Usage>) -> Result<Applied> {
        let Some((id, mut hold)) = self.holds.remove_entry(hold_id) else {
            if let Some(Done::Hold(c)) = self.lookup_done(Kind::Hold, hold_id) {
                if let HoldOutcome::Committed { usage: u, total } = c.outcome {
                    return if u == usage {
                        Ok(Applied::Repeated(total))
                    } else {
                        Err(EngineError::conflict(
                            "the hold was committed with other arguments",
                        ))
                    };
                }
            }
            return Err(self.closed_hold_error(hold_id, "commit"));
        };
        let settled = (|| {
            let total = match usage {
                None => hold.amount,
                Some(u) => Self::usage_total(&hold, u)?,
            };
            let final_total = total.max(hold.captured);
            let delta = final_total - hold.captured;
            let held = hold.held();
            self.settle(ctx, &mut hold, delta)?;
            if let Some(m) = &hold.member {
                // What it held is spent or returned below.
                self.settle_member(m, ctx.now_ms, delta, held);
            }
            Ok(final_total)
        })();
        let final_total = match settled {
            Ok(t) => t,
            Err(e) => {
                self.holds.insert(id, hold);
                return Err(e);
            }
        };
        let portions = std::mem::take(&mut hold.portions);
        self.return_portions(ctx.limits.terms, &portions, ctx.now_ms);
        self.log(ctx.limits.terms, ctx.now_ms, Op::Commit, &id, final_total);
        hold.captured = final_total;
        let outcome = HoldOutcome::Committed {
            usage,
            total: final_total,
        };
        let closed = ClosedHold::of(&hold, outcome);
        self.remember(ctx.limits.terms, ctx.now_ms, id, Done::Hold(closed));
        Ok(Applied::Changed(final_total))
    }

    pub fn release(&mut self, ctx: &Ctx, hold_id: &[u8]) -> Result<Applied> {
        let Some((id, hold)) = self.holds.remove_entry(hold_id) else {
            return match self.lookup_done(Kind::Hold, hold_id) {
                Some(Done::Hold(c)) => match c.outcome {
                    HoldOutcome::Released { returned } => Ok(Applied::Repeated(returned)),
                    HoldOutcome::Expired => Ok(Applied::Repeated(0)),
                    HoldOutcome::Committed { .. } => Err(EngineError::conflict(
                        "cannot release: the hold was committed",
                    )),
                },
                _ => Err(EngineError::not_found("no such hold")),
            };
        };
        if let Some(m) = &hold.member {
            self.settle_member(m, ctx.now_ms, 0, hold.held());
        }
        let returned = self.return_portions(ctx.limits.terms, &hold.portions, ctx.now_ms);
        self.log(ctx.limits.terms, ctx.now_ms, Op::Release, &id, returned);
        let closed = ClosedHold::of(&hold, HoldOutcome::Released { returned });
        self.remember(ctx.limits.terms, ctx.now_ms, id, Done::Hold(closed));
        Ok(Applied::Changed(returned))
    }

    pub fn extend(&mut self, ctx: &Ctx, hold_id: &[u8], ttl_ms: u64) -> Result<Applied> {
        let Some(hold) = self.holds.get_mut(hold_id) else {
            return Err(self.closed_hold_error(hold_id, "extend"));
        };
        hold.expires_at_ms = ctx.now_ms.saturating_add(ttl_ms);
        let at = hold.expires_at_ms;
        self.next_due_ms = self.next_due_ms.min(at);
        Ok(Applied::Changed(at))
    }
}
