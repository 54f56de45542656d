//! The ledger of buckets: credits arrive as buckets, holds take portions of
//! them in spending order, spends and returns move credits between the
//! five totals. Every function keeps conservation:
//! `granted = available + held + spent + expired`.

use super::{Account, Terms, MAX_TOTAL};
use crate::bucket::{Bucket, BucketKind, NEVER};
use crate::error::{EngineError, Result};
use crate::history::Op;
use crate::hold::Portion;
use crate::id::Id;
use smallvec::SmallVec;

/// A new bucket's terms.
pub(crate) struct Credits {
    pub kind: BucketKind,
    pub amount: u64,
    pub expires_at_ms: u64,
    pub priority: u8,
    /// The plan's allowance (merged into its identical bucket of the cycle).
    pub from_plan: bool,
}

impl Account {
    /// Refuses `amount` more credits if the account's total would pass
    /// [`MAX_TOTAL`]: the one check every way of adding credits makes.
    pub(crate) fn check_room(&self, amount: u64) -> Result<()> {
        if self.bal.granted.saturating_add(amount) > MAX_TOTAL {
            return Err(EngineError::invalid("account total would exceed 10^18"));
        }
        Ok(())
    }

    /// How many credits may still arrive before [`MAX_TOTAL`].
    pub(crate) fn room(&self) -> u64 {
        MAX_TOTAL.saturating_sub(self.bal.granted)
    }

    fn insert_bucket(&mut self, bucket: Bucket) {
        let key = bucket.order_key();
        let pos = self.buckets.partition_point(|b| b.order_key() < key);
        if bucket.expires_at_ms != NEVER && bucket.remaining > 0 {
            self.next_due_ms = self.next_due_ms.min(bucket.expires_at_ms);
        }
        self.buckets.insert(pos, bucket);
    }

    /// Adds credits as a new bucket, or for the plan into its identical
    /// bucket of this cycle (never into a bucket that GRANT made).
    pub(crate) fn add_credits(&mut self, id: Id, c: Credits) {
        if c.amount == 0 {
            return;
        }
        assert!(
            self.check_room(c.amount).is_ok(),
            "callers keep totals within MAX_TOTAL"
        );
        self.bal.available += c.amount;
        self.bal.granted += c.amount;
        if c.from_plan {
            if let Some(b) = self.buckets.iter_mut().find(|b| {
                b.from_plan
                    && b.kind == c.kind
                    && b.expires_at_ms == c.expires_at_ms
                    && b.priority == c.priority
            }) {
                b.remaining += c.amount;
                if c.expires_at_ms != NEVER {
                    self.next_due_ms = self.next_due_ms.min(c.expires_at_ms);
                }
                return;
            }
        }
        self.next_bucket_seq += 1;
        let seq = self.next_bucket_seq;
        self.insert_bucket(Bucket {
            id,
            seq,
            kind: c.kind,
            remaining: c.amount,
            expires_at_ms: c.expires_at_ms,
            priority: c.priority,
            held_refs: 0,
            from_plan: c.from_plan,
        });
    }

    /// Drops buckets that can never matter again: empty and unreferenced.
    pub(crate) fn drop_empty_buckets(&mut self) {
        self.buckets.retain(|b| b.remaining > 0 || b.held_refs > 0);
    }

    /// Takes `amount` from available credits in spending order, for a hold.
    pub(crate) fn take_for_hold(&mut self, amount: u64) -> SmallVec<[Portion; 2]> {
        debug_assert!(amount <= self.bal.available);
        let mut portions = SmallVec::new();
        let mut need = amount;
        for b in self.buckets.iter_mut() {
            if need == 0 {
                break;
            }
            if b.remaining == 0 {
                continue;
            }
            let take = need.min(b.remaining);
            b.remaining -= take;
            b.held_refs += 1;
            need -= take;
            portions.push(Portion {
                bucket_seq: b.seq,
                amount: take,
            });
        }
        assert_eq!(need, 0, "available covered the hold");
        self.bal.available -= amount;
        self.bal.held += amount;
        portions
    }

    /// Spends `amount` from available credits in spending order.
    pub(crate) fn spend_available(&mut self, amount: u64) {
        debug_assert!(amount <= self.bal.available);
        let mut need = amount;
        for b in self.buckets.iter_mut() {
            if need == 0 {
                break;
            }
            let take = need.min(b.remaining);
            b.remaining -= take;
            need -= take;
        }
        assert_eq!(need, 0, "available covered the debit");
        self.bal.available -= amount;
        self.bal.spent += amount;
        self.drop_empty_buckets();
    }

    fn bucket_index(&self, seq: u64) -> usize {
        self.buckets
            .iter()
            .position(|b| b.seq == seq)
            .expect("a referenced bucket is kept")
    }

    /// Spends up to `amount` of a hold's portions (in the order they were taken).
    pub(crate) fn spend_portions(&mut self, portions: &mut SmallVec<[Portion; 2]>, amount: u64) {
        let mut need = amount;
        for p in portions.iter_mut() {
            if need == 0 {
                break;
            }
            let take = need.min(p.amount);
            p.amount -= take;
            need -= take;
            if p.amount == 0 {
                let i = self.bucket_index(p.bucket_seq);
                self.buckets[i].held_refs -= 1;
            }
        }
        assert_eq!(need, 0, "the hold covered the capture");
        portions.retain(|p| p.amount > 0);
        self.bal.held -= amount;
        self.bal.spent += amount;
        self.drop_empty_buckets();
    }

    /// Returns a hold's remaining portions at `at_ms`: to their buckets if
    /// still live, else to `expired`. Returns the credits made available again.
    pub(crate) fn return_portions(
        &mut self,
        terms: Terms,
        portions: &SmallVec<[Portion; 2]>,
        at_ms: u64,
    ) -> u64 {
        let mut returned = 0;
        for p in portions {
            if p.amount == 0 {
                continue;
            }
            let i = self.bucket_index(p.bucket_seq);
            let b = &mut self.buckets[i];
            b.held_refs -= 1;
            self.bal.held -= p.amount;
            if b.is_live(at_ms) {
                // FIX (tests/scenarios.rs `released_credits_still_expire_on_time`):
                // the bucket may have been emptied by this hold when
                // `next_due_ms` was last computed (only buckets with credits
                // left count), so its expiry may be missing from that lower
                // bound. Credits returned by RELEASE or a partial COMMIT then
                // stayed available past the bucket's `expires_at`.
                if b.expires_at_ms != NEVER {
                    self.next_due_ms = self.next_due_ms.min(b.expires_at_ms);
                }
                b.remaining += p.amount;
                self.bal.available += p.amount;
                returned += p.amount;
            } else {
                self.bal.expired += p.amount;
                let id = b.id.clone();
                self.log(terms, at_ms, Op::ExpireCredits, id, p.amount);
            }
        }
        self.drop_empty_buckets();
        returned
    }
}
