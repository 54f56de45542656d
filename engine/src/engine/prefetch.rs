//! Bringing a pipeline's accounts into the CPU cache before its commands run.
//!
//! Over many accounts a command's time is mostly cache misses: the shard
//! table's slot, the account, its holds, idempotency log and history, each
//! a load that depends on the one before (about 190 ns each here). One
//! command at a time, the misses of different commands never overlap: every
//! command takes its shard's lock, and a locked instruction waits for the
//! loads before it. [`Engine::prefetch`] takes the locks of all the batch's
//! shards first (in shard order, as nothing else ever holds two shard
//! locks), then looks every account up and reads a word of each of its
//! parts with no lock taken in between, so the CPU keeps the misses of
//! several accounts in flight at once. The commands then run one by one as
//! ever, on accounts already in cache.

use super::table::AccountTable;
use super::Engine;
use crate::slot::slot_of;
use parking_lot::MutexGuard;
use smallvec::SmallVec;

/// Most accounts one call looks at (the rest of a longer batch is not
/// prefetched): bounds the locks held at once.
pub const MAX_PREFETCH: usize = 32;

impl Engine {
    /// Looks the accounts of `keys` up and reads them (see the module
    /// docs). Changes nothing; a missing account costs only its lookup.
    pub fn prefetch(&self, keys: &[&[u8]]) {
        let keys = &keys[..keys.len().min(MAX_PREFETCH)];
        if keys.len() < 2 {
            return;
        }
        let mask = self.shards.len() - 1;
        // Hashes first, outside every lock.
        let mut wanted: SmallVec<[(usize, u64, &[u8]); MAX_PREFETCH]> = keys
            .iter()
            .map(|k| (usize::from(slot_of(k)) & mask, AccountTable::hash(k), *k))
            .collect();
        wanted.sort_unstable_by_key(|(shard, _, _)| *shard);
        let mut locked: SmallVec<[(usize, MutexGuard<'_, super::Shard>); MAX_PREFETCH]> =
            SmallVec::new();
        for (shard, _, _) in &wanted {
            if locked.last().is_none_or(|(last, _)| last != shard) {
                locked.push((*shard, self.shards[*shard].0.lock()));
            }
        }
        let mut read = 0u64;
        let mut at = 0;
        for (shard, hash, key) in &wanted {
            while locked[at].0 != *shard {
                at += 1;
            }
            if let Some(acct) = locked[at].1.accounts.get_hashed(*hash, key) {
                read ^= acct.touch();
            }
        }
        std::hint::black_box(read);
        drop(locked);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bucket::BucketKind;
    use crate::clock::SystemClock;
    use crate::command::{Charge, Expiry, Mutation};
    use crate::config::Config;
    use crate::engine::MemoryJournal;
    use crate::id::Bytes;
    use std::sync::Arc;

    fn engine() -> Arc<Engine> {
        Arc::new(Engine::new(
            Config::builtin(),
            Arc::new(SystemClock),
            Arc::new(MemoryJournal::discarding()),
        ))
    }

    fn grant(engine: &Engine, account: &str) {
        let m = Mutation::Grant {
            grant_id: Bytes(b"g"),
            amount: 1_000_000,
            kind: BucketKind::Prepaid,
            expiry: Expiry::Never,
            priority: 50,
        };
        engine.execute(account.as_bytes(), &m).unwrap();
    }

    #[test]
    fn prefetch_changes_nothing_and_creates_no_account() {
        let e = engine();
        grant(&e, "a");
        grant(&e, "b");
        let before = (e.stats(), e.balance(b"a"), e.balance(b"b"));
        let keys: Vec<&[u8]> = vec![b"a", b"missing", b"b", b"a", b"also-missing"];
        e.prefetch(&keys);
        assert_eq!((e.stats(), e.balance(b"a"), e.balance(b"b")), before);
        assert_eq!(e.stats().accounts, 2, "no account for a missing key");
    }

    /// Many threads prefetching batches that share shards, beside threads
    /// executing commands: the shard locks are taken in order, so this ends.
    #[test]
    fn concurrent_prefetches_and_commands_do_not_deadlock() {
        let e = engine();
        let names: Vec<String> = (0..64).map(|i| format!("acct:{i}")).collect();
        for n in &names {
            grant(&e, n);
        }
        let names = Arc::new(names);
        let mut threads = Vec::new();
        for t in 0..4u64 {
            let (e, names) = (e.clone(), names.clone());
            threads.push(std::thread::spawn(move || {
                for round in 0..2_000u64 {
                    let pick =
                        |i: u64| names[((round * 7 + i * 13 + t * 31) % 64) as usize].as_bytes();
                    if t % 2 == 0 {
                        let keys: Vec<&[u8]> = (0..MAX_PREFETCH as u64 + 4).map(pick).collect();
                        e.prefetch(&keys);
                    } else {
                        let hold = format!("h:{t}:{round}");
                        let m = Mutation::Reserve {
                            hold_id: Bytes(hold.as_bytes()),
                            charge: Charge::Amount(1),
                            ttl_ms: None,
                            member: None,
                        };
                        e.execute(pick(0), &m).unwrap();
                    }
                }
            }));
        }
        for t in threads {
            t.join().unwrap();
        }
        assert_eq!(e.stats().open_holds, 2 * 2_000);
    }
}
