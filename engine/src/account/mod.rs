//! One account: its buckets, holds, idempotency records, history and plan,
//! split by concern:
//!
//! - this module: the type, the terms and limits it runs under, and its
//!   invariants ([`Account::check`]);
//! - [`ledger`]: the buckets (add credits, take for a hold, spend, return);
//! - [`time`]: time-driven events (hold and bucket expiry, renewals);
//! - [`idempotency`]: what finished commands replied, and telling a retry
//!   from a conflict before anything is priced;
//! - [`holds`]: RESERVE, CAPTURE, COMMIT, RELEASE, EXTEND;
//! - [`credits`]: GRANT and DEBIT;
//! - [`plans`]: subscriptions, seats, add-ons, the end of a cycle;
//! - [`members`]: members' caps and usage per period (LIMIT, MEMBERS);
//! - [`alerts`]: low-balance thresholds and refusal-event stamps (ALERT);
//! - [`view`]: what BALANCE, ACCOUNT and HISTORY show.
//!
//! Everything here runs under the account's shard lock, synchronously, with
//! `now` passed in. Time-driven events happen lazily: every access first
//! calls [`Account::advance`], which applies all events due up to `now` in
//! order, stamped with their own instants. `next_due_ms` is a lower bound on
//! the next event, so the common case costs one comparison.
//!
//! Commands on an account assume the caller decided idempotency first (see
//! [`idempotency`]): `reserve`, `debit` and `grant` only ever see new ids.

pub mod alerts;
mod credits;
pub(crate) mod done_log;
mod holds;
mod idempotency;
mod ledger;
pub mod members;
pub mod plans;
mod time;
mod view;

pub use alerts::{Alerts, MAX_ALERTS};
pub use idempotency::{Done, GrantArgs, Recall};
pub use members::{Cap, Member, MemberView, Members, Per};
pub use view::{AccountView, Balance, HoldView};

use crate::bucket::{Bucket, NEVER};
use crate::history::History;
use crate::hold::Hold;
use crate::id::Id;
use crate::smallmap::SmallMap;
use done_log::DoneLog;
use plans::Subscription;
use serde::{Deserialize, Serialize};
use smallvec::SmallVec;

/// Upper bound on any account total, so sums of up to 10^15-credit grants
/// can never overflow. Every way credits arrive checks it in one place,
/// [`Account::check_room`]; renewals stop at it.
pub const MAX_TOTAL: u64 = 1_000_000_000_000_000_000;

/// The settings that shape an account's state beyond the command itself:
/// how long and how many idempotency records it keeps, and how much
/// history. Every journal record carries the terms it was applied under and
/// the account keeps those of its last record, so the time-driven events
/// between two records (expiries, renewals, forgetting ids) and a replay of
/// the journal give the same state whatever the config says today.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Terms {
    pub idempotency_window_ms: u64,
    pub max_ids: u32,
    pub history_len: u32,
}

impl Default for Terms {
    fn default() -> Self {
        Terms {
            idempotency_window_ms: 86_400_000,
            max_ids: 1_000_000,
            history_len: 1_000,
        }
    }
}

/// The limits an account enforces, from the config's settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    pub hold_ttl_ms: u64,
    pub max_holds: u32,
    pub max_buckets: u32,
    /// Members per account (LIMIT, MEMBER).
    pub max_members: u32,
    /// Alert thresholds per account.
    pub max_alerts: u32,
    /// What new records are made under (see [`Terms`]).
    pub terms: Terms,
}

/// Counters of time-driven events, for metrics.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Effects {
    pub hold_expiries: u64,
    pub bucket_expiries: u64,
    pub renewals: u64,
}

impl Effects {
    pub fn add(&mut self, other: Effects) {
        self.hold_expiries += other.hold_expiries;
        self.bucket_expiries += other.bucket_expiries;
        self.renewals += other.renewals;
    }

    pub fn is_none(&self) -> bool {
        *self == Effects::default()
    }
}

/// What an operation did: changed state (journal it) or repeated an earlier reply.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Applied {
    Changed(u64),
    Repeated(u64),
}

/// Per-call context.
pub struct Ctx {
    pub now_ms: u64,
    pub limits: Limits,
    /// Replaying the journal: limits that may have changed since are not re-checked.
    pub replay: bool,
}

