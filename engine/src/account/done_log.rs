//! Idempotency records: what each finished GRANT, DEBIT and hold returned,
//! kept for the idempotency window so a retry repeats its first reply.
//!
//! One log in finish order (oldest first) is both the store and the pruning
//! order: records only ever leave from the front (the window passed, or the
//! per-account cap evicts the oldest). The command namespace is the record's
//! variant (`Done::Grant`, `Done::Debit`, `Done::Hold`), so ids of different
//! commands never collide and no key is stored twice.
//!
//! Records are kept packed, as their stored form (the postcard bytes of a
//! [`DoneRecord`], each after a varint length): a grant's record is ~18
//! bytes, a closed hold's ~25, where the structs took 112. Lookups only
//! read the instant, the id and the variant tag at the front of a record;
//! the record is decoded only when an id was used before (a retry or a
//! conflict). Every account keeps at least its grant's record, so:
//!
//! - up to [`SMALL_BYTES`] of records sit inline in the account (no
//!   allocation, no header; a few records are scanned);
//! - past that, one boxed [`Large`] log: a byte buffer consumed from the
//!   front (reclaimed in batches), a 64-bit one-hash Bloom filter that skips
//!   the scan for most new ids (the common case: every RESERVE, DEBIT and
//!   GRANT looks its id up first), and past [`INDEX_FROM`] records a hash
//!   index of record offsets for O(1) lookups. Once boxed, a log stays
//!   boxed (its buffer reused): an account whose records turn over would
//!   otherwise allocate and free the box on every command.
//!
//! Every lookup compares the real id in the end, so a hash collision can
//! never turn a new command into a "retry".

use super::Done;
use crate::id::Id;
use hashbrown::HashTable;
use serde::de::{Deserializer, SeqAccess, Visitor};
use serde::ser::{SerializeSeq, Serializer};
use serde::{Deserialize, Serialize};
use std::fmt;
use std::hash::BuildHasher;

/// Records from which lookups use the hash index.
pub const INDEX_FROM: usize = 24;
/// Records below which the index is dropped again (hysteresis).
const INDEX_DROP_BELOW: usize = 8;
/// A boxed log's buffer is never shrunk below twice this.
const SHRINK_FLOOR_BYTES: usize = 128;
/// Record bytes kept inline in the account: a grant's record with a short id.
pub const SMALL_BYTES: usize = 22;

/// One finished command, as stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DoneRecord {
    pub finished_ms: u64,
    pub id: Id,
    pub done: Done,
}

/// [`DoneRecord`]'s stored form, borrowed (same fields, same order).
#[derive(Serialize)]
struct RecordRef<'a> {
    finished_ms: u64,
    id: &'a Id,
    done: &'a Done,
}

/// Idempotency namespaces: ids of different commands never collide. The
/// discriminant is `Done`'s variant index, the tag in a packed record.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kind {
    Grant = 0,
    Debit = 1,
    Hold = 2,
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

#[inline]
fn filter_bit(hash: u64) -> u64 {
    1 << (hash >> 58)
}

/// A postcard varint at `at`: its value and the offset after it.
#[inline]
fn varint(b: &[u8], mut at: usize) -> (u64, usize) {
    let mut v = 0u64;
    let mut shift = 0;
    loop {
        let byte = b[at];
        at += 1;
        v |= u64::from(byte & 0x7f) << shift;
        if byte & 0x80 == 0 {
            return (v, at);
        }
        shift += 7;
    }
}

/// Writes `v` as a postcard varint into `out`; returns its length.
fn put_varint(out: &mut [u8; 10], mut v: u64) -> usize {
    let mut at = 0;
    while v >= 0x80 {
        out[at] = v as u8 | 0x80;
        v >>= 7;
        at += 1;
    }
    out[at] = v as u8;
    at + 1
}

/// What a lookup reads of the packed record at the front of `b`.
struct Head<'a> {
    finished_ms: u64,
    id: &'a [u8],
    kind: u8,
    /// The record's stored bytes.
    body: &'a [u8],
    /// Its framed length (length prefix and body).
    framed: usize,
}

