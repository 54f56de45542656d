//! The client's ledger for `--verify` of the reserve and mix workloads: what
//! each account must show at the end (`spent` exactly, and the credits still
//! held by holds that were neither closed nor expired), from acknowledged
//! replies only.

use crate::ops::OpId;
use std::collections::{HashMap, HashSet};
use std::time::Instant;

/// An open hold as the client knows it.
#[derive(Debug, Clone, Copy)]
pub struct HoldRec {
    pub acct: u32,
    pub amount: u64,
    pub captured: u64,
    /// The RESERVE was sent at or after `sent` and acknowledged at `acked`, so the
    /// hold expires somewhere in `[sent + ttl, acked + ttl]`.
    pub sent: Instant,
    pub acked: Instant,
    pub ttl_ms: u64,
}

impl HoldRec {
    pub fn held(&self) -> u64 {
        self.amount.saturating_sub(self.captured)
    }
}

/// What the client expects of the server, from acknowledged replies only.
#[derive(Debug, Default)]
pub struct Ledger {
    /// Credits spent per account: acknowledged commits, captures and debits.
    pub spent: HashMap<u32, u64>,
    /// Every account a request was sent to.
    pub touched: HashSet<u32>,
    /// Accounts with a request whose outcome is unknown (connection lost).
    pub indeterminate: HashSet<u32>,
    /// Holds acknowledged and not closed.
    pub holds: HashMap<OpId, HoldRec>,
    pub retries_checked: u64,
    pub retry_mismatches: u64,
    pub balance_checks: u64,
    pub balance_failures: u64,
    /// A few descriptions of failures, for the report.
    pub examples: Vec<String>,
}

impl Ledger {
    pub(crate) fn note(&mut self, msg: String) {
        if self.examples.len() < 10 {
            self.examples.push(msg);
        }
    }

    pub fn merge(&mut self, other: Ledger) {
        for (a, s) in other.spent {
            *self.spent.entry(a).or_default() += s;
        }
        self.touched.extend(other.touched);
        self.indeterminate.extend(other.indeterminate);
        self.holds.extend(other.holds);
        self.retries_checked += other.retries_checked;
        self.retry_mismatches += other.retry_mismatches;
        self.balance_checks += other.balance_checks;
        self.balance_failures += other.balance_failures;
        for e in other.examples {
            self.note(e);
        }
    }

    pub(crate) fn add_spent(&mut self, acct: u32, n: u64) {
        if n > 0 {
            *self.spent.entry(acct).or_default() += n;
        }
    }
}
