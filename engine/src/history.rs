//! A bounded per-account history of what happened, newest last in memory,
//! newest first on the wire.

use crate::id::{id_serde, Id};
use serde::{Deserialize, Serialize};

/// What happened (contract §5 HISTORY ops).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Op {
    Grant,
    Reserve,
    Capture,
    Commit,
    Release,
    ExpireHold,
    Debit,
    ExpireCredits,
    Subscribe,
    Renew,
    Seats,
    Addon,
    Unsubscribe,
}

impl Op {
    pub fn as_str(self) -> &'static str {
        match self {
            Op::Grant => "grant",
            Op::Reserve => "reserve",
            Op::Capture => "capture",
            Op::Commit => "commit",
            Op::Release => "release",
            Op::ExpireHold => "expire_hold",
            Op::Debit => "debit",
            Op::ExpireCredits => "expire_credits",
            Op::Subscribe => "subscribe",
            Op::Renew => "renew",
            Op::Seats => "seats",
            Op::Addon => "addon",
            Op::Unsubscribe => "unsubscribe",
        }
    }
}

/// One history entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HistoryEntry {
    /// Per-account sequence number, 1, 2, 3, ...
    pub seq: u64,
    pub at_ms: u64,
    pub op: Op,
    /// The grant, hold, debit or bucket id; the plan name for plan ops.
    #[serde(with = "id_serde")]
    pub id: Id,
    pub amount: u64,
}