#[inline]
fn head(b: &[u8]) -> Head<'_> {
    let (len, start) = varint(b, 0);
    let end = start + len as usize;
    let body = &b[start..end];
    let (finished_ms, at) = varint(body, 0);
    let (id_len, at) = varint(body, at);
    let id_end = at + id_len as usize;
    Head {
        finished_ms,
        id: &body[at..id_end],
        kind: body[id_end],
        body,
        framed: end,
    }
}

fn decode(body: &[u8]) -> DoneRecord {
    postcard::from_bytes(body).expect("packed by push")
}

/// The framed records in `b`, oldest first, with their offsets.
fn records(b: &[u8]) -> impl Iterator<Item = (usize, Head<'_>)> {
    let mut at = 0;
    std::iter::from_fn(move || {
        if at >= b.len() {
            return None;
        }
        let h = head(&b[at..]);
        let here = at;
        at += h.framed;
        Some((here, h))
    })
}

/// An account's idempotency records, oldest first (see the module docs).
#[derive(Clone)]
pub struct DoneLog(Repr);

#[derive(Clone)]
enum Repr {
    Small { len: u8, bytes: [u8; SMALL_BYTES] },
    Large(Box<Large>),
}

#[derive(Clone)]
struct Large {
    /// Framed records from `head` on; bytes before `head` were popped.
    bytes: Vec<u8>,
    head: usize,
    count: usize,
    /// Without an index: bit `hash >> 58` is set for every record's hash
    /// (and possibly for records since removed). A clear bit means "absent".
    filter: u64,
    /// Record offsets (counted from the first byte ever pushed) by
    /// (kind, id) hash, once the log is long.
    index: Option<HashTable<u64>>,
    /// The offset of `bytes[0]` in that count.
    base: u64,
}

impl Default for DoneLog {
    fn default() -> Self {
        DoneLog(Repr::Small {
            len: 0,
            bytes: [0; SMALL_BYTES],
        })
    }
}

impl fmt::Debug for DoneLog {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list()
            .entries(records(self.live()).map(|(_, h)| decode(h.body)))
            .finish()
    }
}

/// The encoding is canonical: equal records, equal bytes.
impl PartialEq for DoneLog {
    fn eq(&self, other: &DoneLog) -> bool {
        self.live() == other.live()
    }
}

impl Large {
    fn live(&self) -> &[u8] {
        &self.bytes[self.head..]
    }

    fn rec_hash(bytes: &[u8], base: u64, pos: u64) -> u64 {
        let h = head(&bytes[(pos - base) as usize..]);
        key_hash(kind_from_tag(h.kind), h.id)
    }

    fn build_index(&mut self) {
        let mut table = HashTable::with_capacity(self.count * 2);
        let (bytes, base, from) = (&self.bytes, self.base, self.head);
        for (at, h) in records(&bytes[from..]) {
            let pos = base + (from + at) as u64;
            let hash = key_hash(kind_from_tag(h.kind), h.id);
            table.insert_unique(hash, pos, |&p| Large::rec_hash(bytes, base, p));
        }
        self.index = Some(table);
        self.filter = 0;
    }

    fn rebuild_filter(&mut self) {
        self.filter = records(self.live()).fold(0, |f, (_, h)| {
            f | filter_bit(key_hash(kind_from_tag(h.kind), h.id))
        });
    }

    fn find(&self, kind: Kind, id: &[u8]) -> Option<&[u8]> {
        let hash = key_hash(kind, id);
        let matches = |h: &Head| h.id == id && h.kind == kind as u8;
        match &self.index {
            None if self.filter & filter_bit(hash) == 0 => None,
            None => records(self.live())
                .find(|(_, h)| matches(h))
                .map(|(_, h)| h.body),
            Some(index) => {
                let at = |pos: u64| (pos - self.base) as usize;
                index
                    .find(hash, |&pos| matches(&head(&self.bytes[at(pos)..])))
                    .map(|&pos| head(&self.bytes[at(pos)..]).body)
            }
        }
    }

