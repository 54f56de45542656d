//! The `members` workload: accounts whose pool is shared by members under
//! caps, with low-balance alerts, driven so that every outcome the server
//! must produce can be predicted by the client.
//!
//! Setup gives every account a pool (GRANT), `--members` members each capped
//! per period (LIMIT), and low-balance thresholds (ALERT). The run charges
//! members with `RESERVE ... MEMBER m` (then COMMIT below, at or above the
//! hold, or RELEASE) and `DEBIT ... MEMBER m`; the first member of every
//! account spends heavily and meets its cap (LIMITED), the pool runs down
//! past the thresholds and is topped up again (GRANT), so `low` events
//! happen over and over.
//!
//! Every account is driven by one connection only, whose requests the
//! server applies in order, so the client knows `available`, each member's
//! `used` and `held`, and every threshold crossing after each acknowledged
//! change (no hold expires during the run: holds get a TTL of an hour, and
//! grants never expire). `--verify` then holds the server to that model:
//! see [`verify`].

pub mod setup;
pub mod traffic;
pub mod verify;

#[cfg(test)]
mod tests;

use crate::workload::KeyDist;
use std::time::Instant;

/// The period a member's cap counts over (`LIMIT ... PER <per>`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum CapPer {
    /// The UTC day.
    Day,
    /// The UTC calendar month.
    Month,
    /// The account's billing cycle (the UTC calendar month: the run's
    /// accounts have no plan).
    Cycle,
}

impl CapPer {
    pub fn word(self) -> &'static str {
        match self {
            CapPer::Day => "day",
            CapPer::Month => "month",
            CapPer::Cycle => "cycle",
        }
    }
}

/// What the members workload sets up and drives.
#[derive(Debug, Clone)]
pub struct MembersCfg {
    /// Members per account, `m0` to `m<members-1>`.
    pub members: u32,
    /// Every member's cap per period.
    pub cap: u64,
    pub per: CapPer,
    /// Credits of the setup GRANT, and of each top-up.
    pub pool: u64,
    /// Low-balance thresholds, ascending, each at most `pool` (a top-up
    /// always arms them all again).
    pub thresholds: Vec<u64>,
    pub accounts: u32,
    /// Load connections: account `a` is driven by connection `a % connections`.
    pub connections: u32,
    pub keys: KeyDist,
    pub zipf_s: f64,
    /// When the caps' period ends (less a margin for clocks): from then on the
    /// server starts members' `used` again from 0 and the client's counts per
    /// member no longer predict it. `None`: not within the run.
    pub period_ends: Option<Instant>,
}

impl MembersCfg {
    /// The default thresholds for a pool: a half, a quarter and a tenth of it.
    pub fn default_thresholds(pool: u64) -> Vec<u64> {
        let mut t: Vec<u64> = [pool / 2, pool / 4, pool / 10]
            .into_iter()
            .filter(|&t| t > 0)
            .collect();
        t.sort_unstable();
        t.dedup();
        t
    }

    /// The member's id as the server sees it.
    pub fn member_name(m: u32) -> String {
        format!("m{m}")
    }
}
