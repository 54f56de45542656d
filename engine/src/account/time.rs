//! Time-driven events: holds expire, buckets expire, plans renew, and
//! idempotency records are forgotten once their window has passed.
//!
//! They run under the terms of the account's last journal record, never
//! today's config: replay must reach the same state.

use super::idempotency::Done;
use super::{Account, Effects, Terms};
use crate::bucket::NEVER;
use crate::history::Op;
use crate::hold::{ClosedHold, HoldOutcome};
use crate::id::Id;

/// Bound on event rounds in one `advance` (a dormant account with a monthly
/// plan needs one round per missed cycle; 100 years is 1,200).
const MAX_EVENT_ROUNDS: usize = 10_000_000;

impl Account {
    /// Applies every time-driven event due up to `now_ms`.
    #[inline]
    pub fn advance(&mut self, now_ms: u64, effects: &mut Effects) {
        if now_ms < self.next_due_ms {
            return;
        }
        self.run_due(now_ms, effects);
    }

    /// The earliest bucket expiry or renewal (not hold expiry).
    fn next_bucket_or_cycle_ms(&self) -> u64 {
        let mut t = NEVER;
        for b in &self.buckets {
            if b.remaining > 0 && b.expires_at_ms < t {
                t = b.expires_at_ms;
            }
        }
        if let Some(sub) = &self.subscription {
            t = t.min(sub.cycle_end_ms);
        }
        t
    }

    #[cold]
    fn run_due(&mut self, now_ms: u64, effects: &mut Effects) {
        let terms = self.terms;
        let mut due_holds: Vec<(u64, Id)> = self
            .holds
            .iter()
            .filter(|(_, h)| h.expires_at_ms <= now_ms)
            .map(|(id, h)| (h.expires_at_ms, id.clone()))
            .collect();
        due_holds.sort_unstable();
        let mut next_hold = 0;
        let mut rounds = 0;
        loop {
            rounds += 1;
            assert!(rounds < MAX_EVENT_ROUNDS, "event loop bound");
            let t_hold = due_holds.get(next_hold).map_or(NEVER, |(t, _)| *t);
            let t_other = self.next_bucket_or_cycle_ms();
            let t = t_hold.min(t_other);
            if t == NEVER || t > now_ms {
                break;
            }
            if t_hold <= t_other {
                // Holds expire before buckets and renewals of the same instant.
                let id = due_holds[next_hold].1.clone();
                next_hold += 1;
                self.expire_hold(terms, &id, t);
                effects.hold_expiries += 1;
            } else {
                effects.bucket_expiries += self.expire_buckets(terms, t);
                if self
                    .subscription
                    .as_ref()
                    .is_some_and(|s| s.cycle_end_ms <= t)
                    && self.renew(terms, t)
                {
                    effects.renewals += 1;
                }
            }
        }
        self.forget_done(now_ms, terms.idempotency_window_ms);
        let mut next = self.next_bucket_or_cycle_ms();
        for h in self.holds.values() {
            next = next.min(h.expires_at_ms);
        }
        if let Some(finished_ms) = self.done.front_finished_ms() {
            next = next.min(finished_ms.saturating_add(terms.idempotency_window_ms));
        }
        self.next_due_ms = next;
    }

    fn expire_hold(&mut self, terms: Terms, id: &Id, at_ms: u64) {
        let hold = self.holds.remove(id).expect("due hold is open");
        let held = hold.held();
        if let Some(m) = &hold.member {
            self.settle_member(m, at_ms, 0, held);
        }
        self.return_portions(terms, &hold.portions, at_ms);
        self.log(terms, at_ms, Op::ExpireHold, id, held);
        let closed = ClosedHold::of(&hold, HoldOutcome::Expired);
        self.remember(terms, at_ms, id.clone(), Done::Hold(closed));
    }

    /// Expires every bucket whose instant has come by `at_ms`. Returns how many.
    fn expire_buckets(&mut self, terms: Terms, at_ms: u64) -> u64 {
        let mut expired = Vec::new();
        for b in self.buckets.iter_mut() {
            if b.remaining > 0 && b.expires_at_ms <= at_ms {
                expired.push((b.id.clone(), b.remaining));
                self.bal.available -= b.remaining;
                self.bal.expired += b.remaining;
                b.remaining = 0;
            }
        }
        let n = expired.len() as u64;
        for (id, amount) in expired {
            self.log(terms, at_ms, Op::ExpireCredits, id, amount);
        }
        self.drop_empty_buckets();
        n
    }
}
