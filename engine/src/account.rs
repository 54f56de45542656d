//! One account: its buckets, holds, idempotency records, history and plan.
//!
//! Everything here runs under the account's shard lock, synchronously, with
//! `now` passed in. Time-driven events (hold expiry, bucket expiry, renewals)
//! happen lazily: every access first calls [`Account::advance`], which applies
//! all events due up to `now` in chronological order, stamped with their own
//! instants. `next_due_ms` is a lower bound on the next event, so the common
//! case costs one comparison.

use crate::bucket::{Bucket, BucketKind, NEVER};
use crate::command::{Charge, Expiry, Usage};
use crate::done::{DoneLog, Kind};
use crate::error::{Code, EngineError, IdOf, Result};
use crate::history::{History, HistoryEntry, Op};
use crate::hold::{ChargeArgs, ClosedHold, Hold, HoldOutcome, Portion};
use crate::id::Id;
use crate::plan::Subscription;
use crate::pricing::SkuPrice;
use crate::smallmap::SmallMap;
use crate::MAX_AMOUNT;
use serde::{Deserialize, Serialize};
use smallvec::SmallVec;
use std::collections::HashMap;
use std::sync::Arc;

pub(crate) type Map<K, V> = HashMap<K, V, foldhash::fast::RandomState>;

/// Bound on event rounds in one `advance` (a dormant account with a monthly
/// plan needs one round per missed cycle; 100 years is 1,200).
const MAX_EVENT_ROUNDS: usize = 10_000_000;

/// Upper bound on any account total, so sums of up to 10^15-credit grants can never overflow.
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
    /// What new records are made under (see [`Terms`]).
    pub terms: Terms,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            hold_ttl_ms: 900_000,
            max_holds: 10_000,
            max_buckets: 1_000,
            terms: Terms::default(),
        }
    }
}

/// Counters of time-driven events, for metrics.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Effects {
    pub hold_expiries: u64,
    pub bucket_expiries: u64,
    pub renewals: u64,
}

/// What an operation did: changed state (journal it) or repeated an earlier reply.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Applied {
    Changed(u64),
    Repeated(u64),
}

impl Applied {
    pub fn reply(self) -> u64 {
        match self {
            Applied::Changed(r) | Applied::Repeated(r) => r,
        }
    }
}

/// Per-call context.
pub struct Ctx<'a> {
    pub now_ms: u64,
    pub limits: &'a Limits,
    /// Replaying the journal: limits that may have changed since are not re-checked.
    pub replay: bool,
    pub effects: &'a mut Effects,
}

/// What an idempotency record remembers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Done {
    Grant { args: GrantArgs, reply: u64 },
    Debit { args: ChargeArgs, reply: u64 },
    Hold(ClosedHold),
}

/// GRANT's arguments as given (TTL unresolved), to tell a retry from a conflict.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct GrantArgs {
    pub amount: u64,
    pub kind: BucketKind,
    pub expiry: Expiry,
    pub priority: u8,
}

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

/// A resolved charge: the credits and, for skus, the price used.
pub struct Priced {
    pub amount: u64,
    pub args: ChargeArgs,
    pub price: Option<Arc<SkuPrice>>,
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
}

fn never() -> u64 {
    NEVER
}

