//! Idempotency records: what each finished GRANT, DEBIT and hold returned,
//! kept for the idempotency window so a retry repeats its first reply.
//!
//! One deque in finish order (oldest first) is both the store and the
//! pruning order: records only ever leave from the front (the window passed,
//! or the per-account cap evicts the oldest). The command namespace is the
//! record's variant (`Done::Grant`, `Done::Debit`, `Done::Hold`), so ids of
//! different commands never collide and no key is stored twice.
//!
//! Most accounts keep a few records: a newest-first scan of inline ids is
//! the fastest lookup, and a 64-bit one-hash Bloom filter skips it for most
//! new ids (the common case: every RESERVE, DEBIT and GRANT looks its id
//! up first). Past [`INDEX_FROM`] records a hash index of positions keeps
//! lookups O(1). Both compare the real ids in the end, so a hash collision
//! can never turn a new command into a "retry".

use super::Done;
use crate::id::Id;
use hashbrown::HashTable;
use serde::de::{Deserializer, SeqAccess, Visitor};
use serde::ser::{SerializeSeq, Serializer};
use serde::{Deserialize, Serialize};
use std::collections::VecDeque;
use std::fmt;
use std::hash::BuildHasher;

/// Records from which lookups use the hash index.
pub const INDEX_FROM: usize = 24;
/// Records below which the index is dropped again (hysteresis).
const INDEX_DROP_BELOW: usize = 8;

/// One finished command.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DoneRecord {
    pub finished_ms: u64,
    pub id: Id,
    pub done: Done,
}

/// Idempotency namespaces: ids of different commands never collide.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kind {
    Grant,
    Debit,
    Hold,
}

/// The namespace of a record's command.
#[inline]
fn kind_of(done: &Done) -> Kind {
    match done {
        Done::Grant { .. } => Kind::Grant,
        Done::Debit { .. } => Kind::Debit,
        Done::Hold(_) => Kind::Hold,
    }
}

#[inline]
fn key_hash(kind: Kind, id: &[u8]) -> u64 {
    const HASHER: foldhash::fast::FixedState = foldhash::fast::FixedState::with_seed(0x646f_6e65);
    HASHER.hash_one((kind, id))
}

/// An account's idempotency records, oldest first.
#[derive(Default, Clone)]
pub struct DoneLog {
    records: VecDeque<DoneRecord>,
    /// Without an index: bit `hash >> 58` is set for every record's hash
    /// (and possibly for records since removed). A clear bit means "absent".
    filter: u64,
    /// Positions by (kind, id) hash, once the log is long.
    index: Option<Box<Index>>,
}

#[derive(Clone)]
struct Index {
    /// Records removed from the front since the index was built: the
    /// position of `records[0]`.
    popped: u64,
    table: HashTable<u64>,
}

#[inline]
fn filter_bit(hash: u64) -> u64 {
    1 << (hash >> 58)
}

impl fmt::Debug for DoneLog {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list().entries(self.records.iter()).finish()
    }
}

impl PartialEq for DoneLog {
    fn eq(&self, other: &DoneLog) -> bool {
        self.records == other.records
    }
}

impl DoneLog {
    pub fn is_empty(&self) -> bool {
        self.records.is_empty()
    }

    pub fn front(&self) -> Option<&DoneRecord> {
        self.records.front()
    }

    /// The record of command `kind` for `id`.
    #[inline]
    pub fn get(&self, kind: Kind, id: &[u8]) -> Option<&Done> {
        if self.records.is_empty() {
            return None;
        }
        let matches = |r: &DoneRecord| r.id.as_bytes() == id && kind_of(&r.done) == kind;
        let hash = key_hash(kind, id);
        match &self.index {
            None if self.filter & filter_bit(hash) == 0 => None,
            None => self
                .records
                .iter()
                .rev()
                .find(|r| matches(r))
                .map(|r| &r.done),
            Some(index) => {
                let records = &self.records;
                let at = |pos: u64| (pos - index.popped) as usize;
                index
                    .table
                    .find(hash, |&pos| matches(&records[at(pos)]))
                    .map(|&pos| &records[at(pos)].done)
            }
        }
    }

    /// Appends a record (its id must not be in the log for its kind).
    pub fn push(&mut self, finished_ms: u64, id: Id, done: Done) {
        debug_assert!(self.get(kind_of(&done), &id).is_none(), "one record per id");
        // Grow one slot at a time while small: most accounts keep one or
        // two records, and a deque's first allocation is four slots.
        if self.records.len() == self.records.capacity() && self.records.len() < 4 {
            self.records.reserve_exact(1);
        }
        let hash = key_hash(kind_of(&done), &id);
        self.records.push_back(DoneRecord {
            finished_ms,
            id,
            done,
        });
        match &mut self.index {
            Some(index) => {
                let pos = index.popped + self.records.len() as u64 - 1;
                let (records, popped) = (&self.records, index.popped);
                index
                    .table
                    .insert_unique(hash, pos, |&p| record_hash(records, popped, p));
            }
            None if self.records.len() >= INDEX_FROM => self.build_index(),
            None => self.filter |= filter_bit(hash),
        }
    }