/// One account's whole state.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Account {
    /// The account's own id (the engine's table finds accounts by it). Not
    /// stored: snapshots and Redis keep it beside the account.
    #[serde(skip)]
    pub(crate) key: Id,
    pub(crate) bal: Balance,
    /// Buckets in spending order. Holds every bucket with credits left, plus
    /// emptied or expired ones that open holds still reference.
    /// The first bucket is stored inline: most accounts have one, and it is
    /// touched by every charge (one cache miss less per command).
    pub(crate) buckets: SmallVec<[Bucket; 1]>,
    pub(crate) holds: SmallMap<Id, Hold>,
    /// Idempotency records, oldest first.
    pub(crate) done: DoneLog,
    pub(crate) history: History,
    pub(crate) next_bucket_seq: u64,
    /// Lower bound on the instant of the next time-driven event.
    pub(crate) next_due_ms: u64,
    /// The earliest instant the engine's sweeper queue holds for this
    /// account ([`NEVER`]: not queued). Invariant: whenever `next_due_ms`
    /// is not NEVER, an entry at or before it is queued. Not stored: the
    /// queue is rebuilt on load.
    #[serde(skip, default = "never")]
    pub(crate) queued_due_ms: u64,
    /// Latest instant this account has seen: its time never runs backwards.
    pub(crate) last_now_ms: u64,
    /// The last journal record applied to this account (replay skips older ones).
    pub applied_seq: u64,
    /// The terms of that record: time-driven events run under them.
    pub(crate) terms: Terms,
    pub(crate) subscription: Option<Box<Subscription>>,
    /// Members with a cap, usage or holds (`None`: none; most accounts).
    pub(crate) members: Option<Box<Members>>,
    /// Low-balance thresholds and refusal-event stamps (`None`: none).
    pub(crate) alerts: Option<Box<Alerts>>,
}

fn never() -> u64 {
    NEVER
}

impl Account {
    pub fn new() -> Self {
        Account {
            next_due_ms: NEVER,
            queued_due_ms: NEVER,
            ..Default::default()
        }
    }

    /// A new account that knows its id (the engine's table finds it by it).
    pub(crate) fn with_key(key: Id) -> Self {
        Account {
            key,
            ..Account::new()
        }
    }

    /// The account's id.
    pub fn key(&self) -> &Id {
        &self.key
    }

    /// Effective now for this account: never earlier than anything it has seen.
    #[inline]
    pub fn clamp_now(&mut self, now_ms: u64) -> u64 {
        if now_ms > self.last_now_ms {
            self.last_now_ms = now_ms;
        }
        self.last_now_ms
    }

    pub fn next_due_ms(&self) -> u64 {
        self.next_due_ms
    }

    /// Does the sweeper queue need an entry at `due_ms` (earlier than the
    /// one queued)? If so it is recorded as queued: the caller pushes it.
    #[inline]
    pub(crate) fn queue_due(&mut self, due_ms: u64) -> bool {
        if due_ms < self.queued_due_ms {
            self.queued_due_ms = due_ms;
            true
        } else {
            false
        }
    }

    pub fn open_holds(&self) -> usize {
        self.holds.len()
    }

    /// Reads a word from each part of the account a command touches (its
    /// balance, first bucket, holds, idempotency log and history), so that a
    /// batch of such reads keeps many cache misses in flight at once
    /// ([`crate::Engine::prefetch`]). The value means nothing.
    #[inline]
    pub fn touch(&self) -> u64 {
        self.bal.available
            ^ self.buckets.first().map_or(0, |b| b.remaining)
            ^ self.holds.touch(|_, h| h.amount)
            ^ self.done.touch()
            ^ self.history.touch()
            ^ self.next_due_ms
    }

    /// Does the account hold anything worth keeping? (An account that a failed
    /// command created in passing is dropped again.)
    pub fn is_blank(&self) -> bool {
        self.bal == Balance::default()
            && self.buckets.is_empty()
            && self.holds.is_empty()
            && self.done.is_empty()
            && self.history.is_empty()
            && self.subscription.is_none()
            && self.members.is_none()
            && self.alerts.is_none()
    }

    /// Checks every invariant; used after each operation in debug builds and
    /// on every account during recovery.
    pub fn check(&self) -> std::result::Result<(), String> {
        let b = self.bal;
        let sum = b
            .available
            .checked_add(b.held)
            .and_then(|s| s.checked_add(b.spent))
            .and_then(|s| s.checked_add(b.expired));
        if sum != Some(b.granted) {
            return Err(format!(
                "conservation broken: granted {} != available {} + held {} + spent {} + expired {}",
                b.granted, b.available, b.held, b.spent, b.expired
            ));
        }
        if b.granted > MAX_TOTAL {
            return Err(format!("granted {} is past 10^18", b.granted));
        }
        let in_buckets: u64 = self.buckets.iter().map(|b| b.remaining).sum();
        if in_buckets != b.available {
            return Err(format!(
                "available {} != credits in buckets {in_buckets}",
                b.available
            ));
        }
        let in_holds: u64 = self.holds.values().map(|h| h.held()).sum();
        if in_holds != b.held {
            return Err(format!("held {} != credits in holds {in_holds}", b.held));
        }
        let ordered = self
            .buckets
            .windows(2)
            .all(|w| w[0].order_key() < w[1].order_key());
        if !ordered {
            return Err("buckets out of spending order".into());
        }
        for bucket in &self.buckets {
            let refs = self
                .holds
                .values()
                .flat_map(|h| h.portions.iter())
                .filter(|p| p.bucket_seq == bucket.seq)
                .count();
            if refs != bucket.held_refs as usize {
                return Err(format!(
                    "bucket {} has {} refs, holds reference it {refs} times",
                    bucket.seq, bucket.held_refs
                ));
            }
            if bucket.remaining == 0 && bucket.held_refs == 0 {
                return Err(format!("bucket {} is empty and unreferenced", bucket.seq));
            }
        }
        self.done.check()?;
        self.check_members()?;
        self.check_alerts()?;
        Ok(())
    }
}
