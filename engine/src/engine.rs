//! The engine: accounts sharded across independently locked shards.
//!
//! One command touches one account, so it locks one shard, applies, appends
//! its journal record while still holding the lock (so the journal's order
//! per account is the order of application), and unlocks. The lock is held
//! for well under a microsecond: no I/O, no allocation beyond the new ids.
//!
//! - [`catalog`]: the config as the engine uses it;
//! - `apply`: one mutation's checks, inputs and application;
//! - `shard`: a shard and the one way to touch an account in it;
//! - `table`: a shard's account table;
//! - `recovery`: replay, snapshots, restore;
//! - `sink`: where journal records go.

use crate::account::{Account, AccountView, Applied, Balance, Ctx, MemberView};
use crate::clock::Clock;
use crate::command::{LowEvents, Mutation, Record};
use crate::config::Config;
use crate::error::{Code, EngineError, Result};
use crate::events::{
    refusal_event, Event, EventBounds, EventKind, EventLog, Refused, REFUSAL_EVENT_INTERVAL_MS,
};
use crate::history::HistoryEntry;
use crate::id::{Bytes, Id};
use crate::slot::{slot_of, SLOTS};
use crate::MAX_AMOUNT;
use parking_lot::{Mutex, RwLock, RwLockReadGuard};
use std::borrow::Cow;
use std::sync::atomic::AtomicU64;
use std::sync::Arc;

mod apply;
pub mod catalog;
mod prefetch;
mod recovery;
mod shard;
mod sink;
mod table;

pub use apply::MAX_HOLD_TTL_MS;
pub use catalog::Catalog;
pub use prefetch::MAX_PREFETCH;
pub use sink::{JournalSink, MemoryJournal};

use apply::{apply, validate, Resolved};
use shard::{Find, Shard, Step};

/// What a successful mutation returns: the reply, and the journal sequence
/// number the reply must wait for (the record itself, or for a repeat, the
/// account's latest record: the original might not be on disk yet).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Outcome {
    pub reply: u64,
    pub wait_seq: u64,
    pub changed: bool,
}

/// Engine-wide counters (summed over shards on demand).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct EngineStats {
    pub accounts: u64,
    pub open_holds: u64,
    pub hold_expiries: u64,
    pub bucket_expiries: u64,
    pub renewals: u64,
}

#[repr(align(128))]
struct Padded<T>(T);

/// The engine. Cheap to share: all methods take `&self`.
pub struct Engine {
    shards: Box<[Padded<Mutex<Shard>>]>,
    clock: Arc<dyn Clock>,
    catalog: RwLock<Arc<Catalog>>,
    journal: Arc<dyn JournalSink>,
    track_dirty: bool,
    /// Accounts in all shards (bounded by `Catalog::max_accounts` for new ones).
    accounts: AtomicU64,
    /// Events raised, numbered; locked after a shard, never before one.
    events: Mutex<EventLog>,
}

/// Number of shards: a power of two well above the core count, so two
/// threads rarely meet on one lock.
pub const DEFAULT_SHARDS: usize = 256;

impl Engine {
    pub fn new(config: Config, clock: Arc<dyn Clock>, journal: Arc<dyn JournalSink>) -> Self {
        Self::with_shards(config, clock, journal, DEFAULT_SHARDS)
    }

    pub fn with_shards(
        config: Config,
        clock: Arc<dyn Clock>,
        journal: Arc<dyn JournalSink>,
        shards: usize,
    ) -> Self {
        assert!(shards.is_power_of_two(), "shard count is a power of two");
        assert!(shards <= usize::from(SLOTS), "a slot lives in one shard");
        Engine {
            shards: (0..shards)
                .map(|_| Padded(Mutex::new(Shard::new(false))))
                .collect(),
            clock,
            catalog: RwLock::new(Arc::new(Catalog::new(config))),
            journal,
            track_dirty: false,
            accounts: AtomicU64::new(0),
            events: Mutex::new(EventLog::new()),
        }
    }

    /// Track changed accounts for [`Engine::take_dirty`] (write-behind).
    pub fn track_dirty(mut self, on: bool) -> Self {
        self.track_dirty = on;
        for shard in self.shards.iter_mut() {
            *shard.0.get_mut() = Shard::new(on);
        }
        self
    }