    /// Removes the oldest records while `expired` says so (the window
    /// passed, or the cap needs room). Returns how many went.
    pub fn pop_while(&mut self, mut expired: impl FnMut(&DoneRecord, usize) -> bool) -> usize {
        let mut popped = 0;
        while let Some(front) = self.records.front() {
            if !expired(front, self.records.len()) {
                break;
            }
            self.pop_front();
            popped += 1;
        }
        // Without an index the filter is recomputed once per batch: stale
        // bits would only cost scans, but they would pile up.
        if popped > 0 && self.index.is_none() {
            self.rebuild_filter();
        }
        popped
    }

    /// Removes the oldest record (the caller rebuilds the filter).
    fn pop_front(&mut self) {
        let Some(record) = self.records.pop_front() else {
            return;
        };
        if let Some(index) = &mut self.index {
            let pos = index.popped;
            index.popped += 1;
            let hash = key_hash(kind_of(&record.done), &record.id);
            index
                .table
                .find_entry(hash, |&p| p == pos)
                .expect("every record is indexed")
                .remove();
            if self.records.len() < INDEX_DROP_BELOW {
                self.index = None;
            }
        }
    }

    fn rebuild_filter(&mut self) {
        self.filter = self
            .records
            .iter()
            .fold(0, |f, r| f | filter_bit(key_hash(kind_of(&r.done), &r.id)));
    }

    fn build_index(&mut self) {
        let mut table = HashTable::with_capacity(self.records.len() * 2);
        let records = &self.records;
        for (i, r) in records.iter().enumerate() {
            table.insert_unique(key_hash(kind_of(&r.done), &r.id), i as u64, |&p| {
                record_hash(records, 0, p)
            });
        }
        self.index = Some(Box::new(Index { popped: 0, table }));
        self.filter = 0;
    }

    /// Checks that ids are unique per kind and the index (if any) is whole.
    pub fn check(&self) -> Result<(), String> {
        if let Some(index) = &self.index {
            if index.table.len() != self.records.len() {
                return Err("idempotency index out of step".into());
            }
        }
        for (i, r) in self.records.iter().enumerate() {
            let found = self.get(kind_of(&r.done), &r.id);
            if !found.is_some_and(|d| std::ptr::eq(d, &r.done)) {
                return Err(format!("idempotency record {i} is not found by its id"));
            }
            if i > 0 && self.records[i - 1].finished_ms > r.finished_ms {
                return Err("idempotency records out of finish order".into());
            }
        }
        Ok(())
    }
}

fn record_hash(records: &VecDeque<DoneRecord>, popped: u64, pos: u64) -> u64 {
    let r = &records[(pos - popped) as usize];
    key_hash(kind_of(&r.done), &r.id)
}

/// As a plain sequence of records (the index is rebuilt on load).
impl Serialize for DoneLog {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut seq = s.serialize_seq(Some(self.records.len()))?;
        for r in &self.records {
            seq.serialize_element(r)?;
        }
        seq.end()
    }
}

impl<'de> Deserialize<'de> for DoneLog {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<DoneLog, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = DoneLog;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("idempotency records")
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<DoneLog, A::Error> {
                let mut log = DoneLog::default();
                // Bounded by the input: each element consumes bytes.
                while let Some(r) = seq.next_element::<DoneRecord>()? {
                    log.records.push_back(r);
                }
                if log.records.len() >= INDEX_FROM {
                    log.build_index();
                } else {
                    log.rebuild_filter();
                }
                Ok(log)
            }
        }
        d.deserialize_seq(V)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn debit(reply: u64) -> Done {
        Done::Debit {
            args: crate::hold::ChargeArgs::Amount(reply),
            reply,
        }
    }

    #[test]
    fn lookups_agree_with_and_without_the_index() {
        let mut log = DoneLog::default();
        for n in 0..100u64 {
            log.push(n, Id::new(format!("d{n}").as_bytes()), debit(n));
            // Same id, other kind: a separate namespace.
            assert!(log.get(Kind::Hold, format!("d{n}").as_bytes()).is_none());
            assert_eq!(log.check(), Ok(()));
        }
        assert!(log.index.is_some());
        for n in 0..100u64 {
            assert_eq!(
                log.get(Kind::Debit, format!("d{n}").as_bytes()),
                Some(&debit(n))
            );
        }
        for n in 0..95u64 {
            assert_eq!(log.pop_while(|r, _| r.finished_ms <= n), 1);
            assert!(log.get(Kind::Debit, format!("d{n}").as_bytes()).is_none());
            assert_eq!(log.check(), Ok(()));
        }
        assert!(log.index.is_none(), "dropped when short again");
        assert_eq!(log.get(Kind::Debit, b"d99"), Some(&debit(99)));
        // The filter was rebuilt from the records left: only their bits.
        let expected = log
            .records
            .iter()
            .fold(0, |f, r| f | filter_bit(key_hash(Kind::Debit, &r.id)));
        assert_eq!(log.filter, expected);
        // A batch leaves in one call; the cap form sees the length.
        assert_eq!(log.pop_while(|_, len| len > 2), 3);
        assert_eq!(log.records.len(), 2);
        let bytes = postcard::to_allocvec(&log).unwrap();
        let back: DoneLog = postcard::from_bytes(&bytes).unwrap();
        assert_eq!(back, log);
    }
}
