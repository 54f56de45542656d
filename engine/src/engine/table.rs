//! The account table of one shard.

use crate::account::Account;
use hashbrown::{hash_table, HashTable};
use std::hash::BuildHasher;

/// A shard's accounts: a hash table of boxed accounts that carry their own
/// key. Slots are one pointer (8 bytes, not 32 with the key beside it), so
/// the table of 1M accounts is 16 MB rather than 64 and more of it stays in
/// cache; the key is compared where the account is read anyway. The table is
/// at most ~87 % full, often half: boxing keeps that slack small.
#[derive(Default)]
pub(super) struct AccountTable {
    table: HashTable<Box<Account>>,
}

impl AccountTable {
    /// The hash the table files `id` under (the sweeper queue names
    /// accounts by it).
    #[inline]
    pub(super) fn hash(id: &[u8]) -> u64 {
        // Not the shard hasher's seed: its low bits pick the shard and would
        // be the same for every key of this table.
        const HASHER: foldhash::fast::FixedState =
            foldhash::fast::FixedState::with_seed(0x6163_6374);
        HASHER.hash_one(id)
    }

    #[inline]
    pub(super) fn get(&self, id: &[u8]) -> Option<&Account> {
        self.get_hashed(Self::hash(id), id)
    }

    /// [`AccountTable::get`] with the hash already computed.
    #[inline]
    pub(super) fn get_hashed(&self, hash: u64, id: &[u8]) -> Option<&Account> {
        self.table
            .find(hash, |a| a.key.as_bytes() == id)
            .map(|a| &**a)
    }

    #[inline]
    pub(super) fn get_mut(&mut self, id: &[u8]) -> Option<&mut Account> {
        self.table
            .find_mut(Self::hash(id), |a| a.key.as_bytes() == id)
            .map(|a| &mut **a)
    }

    /// The account filed under `hash` that `pick` accepts (the caller
    /// compares the full hash: the table only compares a few bits of it).
    #[inline]
    pub(super) fn find_by_hash_mut(
        &mut self,
        hash: u64,
        mut pick: impl FnMut(&Account) -> bool,
    ) -> Option<&mut Account> {
        self.table.find_mut(hash, |a| pick(a)).map(|a| &mut **a)
    }

    /// Inserts or replaces the account with `acct.key`; true if it is new.
    pub(super) fn insert(&mut self, acct: Box<Account>) -> bool {
        let hash = Self::hash(&acct.key);
        match self
            .table
            .entry(hash, |a| a.key == acct.key, |a| Self::hash(&a.key))
        {
            hash_table::Entry::Occupied(mut e) => {
                *e.get_mut() = acct;
                false
            }
            hash_table::Entry::Vacant(e) => {
                e.insert(acct);
                true
            }
        }
    }

    /// Removes the accounts `drop` says, as the iterator is consumed.
    pub(super) fn remove_where<'a>(
        &'a mut self,
        mut drop: impl FnMut(&Account) -> bool + 'a,
    ) -> impl Iterator<Item = Box<Account>> + 'a {
        self.table.extract_if(move |a| drop(a))
    }

    pub(super) fn len(&self) -> usize {
        self.table.len()
    }

    pub(super) fn iter(&self) -> impl Iterator<Item = &Account> {
        self.table.iter().map(|a| &**a)
    }

    pub(super) fn iter_mut(&mut self) -> impl Iterator<Item = &mut Account> {
        self.table.iter_mut().map(|a| &mut **a)
    }
}
