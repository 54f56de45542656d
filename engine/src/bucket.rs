//! Buckets: one grant of credits each, spent in the contract's order.

use crate::id::Id;
use serde::{Deserialize, Serialize};

/// Never-expiring, as stored (sorts after every real instant). Shown as 0.
pub const NEVER: u64 = u64::MAX;

/// Default priority (contract §5: subscription, addon and rollover get it too).
pub const DEFAULT_PRIORITY: u8 = 50;
pub const MAX_PRIORITY: u8 = 100;

/// Where a bucket's credits came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum BucketKind {
    Subscription,
    Addon,
    Rollover,
    Prepaid,
    Promo,
}

impl BucketKind {
    pub fn as_str(self) -> &'static str {
        match self {
            BucketKind::Subscription => "subscription",
            BucketKind::Addon => "addon",
            BucketKind::Rollover => "rollover",
            BucketKind::Prepaid => "prepaid",
            BucketKind::Promo => "promo",
        }
    }

    /// Parses a kind keyword, case-insensitively.
    pub fn parse(word: &[u8]) -> Option<BucketKind> {
        const ALL: [BucketKind; 5] = [
            BucketKind::Subscription,
            BucketKind::Addon,
            BucketKind::Rollover,
            BucketKind::Prepaid,
            BucketKind::Promo,
        ];
        ALL.into_iter()
            .find(|k| k.as_str().as_bytes().eq_ignore_ascii_case(word))
    }
}

/// One grant's credits.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Bucket {
    /// The grant id (or a generated one for plan grants).
    pub id: Id,
    /// Grant order within the account: the tie-breaker "oldest grant first".
    pub seq: u64,
    pub kind: BucketKind,
    /// Credits still available in this bucket.
    pub remaining: u64,
    /// Instant the bucket expires ([`NEVER`] if it doesn't).
    pub expires_at_ms: u64,
    pub priority: u8,
    /// Open hold portions that came from this bucket. A bucket is kept while
    /// any exist, so a release can return credits to it (or expire them).
    pub held_refs: u32,
    /// Made by the account's plan (an allowance, add-on units, a rollover),
    /// not by GRANT: only these merge with the plan's later grants of the
    /// cycle, and only these end when the plan changes.
    pub from_plan: bool,
}

impl Bucket {
    /// The spending order key: priority, soonest expiry (never last), oldest grant.
    #[inline]
    pub fn order_key(&self) -> (u8, u64, u64) {
        (self.priority, self.expires_at_ms, self.seq)
    }

    #[inline]
    pub fn is_live(&self, now_ms: u64) -> bool {
        now_ms < self.expires_at_ms
    }

    /// `expires_at` as the contract shows it: 0 = never.
    pub fn shown_expires_at(&self) -> u64 {
        if self.expires_at_ms == NEVER {
            0
        } else {
            self.expires_at_ms
        }
    }
}
