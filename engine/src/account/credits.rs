//! GRANT adds a bucket of credits; DEBIT spends available credits at once.
//! Both assume a new id: the caller asked `recall_grant` / `recall_debit`.

use super::idempotency::{Done, GrantArgs};
use super::ledger::Credits;
use super::{Account, Applied, Ctx};
use crate::bucket::NEVER;
use crate::command::Expiry;
use crate::error::{EngineError, Result};
use crate::history::Op;
use crate::id::Id;
use crate::pricing::Priced;
use crate::MAX_AMOUNT;

impl Account {
    /// GRANT of a new grant id.
    pub fn grant(&mut self, ctx: &Ctx, grant_id: &[u8], args: GrantArgs) -> Result<Applied> {
        debug_assert!(args.amount <= MAX_AMOUNT);
        let now = ctx.now_ms;
        let expires_at_ms = match args.expiry {
            Expiry::Never => NEVER,
            Expiry::At(at) => at,
            Expiry::Ttl(ttl) => now.saturating_add(ttl),
        };
        if expires_at_ms <= now {
            return Err(EngineError::invalid("the grant would expire at once"));
        }
        self.check_room(args.amount)?;
        if !ctx.replay && self.buckets.len() >= ctx.limits.max_buckets as usize {
            return Err(EngineError::invalid(format!(
                "too many buckets on this account (limit {})",
                ctx.limits.max_buckets
            )));
        }
        let id = Id::new(grant_id);
        let credits = Credits {
            kind: args.kind,
            amount: args.amount,
            expires_at_ms,
            priority: args.priority,
            from_plan: false,
        };
        self.add_credits(id.clone(), credits);
        self.log(ctx.limits.terms, now, Op::Grant, &id, args.amount);
        let reply = self.bal.available;
        self.remember(ctx.limits.terms, now, id, Done::Grant { args, reply });
        Ok(Applied::Changed(reply))
    }

    /// DEBIT of a new debit id, already priced.
    pub fn debit(
        &mut self,
        ctx: &Ctx,
        debit_id: &[u8],
        charge: Priced,
        member: Option<&[u8]>,
    ) -> Result<Applied> {
        if charge.amount > self.bal.available {
            return Err(EngineError::insufficient(charge.amount, self.bal.available));
        }
        // The pool first (INSUFFICIENT wins), then the member's cap.
        if let Some(m) = member {
            self.check_member(ctx, m, charge.amount)?;
        }
        let member = member.map(Id::new);
        if let Some(m) = &member {
            self.charge_member(m, ctx.now_ms, charge.amount, 0);
        }
        self.spend_available(charge.amount);
        let id = Id::new(debit_id);
        self.log(ctx.limits.terms, ctx.now_ms, Op::Debit, &id, charge.amount);
        let done = Done::Debit {
            args: charge.args,
            reply: charge.amount,
            member,
        };
        self.remember(ctx.limits.terms, ctx.now_ms, id, done);
        Ok(Applied::Changed(charge.amount))
    }
}