    /// The shard of an account: the one of its hash slot, so every account
    /// of a slot lives in one shard.
    #[inline]
    fn shard_of(&self, account: &[u8]) -> &Mutex<Shard> {
        self.shard_of_slot(slot_of(account))
    }

    #[inline]
    fn shard_of_slot(&self, slot: u16) -> &Mutex<Shard> {
        &self.shards[usize::from(slot) & (self.shards.len() - 1)].0
    }

    pub fn shard_count(&self) -> usize {
        self.shards.len()
    }

    pub fn catalog(&self) -> RwLockReadGuard<'_, Arc<Catalog>> {
        self.catalog.read()
    }

    /// CONFIG RELOAD: new prices and plans for new operations. Holds keep
    /// their price and subscriptions their terms.
    pub fn set_config(&self, config: Config) {
        *self.catalog.write() = Arc::new(Catalog::new(config));
    }

    pub fn now_ms(&self) -> u64 {
        self.clock.now_ms()
    }

    /// QUOTE: what `qty` of `sku` costs now.
    pub fn quote(&self, sku: &str, qty: u64) -> Result<u64> {
        if qty > MAX_AMOUNT {
            return Err(EngineError::invalid("argument out of range"));
        }
        let (_, price) = self
            .catalog()
            .sku(sku)
            .ok_or_else(|| EngineError::not_found(format!("no such sku '{sku}'")))?;
        price
            .cost(qty)
            .map_err(|_| EngineError::invalid("amount out of range"))
    }

    /// Applies one mutating command to `account` and journals it.
    pub fn execute(&self, account: &[u8], m: &Mutation) -> Result<Outcome> {
        validate(account, m)?;
        if !self.journal.has_capacity() {
            return Err(EngineError::busy(
                "the journal is behind its bound, retry later",
            ));
        }
        // Today's catalog, read once and released before the shard lock.
        let (resolved, default_ttl_ms, limits, max_accounts, bounds) = {
            let cat = self.catalog.read();
            let (resolved, default_ttl_ms) = Resolved::from_catalog(&cat, m)?;
            let bounds = cat.event_bounds;
            (
                resolved,
                default_ttl_ms,
                cat.limits,
                cat.max_accounts,
                bounds,
            )
        };
        let find = Find::OrCreate {
            count: &self.accounts,
            max: max_accounts,
        };
        let now_ms = self.clock.now_ms();
        let mut shard = self.shard_of(account).lock();
        let outcome = shard.visit(account, Some(now_ms), find, |acct, step| {
            let ctx = Ctx {
                now_ms: step.now_ms,
                limits,
                replay: false,
            };
            let reply = match apply(acct, &ctx, m, &resolved) {
                Ok(Applied::Repeated(reply)) => {
                    return Ok(Outcome {
                        reply,
                        wait_seq: acct.applied_seq,
                        changed: false,
                    })
                }
                Ok(Applied::Changed(reply)) => reply,
                Err(e) => return Err(self.refused(acct, step, account, m, e, bounds)),
            };
            let mut crossed = Vec::new();
            let available = acct.raise_low(&mut crossed);
            // Numbered and journaled under the log's lock when the change
            // raised events: the journal then holds event-raising records in
            // the order of their numbers. Most changes raise none.
            let mut log = (!crossed.is_empty()).then(|| self.events.lock());
            let events = LowEvents {
                first: log.as_ref().map_or(0, |l| l.next_seq()),
                available: if crossed.is_empty() { 0 } else { available },
                thresholds: crossed,
            };
            let record = Record::Apply {
                at_ms: step.now_ms,
                account: Bytes(account),
                mutation: *m,
                // What the command was decided under.
                price: resolved.price.as_ref().map(|(_, p)| Cow::Borrowed(&**p)),
                plan: resolved.plan.as_deref().map(Cow::Borrowed),
                terms: limits.terms,
                default_ttl_ms,
                events,
            };
            let seq = self.journal.append(&mut |buf| record.encode(buf));
            if let (Some(log), Record::Apply { events, .. }) = (log.as_mut(), &record) {
                log.push_low(account, events, step.now_ms, seq, bounds);
            }
            drop(log);
            acct.applied_seq = seq;
            acct.terms = limits.terms;
            step.changed = true;
            Ok(Outcome {
                reply,
                wait_seq: seq,
                changed: true,
            })
        })?;
        outcome.expect("the account was found or created")
    }

    /// A refused command on an existing account raises an `insufficient`
    /// or `limited` event, at most one a minute per account (and member):
    /// the event is journaled, and the refusal's reply waits for it.
    fn refused(
        &self,
        acct: &mut Account,
        step: &mut Step,
        account: &[u8],
        m: &Mutation,
        mut e: EngineError,
        bounds: EventBounds,
    ) -> EngineError {
        let kind = match e.code {
            Code::Insufficient => EventKind::Insufficient,
            Code::Limited => EventKind::Limited,
            _ => return e,
        };
        let member: Option<Id> = match *m {
            Mutation::Reserve { member, .. } | Mutation::Debit { member, .. } => {
                member.map(|b| Id::new(b.0))
            }
            Mutation::Capture { hold_id, .. } | Mutation::Commit { hold_id, .. } => {
                acct.holds.get(hold_id.0).and_then(|h| h.member.clone())
            }
            _ => return e,
        };
        // An account the command would have created is not there to alert.
        let member_bytes = member.as_deref();
        if acct.is_blank()
            || !acct.stamp_refusal(kind, member_bytes, step.now_ms, REFUSAL_EVENT_INTERVAL_MS)
        {
            return e;
        }
        let refused = Refused {
            kind,
            member: member_bytes.map(Bytes),
            need: e.need().unwrap_or(0),
        };
        let mut log = self.events.lock();
        let event_seq = log.next_seq();
        let record = Record::Refused {
            at_ms: step.now_ms,
            account: Bytes(account),
            refused,
            event_seq,
        };
        let seq = self.journal.append(&mut |buf| record.encode(buf));
        let mut event = refusal_event(account, step.now_ms, &refused, event_seq);
        event.journal_seq = seq;
        log.push(event, step.now_ms, bounds);
        acct.applied_seq = seq;
        step.changed = true;
        e.wait_seq = seq;
        e
    }

    /// EVENTS: up to `count` events numbered above `after`, oldest first,
    /// and the journal seq the reply must wait for.
    pub fn events_after(&self, after: u64, count: usize) -> (Vec<Event>, u64) {
        self.events.lock().after(after, count)
    }

    /// Numbers new events from `next_seq` at least (recovery: the Redis
    /// stream already holds the events below it).
    pub fn raise_event_floor(&self, next_seq: u64) {
        self.events.lock().raise_floor(next_seq);
    }

    /// Events kept, the next event's number, and events the bounds dropped.
    pub fn event_stats(&self) -> (usize, u64, u64) {
        let log = self.events.lock();
        (log.len(), log.next_seq(), log.dropped())
    }

    /// MEMBERS of an account, as of now, and the seq its reply waits for.
    pub fn members(&self, account: &[u8]) -> (Vec<MemberView>, u64) {
        self.read(account, |a| a.members_view())
    }

    /// Runs `f` on an account brought up to now (time-driven events applied),
    /// or on a blank account if it doesn't exist. Also returns the account's
    /// last journal seq: a reply that shows the state waits until it is
    /// durable, so no client sees a change that could still be lost.
    pub fn read<T>(&self, account: &[u8], f: impl FnOnce(&Account) -> T) -> (T, u64) {
        let now_ms = self.clock.now_ms();
        let mut shard = self.shard_of(account).lock();
        let mut f = Some(f);
        let found = shard.visit(account, Some(now_ms), Find::Existing, |acct, _| {
            let f = f.take().expect("called once");
            (f(acct), acct.applied_seq)
        });
        drop(shard);
        match found {
            Ok(Some(out)) => out,
            _ => (f.take().expect("not called")(&Account::new()), 0),
        }
    }

    pub fn balance(&self, account: &[u8]) -> Balance {
        self.read(account, |a| a.balance()).0
    }

    pub fn account(&self, account: &[u8]) -> AccountView {
        self.read(account, |a| a.view()).0
    }

    pub fn history(&self, account: &[u8], count: usize) -> Vec<HistoryEntry> {
        self.read(account, |a| a.history(count)).0
    }

    /// Applies due time-driven events to at most `budget` accounts, in due
    /// order, so expiries and renewals happen even on idle accounts.
    /// Returns how many queue entries it took.
    pub fn sweep(&self, budget: usize) -> usize {
        let mut visited = 0;
        for shard in self.shards.iter() {
            if visited >= budget {
                break;
            }
            let now_ms = self.clock.now_ms();
            visited += shard.0.lock().sweep(now_ms, budget - visited);
        }
        visited
    }

    pub fn stats(&self) -> EngineStats {
        let mut s = EngineStats::default();
        for shard in self.shards.iter() {
            let shard = shard.0.lock();
            s.accounts += shard.accounts.len() as u64;
            s.open_holds += shard.books.open_holds;
            s.hold_expiries += shard.books.effects.hold_expiries;
            s.bucket_expiries += shard.books.effects.bucket_expiries;
            s.renewals += shard.books.effects.renewals;
        }
        s
    }

    /// Takes up to `max` changed accounts with their current state (write-behind).
    pub fn take_dirty(&self, max: usize, mut f: impl FnMut(&Id, &Account)) -> usize {
        let mut taken = 0;
        for shard in self.shards.iter() {
            if taken >= max {
                break;
            }
            let mut shard = shard.0.lock();
            while taken < max {
                let Some(id) = shard.books.pop_dirty() else {
                    break;
                };
                if let Some(acct) = shard.accounts.get(&id) {
                    f(&id, acct);
                    taken += 1;
                }
            }
        }
        taken
    }

    /// Marks an account changed (write-behind: its last write failed, or the
    /// copy outside is older). A no-op without tracking or for an unknown account.
    pub fn mark_dirty(&self, account: &[u8]) {
        let mut shard = self.shard_of(account).lock();
        let shard = &mut *shard;
        if let Some(acct) = shard.accounts.get(account) {
            shard.books.mark_dirty(&acct.key);
        }
    }

    /// How many accounts are waiting in the dirty lists.
    pub fn dirty_count(&self) -> usize {
        self.shards
            .iter()
            .map(|s| s.0.lock().books.dirty.len())
            .sum()
    }

    /// Appends a clock record (the test clock moved).
    pub fn journal_clock(&self, at_ms: u64) -> u64 {
        self.journal
            .append(&mut |buf| Record::Clock { at_ms }.encode(buf))
    }

    /// The ids of every account in hash slot `slot`, in no order.
    pub fn slot_accounts(&self, slot: u16) -> Vec<Id> {
        assert!(slot < SLOTS, "a slot is below {SLOTS}");
        let shard = self.shard_of_slot(slot).lock();
        shard
            .accounts
            .iter()
            .filter(|a| slot_of(&a.key) == slot)
            .map(|a| a.key.clone())
            .collect()
    }

    /// Drops every account of hash slot `slot` from memory (another node
    /// owns it now). Returns how many went. Their queue entries and dirty
    /// marks are skipped when met: a change not yet written behind is lost
    /// with its account, so the caller drains the write-behind first.
    pub fn drop_slot(&self, slot: u16) -> usize {
        self.drop_slots(&[slot])
    }

    /// [`Engine::drop_slot`] for many slots, visiting each shard once (a
    /// node handing over or loading a thousand slots scans each shard once,
    /// not once per slot).
    pub fn drop_slots(&self, slots: &[u16]) -> usize {
        let mut wanted = vec![false; usize::from(SLOTS)];
        let mut shards: Vec<usize> = Vec::with_capacity(slots.len());
        for &slot in slots {
            assert!(slot < SLOTS, "a slot is below {SLOTS}");
            wanted[usize::from(slot)] = true;
            shards.push(usize::from(slot) & (self.shards.len() - 1));
        }
        shards.sort_unstable();
        shards.dedup();
        let mut total = 0;
        for index in shards {
            let mut shard = self.shards[index].0.lock();
            let (mut dropped, mut holds) = (0, 0);
            for acct in shard
                .accounts
                .remove_where(|a| wanted[usize::from(slot_of(&a.key))])
            {
                dropped += 1;
                holds += acct.open_holds() as u64;
            }
            shard.books.open_holds -= holds;
            self.accounts
                .fetch_sub(dropped as u64, std::sync::atomic::Ordering::Relaxed);
            total += dropped;
        }
        total
    }
}
