//! Holds: credits set aside for one job, and what remains of them once closed.

use crate::id::Id;
use crate::pricing::SkuPrice;
use serde::{Deserialize, Serialize};
use smallvec::SmallVec;
use std::sync::Arc;

/// Credits a hold took from one bucket.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Portion {
    pub bucket_seq: u64,
    pub amount: u64,
}

/// The arguments RESERVE was called with, kept to tell a retry from a conflict.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ChargeArgs {
    Amount(u64),
    Sku { sku: Arc<str>, qty: u64 },
}

impl ChargeArgs {
    /// Whether `charge` repeats these arguments (a retry, not a conflict).
    pub fn matches(&self, charge: &crate::command::Charge) -> bool {
        use crate::command::Charge;
        match (self, charge) {
            (ChargeArgs::Amount(a), Charge::Amount(b)) => a == b,
            (ChargeArgs::Sku { sku, qty }, Charge::Sku { sku: s, qty: q }) => {
                &**sku == *s && qty == q
            }
            _ => false,
        }
    }
}

/// An open hold.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hold {
    pub charge: ChargeArgs,
    /// RESERVE's TTL as the client gave it (`None`: the default), to tell a
    /// retry from a conflict whatever the default is today.
    pub ttl_given: Option<u64>,
    /// Credits held at RESERVE (its reply).
    pub amount: u64,
    /// Cumulative credits captured so far (may exceed `amount`: the overage came from available).
    pub captured: u64,
    /// Credits still held, by source bucket; their sum is what this hold adds to `held`.
    pub portions: SmallVec<[Portion; 2]>,
    pub expires_at_ms: u64,
    pub price: Option<Arc<SkuPrice>>,
    /// The member charged (`MEMBER m`), if any: part of the arguments.
    pub member: Option<Id>,
}

impl Hold {
    /// Credits this hold still holds.
    #[inline]
    pub fn held(&self) -> u64 {
        self.portions.iter().map(|p| p.amount).sum()
    }
}

/// How a hold ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum HoldOutcome {
    Committed {
        usage: Option<crate::command::Usage>,
        total: u64,
    },
    Released {
        returned: u64,
    },
    Expired,
}

/// A closed hold, remembered for the idempotency window.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClosedHold {
    pub charge: ChargeArgs,
    pub ttl_given: Option<u64>,
    pub amount: u64,
    pub captured: u64,
    pub outcome: HoldOutcome,
    pub member: Option<Id>,
}

impl ClosedHold {
    /// What a closed hold remembers of itself.
    pub fn of(hold: &Hold, outcome: HoldOutcome) -> ClosedHold {
        ClosedHold {
            charge: hold.charge.clone(),
            ttl_given: hold.ttl_given,
            amount: hold.amount,
            captured: hold.captured,
            outcome,
            member: hold.member.clone(),
        }
    }
}
