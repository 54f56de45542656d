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