    fn push(&mut self, framed: &[u8], hash: u64) {
        if self.head > 0 && self.bytes.len() + framed.len() > self.bytes.capacity() {
            self.compact();
        }
        let pos = self.base + self.bytes.len() as u64;
        self.bytes.extend_from_slice(framed);
        self.count += 1;
        match &mut self.index {
            Some(index) => {
                let (bytes, base) = (&self.bytes, self.base);
                index.insert_unique(hash, pos, |&p| Large::rec_hash(bytes, base, p));
            }
            None if self.count >= INDEX_FROM => self.build_index(),
            None => self.filter |= filter_bit(hash),
        }
    }

    /// Drops the popped bytes.
    fn compact(&mut self) {
        self.bytes.drain(..self.head);
        self.base += self.head as u64;
        self.head = 0;
        // A log that was long once (up to `max_ids` records) gives its
        // memory back when pruning leaves it short; the slack of four times
        // keeps an account whose records turn over from reallocating.
        let keep = 2 * self.bytes.len().max(SHRINK_FLOOR_BYTES);
        if self.bytes.capacity() > 2 * keep {
            self.bytes.shrink_to(keep);
        }
    }

    /// Removes the oldest record.
    fn pop_front(&mut self) {
        let h = head(&self.bytes[self.head..]);
        let (framed, hash) = (h.framed, key_hash(kind_from_tag(h.kind), h.id));
        if let Some(index) = &mut self.index {
            let pos = self.base + self.head as u64;
            index
                .find_entry(hash, |&p| p == pos)
                .expect("every record is indexed")
                .remove();
        }
        self.head += framed;
        self.count -= 1;
        if self.index.is_some() && self.count < INDEX_DROP_BELOW {
            self.index = None;
        }
    }
}

fn kind_from_tag(tag: u8) -> Kind {
    match tag {
        0 => Kind::Grant,
        1 => Kind::Debit,
        _ => Kind::Hold,
    }
}

impl DoneLog {
    /// The framed records still kept, oldest first.
    /// Reads the memory a command's lookup reads first (the boxed log's
    /// header and its oldest record), for [`crate::Engine::prefetch`].
    #[inline]
    pub fn touch(&self) -> u64 {
        match &self.0 {
            Repr::Small { len, .. } => u64::from(*len),
            Repr::Large(large) => large.filter ^ large.live().first().map_or(0, |b| u64::from(*b)),
        }
    }