fn insufficient(need: u64, available: u64) -> EngineError {
    EngineError::insufficient(need, available)
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

    pub fn balance(&self) -> Balance {
        self.bal
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

    /// Does the account hold anything worth keeping? (An account that a failed
    /// command created in passing is dropped again.)
    pub fn is_blank(&self) -> bool {
        self.bal == Balance::default()
            && self.buckets.is_empty()
            && self.holds.is_empty()
            && self.done.is_empty()
            && self.history.is_empty()
            && self.subscription.is_none()
    }

    // ----- history and idempotency records -----

    pub(crate) fn log(
        &mut self,
        terms: Terms,
        at_ms: u64,
        op: Op,
        id: impl AsRef<[u8]>,
        amount: u64,
    ) {
        let cap = terms.history_len.max(1) as usize;
        self.history.push(cap, at_ms, op, id.as_ref(), amount);
    }

    #[inline]
    fn lookup_done(&self, kind: Kind, id: &[u8]) -> Option<&Done> {
        self.done.get(kind, id)
    }

    /// Keeps `record` for the idempotency window (its namespace is its variant).
    fn remember(&mut self, terms: Terms, now_ms: u64, id: Id, record: Done) {
        // Bounded memory: past the cap the oldest record goes early (documented).
        let cap = terms.max_ids.max(1) as usize;
        self.done.pop_while(|_, len| len >= cap);
        self.done.push(now_ms, id, record);
        let prune_at = now_ms.saturating_add(terms.idempotency_window_ms);
        self.next_due_ms = self.next_due_ms.min(prune_at);
    }

    fn prune_done(&mut self, now_ms: u64, window_ms: u64) {
        self.done
            .pop_while(|r, _| r.finished_ms.saturating_add(window_ms) <= now_ms);
    }

    // ----- buckets -----

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
    pub(crate) fn add_credits(
        &mut self,
        id: Id,
        kind: BucketKind,
        amount: u64,
        expires_at_ms: u64,
        priority: u8,
        from_plan: bool,
    ) {
        if amount == 0 {
            return;
        }
        assert!(
            self.bal.granted.saturating_add(amount) <= MAX_TOTAL,
            "callers keep totals within MAX_TOTAL"
        );
        self.bal.available += amount;
        self.bal.granted += amount;
        if from_plan {
            if let Some(b) = self.buckets.iter_mut().find(|b| {
                b.from_plan
                    && b.kind == kind
                    && b.expires_at_ms == expires_at_ms
                    && b.priority == priority
            }) {
                b.remaining += amount;
                if expires_at_ms != NEVER {
                    self.next_due_ms = self.next_due_ms.min(expires_at_ms);
                }
                return;
            }
        }
        self.next_bucket_seq += 1;
        let seq = self.next_bucket_seq;
        self.insert_bucket(Bucket {
            id,
            seq,
            kind,
            remaining: amount,
            expires_at_ms,
            priority,
            held_refs: 0,
            from_plan,
        });
    }

    /// Drops buckets that can never matter again: empty and unreferenced.
    fn drop_empty_buckets(&mut self) {
        self.buckets.retain(|b| b.remaining > 0 || b.held_refs > 0);
    }

    /// Takes `amount` from available credits in spending order, for a hold.
    fn take_for_hold(&mut self, amount: u64) -> SmallVec<[Portion; 2]> {
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
    fn spend_available(&mut self, amount: u64) {
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
    fn spend_portions(&mut self, portions: &mut SmallVec<[Portion; 2]>, amount: u64) {
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
    fn return_portions(
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

    // ----- time -----

    /// Applies every time-driven event due up to `now_ms`.
    /// Runs under the terms of the account's last journal record, never
    /// today's config: replay must reach the same state.
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
        self.prune_done(now_ms, terms.idempotency_window_ms);
        let mut next = self.next_bucket_or_cycle_ms();
        for h in self.holds.values() {
            next = next.min(h.expires_at_ms);
        }
        if let Some(front) = self.done.front() {
            next = next.min(
                front
                    .finished_ms
                    .saturating_add(terms.idempotency_window_ms),
            );
        }
        self.next_due_ms = next;
    }

    fn expire_hold(&mut self, terms: Terms, id: &Id, at_ms: u64) {
        let hold = self.holds.remove(id).expect("due hold is open");
        let held = hold.held();
        self.return_portions(terms, &hold.portions, at_ms);
        self.log(terms, at_ms, Op::ExpireHold, id, held);
        let closed = ClosedHold {
            charge: hold.charge,
            ttl_given: hold.ttl_given,
            amount: hold.amount,
            captured: hold.captured,
            outcome: HoldOutcome::Expired,
        };
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

    // ----- commands -----

    pub fn grant(&mut self, ctx: &mut Ctx, grant_id: &[u8], args: GrantArgs) -> Result<Applied> {
        if let Some(done) = self.lookup_done(Kind::Grant, grant_id) {
            return match done {
                Done::Grant { args: a, reply } if *a == args => Ok(Applied::Repeated(*reply)),
                _ => Err(EngineError::id_reused(IdOf::Grant)),
            };
        }
        debug_assert!(args.amount <= MAX_AMOUNT);
        let now = ctx.now_ms;
        let expires_at_ms = match args.expiry {
            Expiry::Never => NEVER,
            Expiry::At(at) => at,
            Expiry::Ttl(ttl) => now.saturating_add(ttl),
        };
        if expires_at_ms <= now {
            return Err(EngineError::invalid("the grant would expire at once"));
        }
        if self.bal.granted.saturating_add(args.amount) > MAX_TOTAL {
            return Err(EngineError::invalid("account total would exceed 10^18"));
        }
        if !ctx.replay && self.buckets.len() >= ctx.limits.max_buckets as usize {
            return Err(EngineError::invalid(format!(
                "too many buckets on this account (limit {})",
                ctx.limits.max_buckets
            )));
        }
        let id = Id::new(grant_id);
        self.add_credits(
            id.clone(),
            args.kind,
            args.amount,
            expires_at_ms,
            args.priority,
            false,
        );
        self.log(ctx.limits.terms, now, Op::Grant, &id, args.amount);
        let reply = self.bal.available;
        self.remember(
            ctx.limits.terms,
            ctx.now_ms,
            id,
            Done::Grant { args, reply },
        );
        Ok(Applied::Changed(reply))
    }

    /// Is a priced command for `feature` allowed by the account's plan?
    pub fn entitled(&self, feature: &str) -> bool {
        self.active_subscription()
            .is_none_or(|s| s.terms.includes(feature))
    }

    /// RESERVE. `price` resolves the charge (entitlement, rate card) only
    /// once the id is known to be new: a retry repeats its first reply even
    /// if a plan change or CONFIG RELOAD would refuse the command now.
    /// `ttl_ms` is the hold's TTL; `ttl_given` the one the client sent, if
    /// any: a retry is told from a conflict by what the client sent, so one
    /// without TTL repeats even if the configured default changed since.
    pub fn reserve(
        &mut self,
        ctx: &mut Ctx,
        hold_id: &[u8],
        request: Charge,
        (ttl_ms, ttl_given): (u64, Option<u64>),
        price: impl FnOnce(&Account) -> Result<Priced>,
    ) -> Result<Applied> {
        let same_ttl = |held: Option<u64>| held == ttl_given;
        if let Some(h) = self.holds.get(hold_id) {
            return if h.charge.matches(&request) && same_ttl(h.ttl_given) {
                Ok(Applied::Repeated(h.amount))
            } else {
                Err(EngineError::id_reused(IdOf::Hold))
            };
        }
        if let Some(done) = self.lookup_done(Kind::Hold, hold_id) {
            return match done {
                Done::Hold(c) if c.charge.matches(&request) && same_ttl(c.ttl_given) => {
                    Ok(Applied::Repeated(c.amount))
                }
                _ => Err(EngineError::id_reused(IdOf::Hold)),
            };
        }
        if !ctx.replay && self.holds.len() >= ctx.limits.max_holds as usize {
            return Err(EngineError::invalid(format!(
                "too many open holds on this account (limit {})",
                ctx.limits.max_holds
            )));
        }
        let charge = price(self)?;
        let amount = charge.amount;
        if amount > self.bal.available {
            return Err(insufficient(amount, self.bal.available));
        }
        let portions = self.take_for_hold(amount);
        let expires_at_ms = ctx.now_ms.saturating_add(ttl_ms);
        self.next_due_ms = self.next_due_ms.min(expires_at_ms);
        let id = Id::new(hold_id);
        self.holds.insert(
            id.clone(),
            Hold {
                charge: charge.args,
                ttl_given,
                amount,
                captured: 0,
                portions,
                expires_at_ms,
                price: charge.price,
            },
        );
        self.log(ctx.limits.terms, ctx.now_ms, Op::Reserve, id, amount);
        Ok(Applied::Changed(amount))
    }

    /// The error for a command on a hold that is not open.
    fn closed_hold_error(&self, hold_id: &[u8], verb: &str) -> EngineError {
        match self.lookup_done(Kind::Hold, hold_id) {
            Some(Done::Hold(c)) => match c.outcome {
                HoldOutcome::Expired => EngineError::new(Code::Expired, "the hold expired"),
                HoldOutcome::Committed { .. } => {
                    EngineError::conflict(format!("cannot {verb}: the hold was committed"))
                }
                HoldOutcome::Released { .. } => {
                    EngineError::conflict(format!("cannot {verb}: the hold was released"))
                }
            },
            _ => EngineError::not_found("no such hold"),
        }
    }

    fn usage_total(hold: &Hold, usage: Usage) -> Result<u64> {
        match usage {
            Usage::Total(n) => Ok(n),
            Usage::Qty(q) => {
                let price = hold
                    .price
                    .as_ref()
                    .ok_or_else(|| EngineError::invalid("QTY needs a hold made with SKU"))?;
                price
                    .cost(q)
                    .map_err(|_| EngineError::invalid("amount out of range"))
            }
        }
    }

    /// Settles `delta` more credits of a hold: from what it holds, then the
    /// excess from available. Checks first, so a refusal changes nothing.
    fn settle(&mut self, hold: &mut Hold, delta: u64) -> Result<()> {
        let held = hold.held();
        let from_hold = delta.min(held);
        let excess = delta - from_hold;
        if excess > self.bal.available {
            return Err(insufficient(excess, self.bal.available));
        }
        if from_hold > 0 {
            let mut portions = std::mem::take(&mut hold.portions);
            self.spend_portions(&mut portions, from_hold);
            hold.portions = portions;
        }
        if excess > 0 {
            self.spend_available(excess);
        }
        Ok(())
    }

    pub fn capture(&mut self, ctx: &mut Ctx, hold_id: &[u8], usage: Usage) -> Result<Applied> {
        // The hold's own key is reused below: no allocation per capture.
        let Some((id, mut hold)) = self.holds.remove_entry(hold_id) else {
            return Err(self.closed_hold_error(hold_id, "capture"));
        };
        let result = (|| {
            let total = Self::usage_total(&hold, usage)?;
            if total <= hold.captured {
                return Ok(Applied::Repeated(hold.captured));
            }
            let delta = total - hold.captured;
            self.settle(&mut hold, delta)?;
            hold.captured = total;
            Ok(Applied::Changed(delta))
        })();
        let captured = hold.captured;
        self.holds.insert(id.clone(), hold);
        match result? {
            Applied::Changed(delta) => {
                self.log(ctx.limits.terms, ctx.now_ms, Op::Capture, id, delta);
                Ok(Applied::Changed(captured))
            }
            repeated => Ok(repeated),
        }
    }

    pub fn commit(
        &mut self,
        ctx: &mut Ctx,
        hold_id: &[u8],
        usage: Option<Usage>,
    ) -> Result<Applied> {
        let Some((id, mut hold)) = self.holds.remove_entry(hold_id) else {
            if let Some(Done::Hold(c)) = self.lookup_done(Kind::Hold, hold_id) {
                if let HoldOutcome::Committed { usage: u, total } = c.outcome {
                    return if u == usage {
                        Ok(Applied::Repeated(total))
                    } else {
                        Err(EngineError::conflict(
                            "the hold was committed with other arguments",
                        ))
                    };
                }
            }
            return Err(self.closed_hold_error(hold_id, "commit"));
        };
        let settled = (|| {
            let total = match usage {
                None => hold.amount,
                Some(u) => Self::usage_total(&hold, u)?,
            };
            let final_total = total.max(hold.captured);
            let delta = final_total - hold.captured;
            self.settle(&mut hold, delta)?;
            Ok(final_total)
        })();
        let final_total = match settled {
            Ok(t) => t,
            Err(e) => {
                self.holds.insert(id, hold);
                return Err(e);
            }
        };
        let portions = std::mem::take(&mut hold.portions);
        self.return_portions(ctx.limits.terms, &portions, ctx.now_ms);
        self.log(ctx.limits.terms, ctx.now_ms, Op::Commit, &id, final_total);
        let closed = ClosedHold {
            charge: hold.charge,
            ttl_given: hold.ttl_given,
            amount: hold.amount,
            captured: final_total,
            outcome: HoldOutcome::Committed {
                usage,
                total: final_total,
            },
        };
        self.remember(ctx.limits.terms, ctx.now_ms, id, Done::Hold(closed));
        Ok(Applied::Changed(final_total))
    }

    pub fn release(&mut self, ctx: &mut Ctx, hold_id: &[u8]) -> Result<Applied> {
        let Some((id, hold)) = self.holds.remove_entry(hold_id) else {
            return match self.lookup_done(Kind::Hold, hold_id) {
                Some(Done::Hold(c)) => match c.outcome {
                    HoldOutcome::Released { returned } => Ok(Applied::Repeated(returned)),
                    HoldOutcome::Expired => Ok(Applied::Repeated(0)),
                    HoldOutcome::Committed { .. } => Err(EngineError::conflict(
                        "cannot release: the hold was committed",
                    )),
                },
                _ => Err(EngineError::not_found("no such hold")),
            };
        };
        let returned = self.return_portions(ctx.limits.terms, &hold.portions, ctx.now_ms);
        self.log(ctx.limits.terms, ctx.now_ms, Op::Release, &id, returned);
        let closed = ClosedHold {
            charge: hold.charge,
            ttl_given: hold.ttl_given,
            amount: hold.amount,
            captured: hold.captured,
            outcome: HoldOutcome::Released { returned },
        };
        self.remember(ctx.limits.terms, ctx.now_ms, id, Done::Hold(closed));
        Ok(Applied::Changed(returned))
    }

    pub fn extend(&mut self, ctx: &mut Ctx, hold_id: &[u8], ttl_ms: u64) -> Result<Applied> {
        let Some(hold) = self.holds.get_mut(hold_id) else {
            return Err(self.closed_hold_error(hold_id, "extend"));
        };
        hold.expires_at_ms = ctx.now_ms.saturating_add(ttl_ms);
        let at = hold.expires_at_ms;
        self.next_due_ms = self.next_due_ms.min(at);
        Ok(Applied::Changed(at))
    }

    /// DEBIT. `price` as for [`Account::reserve`]: only for a new id.
    pub fn debit(
        &mut self,
        ctx: &mut Ctx,
        debit_id: &[u8],
        request: Charge,
        price: impl FnOnce(&Account) -> Result<Priced>,
    ) -> Result<Applied> {
        if let Some(done) = self.lookup_done(Kind::Debit, debit_id) {
            return match done {
                Done::Debit { args, reply } if args.matches(&request) => {
                    Ok(Applied::Repeated(*reply))
                }
                _ => Err(EngineError::id_reused(IdOf::Debit)),
            };
        }
        let charge = price(self)?;
        if charge.amount > self.bal.available {
            return Err(insufficient(charge.amount, self.bal.available));
        }
        self.spend_available(charge.amount);
        let id = Id::new(debit_id);
        self.log(ctx.limits.terms, ctx.now_ms, Op::Debit, &id, charge.amount);
        self.remember(
            ctx.limits.terms,
            ctx.now_ms,
            id,
            Done::Debit {
                args: charge.args,
                reply: charge.amount,
            },
        );
        Ok(Applied::Changed(charge.amount))
    }

    // ----- reads -----

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
        Ok(())
    }
}

/// Resolves a charge against a price: credits and remembered arguments.
pub fn price_charge(charge: Charge, price: Option<(Arc<str>, Arc<SkuPrice>)>) -> Result<Priced> {
    match (charge, price) {
        (Charge::Amount(amount), _) => Ok(Priced {
            amount,
            args: ChargeArgs::Amount(amount),
            price: None,
        }),
        (Charge::Sku { qty, .. }, Some((name, price))) => {
            let amount = price
                .cost(qty)
                .map_err(|_| EngineError::invalid("amount out of range"))?;
            Ok(Priced {
                amount,
                args: ChargeArgs::Sku { sku: name, qty },
                price: Some(price),
            })
        }
        (Charge::Sku { sku, .. }, None) => {
            Err(EngineError::not_found(format!("no such sku '{sku}'")))
        }
    }
}
