//! What reads show: BALANCE's five totals, ACCOUNT's consistent snapshot,
//! HISTORY's newest entries.

use super::Account;
use crate::bucket::{Bucket, NEVER};
use crate::history::HistoryEntry;
use crate::id::Id;
use serde::{Deserialize, Serialize};

/// The five totals of BALANCE.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Balance {
    pub available: u64,
    pub held: u64,
    pub spent: u64,
    pub expired: u64,
    pub granted: u64,
}

/// One open hold as ACCOUNT shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HoldView {
    pub id: Id,
    pub amount: u64,
    pub captured: u64,
    pub expires_at_ms: u64,
}

/// One consistent snapshot of an account (ACCOUNT).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct AccountView {
    pub balance: Balance,
    pub plan: Option<Id>,
    pub seats: u32,
    pub cycle_start_ms: u64,
    pub cycle_end_ms: u64,
    /// Live buckets with credits left, in spending order.
    pub buckets: Vec<Bucket>,
    pub holds: Vec<HoldView>,
}

impl Account {
    pub fn balance(&self) -> Balance {
        self.bal
    }

    pub fn view(&self) -> AccountView {
        let mut holds: Vec<HoldView> = self
            .holds
            .iter()
            .map(|(id, h)| HoldView {
                id: id.clone(),
                amount: h.amount,
                captured: h.captured,
                expires_at_ms: h.expires_at_ms,
            })
            .collect();
        holds.sort_by(|a, b| (a.expires_at_ms, &a.id).cmp(&(b.expires_at_ms, &b.id)));
        let sub = self.active_subscription();
        AccountView {
            balance: self.bal,
            plan: sub.map(|s| s.plan.clone()),
            seats: sub.map_or(0, |s| s.seats),
            cycle_start_ms: sub.map_or(0, |s| s.cycle_start_ms),
            cycle_end_ms: sub.map_or(0, |s| {
                if s.cycle_end_ms == NEVER {
                    0
                } else {
                    s.cycle_end_ms
                }
            }),
            buckets: self
                .buckets
                .iter()
                .filter(|b| b.remaining > 0)
                .cloned()
                .collect(),
            holds,
        }
    }

    /// Sequence number of the newest history entry (0: none yet).
    pub fn history_seq(&self) -> u64 {
        self.history.last_seq()
    }

    /// Up to `count` history entries, newest first.
    pub fn history(&self, count: usize) -> Vec<HistoryEntry> {
        self.history.newest(count)
    }
}