    fn live(&self) -> &[u8] {
        match &self.0 {
            Repr::Small { len, bytes } => &bytes[..*len as usize],
            Repr::Large(large) => large.live(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.live().is_empty()
    }

    pub fn len(&self) -> usize {
        match &self.0 {
            Repr::Small { .. } => records(self.live()).count(),
            Repr::Large(large) => large.count,
        }
    }

    /// When the oldest record finished.
    pub fn front_finished_ms(&self) -> Option<u64> {
        let live = self.live();
        (!live.is_empty()).then(|| head(live).finished_ms)
    }

    /// The record of command `kind` for `id`.
    #[inline]
    pub fn get(&self, kind: Kind, id: &[u8]) -> Option<Done> {
        self.find(kind, id).map(|b| decode(b).done)
    }

    /// The stored bytes of that record.
    #[inline]
    fn find(&self, kind: Kind, id: &[u8]) -> Option<&[u8]> {
        match &self.0 {
            Repr::Small { len: 0, .. } => None,
            Repr::Small { .. } => records(self.live())
                .find(|(_, h)| h.id == id && h.kind == kind as u8)
                .map(|(_, h)| h.body),
            Repr::Large(large) => large.find(kind, id),
        }
    }

    /// Appends a record (its id must not be in the log for its kind).
    pub fn push(&mut self, finished_ms: u64, id: &Id, done: &Done) {
        debug_assert!(self.get(kind_of(done), id).is_none(), "one record per id");
        self.append(finished_ms, id, done);
    }

    fn append(&mut self, finished_ms: u64, id: &Id, done: &Done) {
        let kind = kind_of(done);
        let record = RecordRef {
            finished_ms,
            id,
            done,
        };
        // Encoded once, on the stack, after room for its length prefix (a
        // record of up to 256 bytes has a prefix of one or two bytes).
        let mut buf = [0u8; 2 + 256];
        let owned;
        let framed: &[u8] = match postcard::to_slice(&record, &mut buf[2..]) {
            Ok(body) => {
                let n = body.len();
                let mut prefix = [0u8; 10];
                let p = put_varint(&mut prefix, n as u64);
                buf[2 - p..2].copy_from_slice(&prefix[..p]);
                &buf[2 - p..2 + n]
            }
            Err(_) => {
                let body = postcard::to_allocvec(&record).expect("records encode");
                let mut prefix = [0u8; 10];
                let p = put_varint(&mut prefix, body.len() as u64);
                owned = [&prefix[..p], &body].concat();
                &owned
            }
        };
        if let Repr::Small { len, bytes } = &mut self.0 {
            let used = *len as usize;
            if used + framed.len() <= SMALL_BYTES {
                bytes[used..used + framed.len()].copy_from_slice(framed);
                *len = (used + framed.len()) as u8;
                return;
            }
            let mut large = Large {
                bytes: Vec::with_capacity((used + framed.len()) * 2),
                head: 0,
                count: records(&bytes[..used]).count(),
                filter: 0,
                index: None,
                base: 0,
            };
            large.bytes.extend_from_slice(&bytes[..used]);
            large.rebuild_filter();
            self.0 = Repr::Large(Box::new(large));
        }
        let Repr::Large(large) = &mut self.0 else {
            unreachable!("made large above")
        };
        large.push(framed, key_hash(kind, id));
    }

    /// Removes the oldest records while `expired(finished_ms, len)` says so
    /// (the window passed, or the cap needs room). Returns how many went.
    pub fn pop_while(&mut self, mut expired: impl FnMut(u64, usize) -> bool) -> usize {
        let mut popped = 0;
        match &mut self.0 {
            Repr::Small { len, bytes } => {
                let mut count = records(&bytes[..*len as usize]).count();
                let mut from = 0;
                while from < *len as usize {
                    let h = head(&bytes[from..*len as usize]);
                    if !expired(h.finished_ms, count) {
                        break;
                    }
                    from += h.framed;
                    count -= 1;
                    popped += 1;
                }
                bytes.copy_within(from..*len as usize, 0);
                *len -= from as u8;
            }
            Repr::Large(large) => {
                while large.count > 0 {
                    let finished_ms = head(large.live()).finished_ms;
                    if !expired(finished_ms, large.count) {
                        break;
                    }
                    large.pop_front();
                    popped += 1;
                }
                if popped == 0 {
                    return 0;
                }
                // Without an index the filter is recomputed once per batch:
                // stale bits would only cost scans, but they would pile up.
                if large.index.is_none() {
                    large.rebuild_filter();
                }
                if large.head * 2 > large.bytes.len() {
                    large.compact();
                }
            }
        }
        popped
    }

    /// Checks that every record decodes, records are in finish order, ids
    /// are unique per kind and the index (if any) is whole.
    pub fn check(&self) -> Result<(), String> {
        let mut count = 0;
        let mut last = 0;
        for (i, (_, h)) in records(self.live()).enumerate() {
            if h.finished_ms < last {
                return Err("idempotency records out of finish order".into());
            }
            last = h.finished_ms;
            // Found by its id, and it is the one found: ids are unique per kind.
            let found = self.find(kind_from_tag(h.kind), h.id);
            if h.kind > Kind::Hold as u8 || !found.is_some_and(|b| std::ptr::eq(b, h.body)) {
                return Err(format!("idempotency record {i} is not found by its id"));
            }
            count += 1;
        }
        if let Repr::Large(large) = &self.0 {
            if large.count != count {
                return Err("idempotency record count out of step".into());
            }
            if large.index.as_ref().is_some_and(|t| t.len() != count) {
                return Err("idempotency index out of step".into());
            }
        }
        Ok(())
    }
}

/// As a plain sequence of records (the index is rebuilt on load).
impl Serialize for DoneLog {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut seq = s.serialize_seq(Some(self.len()))?;
        for (_, h) in records(self.live()) {
            seq.serialize_element(&decode(h.body))?;
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
                // Bounded by the input: each element consumes bytes. A
                // repeated id is kept as stored, and `check` refuses it.
                while let Some(r) = seq.next_element::<DoneRecord>()? {
                    log.append(r.finished_ms, &r.id, &r.done);
                }
                Ok(log)
            }
        }
        d.deserialize_seq(V)
    }
}

#[cfg(test)]
mod tests;
