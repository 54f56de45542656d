//! `--verify`: after the run, read every touched account and compare with the
//! client's ledger.
//!
//! Checks, per account:
//! - conservation: `granted = available + held + spent + expired`;
//! - `granted` equals what the setup granted (the run's accounts are fresh);
//! - `spent` equals the sum of acknowledged commits, captures and debits exactly
//!   (retries must not add anything; an expired hold spends only what it captured);
//! - `held` equals what the holds the client left open still hold: abandoned
//!   holds with a short TTL must have expired by now. An account with a hold
//!   whose expiry falls too close to the read to tell is skipped for `held`.
//!
//! Plus, over the run: every idempotent retry got the first reply back, and every
//! BALANCE read during the run satisfied conservation.
//!
//! An account with a request whose reply never came (lost connection) is skipped
//! for `spent` and `held` (counted as indeterminate).

use crate::client::Endpoint;
use crate::ledger::Ledger;
use crate::members::verify::MembersReport;
use crate::ops::{Op, Speller};
use serde::Serialize;
use std::collections::HashMap;
use std::time::{Duration, Instant};

#[derive(Debug, Default, Serialize)]
pub struct VerifyReport {
    pub accounts_checked: u64,
    pub conservation_failures: u64,
    pub granted_mismatches: u64,
    pub spent_mismatches: u64,
    pub held_mismatches: u64,
    /// Accounts not checked for `held`: a hold expiring too close to the read.
    pub held_skipped: u64,
    /// Accounts not checked for `spent`/`held`: a reply was lost.
    pub indeterminate: u64,
    pub read_errors: u64,
    pub holds_expected_open: u64,
    pub holds_expected_expired: u64,
    pub expected_spent_total: u64,
    pub retries_checked: u64,
    pub retry_mismatches: u64,
    pub live_balance_checks: u64,
    pub live_balance_failures: u64,
    /// The members workload's own checks (caps, events).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub members: Option<MembersReport>,
    /// Sum of every failure count above: 0 means verified.
    pub mismatches: u64,
    pub examples: Vec<String>,
}

impl VerifyReport {
    fn note(&mut self, msg: String) {
        if self.examples.len() < 20 {
            self.examples.push(msg);
        }
    }
}

/// Clock slack when deciding whether a hold has certainly expired (the server
/// counts whole milliseconds).
const SLACK: Duration = Duration::from_millis(3);
/// Holds with a TTL up to this are expected to expire before the check; verify
/// waits for them.
const WAIT_FOR_TTL: Duration = Duration::from_secs(60);

pub async fn verify(
    endpoint: &Endpoint,
    speller: &Speller,
    ledger: Ledger,
    granted: u64,
    timeout: Duration,
) -> Result<VerifyReport, String> {
    let mut rep = VerifyReport {
        retries_checked: ledger.retries_checked,
        retry_mismatches: ledger.retry_mismatches,
        live_balance_checks: ledger.balance_checks,
        live_balance_failures: ledger.balance_failures,
        ..Default::default()
    };
    for e in &ledger.examples {
        rep.note(e.clone());
    }

    // Let the short-lived holds run out first.
    let wait_until = ledger
        .holds
        .values()
        .filter(|h| Duration::from_millis(h.ttl_ms) <= WAIT_FOR_TTL)
        .map(|h| h.acked + Duration::from_millis(h.ttl_ms) + SLACK)
        .max();
    if let Some(t) = wait_until {
        let now = Instant::now();
        if t > now {
            tokio::time::sleep(t - now).await;
        }
    }

    let mut holds_by_acct: HashMap<u32, Vec<_>> = HashMap::new();
    for h in ledger.holds.values() {
        holds_by_acct.entry(h.acct).or_default().push(*h);
    }
    let mut accounts: Vec<u32> = ledger.touched.iter().copied().collect();
    accounts.sort_unstable();

    let mut client = endpoint.connect(timeout).await?;
    for chunk in accounts.chunks(1000) {
        for &acct in chunk {
            speller.encode(&mut client.enc, &Op::Balance { acct });
        }
        let before = Instant::now();
        let replies = client.exchange(chunk.len()).await?;
        let after = Instant::now();
        for (&acct, reply) in chunk.iter().zip(&replies) {
            rep.accounts_checked += 1;
            let name = String::from_utf8_lossy(&speller.account_name(acct)).into_owned();
            let Some([a, h, s, e, g]) = reply.balance() else {
                rep.read_errors += 1;
                rep.note(format!("BALANCE {name}: unexpected reply {reply}"));
                continue;
            };
            if a + h + s + e != g {
                rep.conservation_failures += 1;
                rep.note(format!(
                    "{name}: granted {g} != available {a} + held {h} + spent {s} + expired {e}"
                ));
            }
            if g != granted as i64 {
                rep.granted_mismatches += 1;
                rep.note(format!("{name}: granted {g}, the setup granted {granted}"));
            }
            if ledger.indeterminate.contains(&acct) {
                rep.indeterminate += 1;
                continue;
            }
            let want_spent = ledger.spent.get(&acct).copied().unwrap_or(0);
            rep.expected_spent_total += want_spent;
            if s != want_spent as i64 {
                rep.spent_mismatches += 1;
                rep.note(format!(
                    "{name}: spent {s}, the client saw {want_spent} acknowledged"
                ));
            }
            let mut want_held = 0u64;
            let mut ambiguous = false;
            let (mut open, mut expired) = (0, 0);
            for hr in holds_by_acct.get(&acct).map(Vec::as_slice).unwrap_or(&[]) {
                let ttl = Duration::from_millis(hr.ttl_ms);
                if after + SLACK < hr.sent + ttl {
                    want_held += hr.held();
                    open += 1;
                } else if before >= hr.acked + ttl + SLACK {
                    expired += 1;
                } else {
                    ambiguous = true;
                }
            }
            rep.holds_expected_open += open;
            rep.holds_expected_expired += expired;
            if ambiguous {
                rep.held_skipped += 1;
            } else if h != want_held as i64 {
                rep.held_mismatches += 1;
                rep.note(format!(
                    "{name}: held {h}, expected {want_held} ({open} holds open, {expired} expired)"
                ));
            }
        }
    }
    rep.mismatches = rep.conservation_failures
        + rep.granted_mismatches
        + rep.spent_mismatches
        + rep.held_mismatches
        + rep.read_errors
        + rep.retry_mismatches
        + rep.live_balance_failures;
    Ok(rep)
}
