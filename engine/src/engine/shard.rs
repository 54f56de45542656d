//! One shard: its accounts, the sweeper's due queue, the write-behind's
//! dirty list and counters, behind one lock.
//!
//! [`Shard::visit`] is the one way to touch an account. It brings the
//! account up to now (clamp, time-driven events), runs the caller's step,
//! then does the bookkeeping exactly once: open-hold and event counters,
//! the sweeper queue, the dirty mark, and dropping an account that a failed
//! command created in passing. Commands, reads, the sweeper, replay and
//! restore are short callers of it.

use super::table::AccountTable;
use crate::account::{Account, Effects};
use crate::bucket::NEVER;
use crate::error::{EngineError, Result};
use crate::id::Id;
use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};

type Set<K> = HashMap<K, (), foldhash::fast::RandomState>;

/// How [`Shard::visit`] finds its account.
#[derive(Clone, Copy)]
pub(super) enum Find<'a> {
    /// Only an account that exists: `visit` returns `None` otherwise.
    Existing,
    /// Creates a missing account, counted in `count`, refused at `max`.
    OrCreate { count: &'a AtomicU64, max: u64 },
    /// Creates a missing account, counted in `count` (recovery: what the
    /// journal says happened is not refused).
    OrCreateUnbounded(&'a AtomicU64),
}

/// What a step is told and tells back.
pub(super) struct Step {
    /// The account's effective now (never earlier than it has seen).
    pub now_ms: u64,
    /// The step changed the account (it is marked dirty).
    pub changed: bool,
}

/// The shard's bookkeeping beside its accounts.
#[derive(Default)]
pub(super) struct Books {
    /// Accounts by (a lower bound of) their next time-driven event, for the
    /// sweeper: `(due, the account's table hash)`. Every account with a next
    /// event has an entry, so the entry is 16 bytes rather than 32 with the
    /// key; the sweeper finds the account by its hash and queued instant.
    pub due: BinaryHeap<Reverse<(u64, u64)>>,
    pub open_holds: u64,
    pub effects: Effects,
    /// Accounts changed since the last `take_dirty` (write-behind), if tracking.
    pub dirty: Vec<Id>,
    dirty_set: Set<Id>,
    track_dirty: bool,
}

impl Books {
    pub(super) fn mark_dirty(&mut self, id: &Id) {
        if self.track_dirty && !self.dirty_set.contains_key(id) {
            self.dirty_set.insert(id.clone(), ());
            self.dirty.push(id.clone());
        }
    }

    pub(super) fn pop_dirty(&mut self) -> Option<Id> {
        let id = self.dirty.pop()?;
        self.dirty_set.remove(&id);
        Some(id)
    }
}

#[derive(Default)]
pub(super) struct Shard {
    pub accounts: AccountTable,
    pub books: Books,
}

impl Shard {
    pub(super) fn new(track_dirty: bool) -> Self {
        let mut shard = Shard::default();
        shard.books.track_dirty = track_dirty;
        shard
    }

    /// Runs `step` on the account `key`, brought up to `now_ms` first (or
    /// as it is, for `None`), then does the bookkeeping once. `Ok(None)`:
    /// no such account and `find` is [`Find::Existing`].
    pub(super) fn visit<T>(
        &mut self,
        key: &[u8],
        now_ms: Option<u64>,
        find: Find<'_>,
        step: impl FnOnce(&mut Account, &mut Step) -> T,
    ) -> Result<Option<T>> {
        let mut fresh = None;
        let (acct, is_fresh) = match (self.accounts.get_mut(key), find) {
            (Some(acct), _) => (acct, false),
            (None, Find::Existing) => return Ok(None),
            (None, Find::OrCreate { count, max }) => {
                // Counted now (exact under concurrency), given back below
                // if the step leaves the new account blank.
                if count.fetch_add(1, Ordering::Relaxed) >= max {
                    count.fetch_sub(1, Ordering::Relaxed);
                    return Err(EngineError::invalid(format!(
                        "too many accounts: max_accounts ({max}) reached"
                    )));
                }
                (fresh.insert(Account::with_key(Id::new(key))), true)
            }
            (None, Find::OrCreateUnbounded(count)) => {
                count.fetch_add(1, Ordering::Relaxed);
                (fresh.insert(Account::with_key(Id::new(key))), true)
            }
        };
        let holds_before = acct.open_holds() as u64;
        let mut effects = Effects::default();
        let now_ms = match now_ms {
            Some(now_ms) => {
                let now_ms = acct.clamp_now(now_ms);
                acct.advance(now_ms, &mut effects);
                now_ms
            }
            None => acct.last_now_ms,
        };
        let mut s = Step {
            now_ms,
            changed: false,
        };
        let out = step(acct, &mut s);
        debug_assert_eq!(acct.check(), Ok(()), "invariants after a step");
        let books = &mut self.books;
        books.open_holds = books.open_holds + acct.open_holds() as u64 - holds_before;
        books.effects.add(effects);
        // A new account the step left blank is dropped again.
        let keep = !is_fresh || !acct.is_blank();
        let due_ms = acct.next_due_ms();
        // Queued only when its next event comes before the one it is queued
        // for: a RESERVE+COMMIT pair on an account with a queued instant
        // pushes nothing.
        let queue = keep && acct.queue_due(due_ms);
        let dirty = keep && books.track_dirty && (s.changed || !effects.is_none());
        if dirty {
            books.mark_dirty(&acct.key);
        }
        if queue {
            books
                .due
                .push(Reverse((due_ms, AccountTable::hash(&acct.key))));
        }
        match fresh {
            Some(acct) if keep => {
                self.accounts.insert(Box::new(acct));
            }
            Some(_) => match find {
                Find::OrCreate { count, .. } | Find::OrCreateUnbounded(count) => {
                    count.fetch_sub(1, Ordering::Relaxed);
                }
                Find::Existing => unreachable!("only created accounts are fresh"),
            },
            None => {}
        }
        Ok(Some(out))
    }

    /// Visits the accounts whose queued instant has come by `now_ms`, at
    /// most `budget` of them. Returns how many queue entries it took.
    pub(super) fn sweep(&mut self, now_ms: u64, budget: usize) -> usize {
        let mut taken = 0;
        while taken < budget {
            match self.books.due.peek() {
                Some(Reverse((due, _))) if *due <= now_ms => {}
                _ => break,
            }
            let Reverse((due, hash)) = self.books.due.pop().expect("peeked");
            taken += 1;
            // No account counting on this entry (gone, or its entry was
            // replaced by a restore or an earlier instant): skipped.
            let counts_on =
                |a: &Account| a.queued_due_ms == due && AccountTable::hash(&a.key) == hash;
            let Some(acct) = self.accounts.find_by_hash_mut(hash, counts_on) else {
                continue;
            };
            // FIX (tests/model.rs, scenarios.rs `sweeper_keeps_accounts_whose_due_moved`):
            // the queued instant can be earlier than the account's next
            // event; `visit` requeues it at the real instant then, rather
            // than leaving it out of the sweep for good.
            acct.queued_due_ms = NEVER;
            let id = acct.key.clone();
            let visited = self.visit(&id, Some(now_ms), Find::Existing, |_, _| ());
            debug_assert!(matches!(visited, Ok(Some(()))));
        }
        self.compact_due();
        taken
    }

    /// Stale queue entries are bounded: rebuilt when they outnumber accounts.
    fn compact_due(&mut self) {
        if self.books.due.len() <= 2 * self.accounts.len() + 1024 {
            return;
        }
        let mut rebuilt = Vec::with_capacity(self.accounts.len());
        for a in self.accounts.iter_mut() {
            a.queued_due_ms = NEVER;
            let next = a.next_due_ms();
            if a.queue_due(next) {
                rebuilt.push(Reverse((next, AccountTable::hash(&a.key))));
            }
        }
        self.books.due = BinaryHeap::from(rebuilt);
    }
}
