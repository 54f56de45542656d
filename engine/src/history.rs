//! A bounded per-account history of what happened, newest last in memory,
//! newest first on the wire.

use crate::id::{Id, MAX_ID_BYTES};
use serde::de::Error as _;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::collections::VecDeque;

/// What happened (contract §5 HISTORY ops).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Op {
    Grant,
    Reserve,
    Capture,
    Commit,
    Release,
    ExpireHold,
    Debit,
    ExpireCredits,
    Subscribe,
    Renew,
    Seats,
    Addon,
    Unsubscribe,
}

impl Op {
    const ALL: [Op; 13] = [
        Op::Grant,
        Op::Reserve,
        Op::Capture,
        Op::Commit,
        Op::Release,
        Op::ExpireHold,
        Op::Debit,
        Op::ExpireCredits,
        Op::Subscribe,
        Op::Renew,
        Op::Seats,
        Op::Addon,
        Op::Unsubscribe,
    ];

    fn from_byte(b: u8) -> Option<Op> {
        Op::ALL.get(b as usize).copied()
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Op::Grant => "grant",
            Op::Reserve => "reserve",
            Op::Capture => "capture",
            Op::Commit => "commit",
            Op::Release => "release",
            Op::ExpireHold => "expire_hold",
            Op::Debit => "debit",
            Op::ExpireCredits => "expire_credits",
            Op::Subscribe => "subscribe",
            Op::Renew => "renew",
            Op::Seats => "seats",
            Op::Addon => "addon",
            Op::Unsubscribe => "unsubscribe",
        }
    }
}

/// One history entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HistoryEntry {
    /// Per-account sequence number, 1, 2, 3, ...
    pub seq: u64,
    pub at_ms: u64,
    pub op: Op,
    /// The grant, hold, debit or bucket id; the plan name for plan ops.
    pub id: Id,
    pub amount: u64,
}

/// An account's bounded history, newest last, packed into bytes.
///
/// Every RESERVE, COMMIT and DEBIT adds an entry and most accounts keep
/// hundreds, so the entry size is most of an active account's memory. As
/// structs they took 56 bytes each; packed they take about 16: op, id
/// length, id, varint instant, varint amount, and a trailing byte with the
/// entry's length so the newest entries are read from the back without
/// decoding the rest (the write-behind reads the newest one or two on every
/// write). Sequence numbers are implicit: entries are consecutive and only
/// ever leave from the front.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct History {
    bytes: VecDeque<u8>,
    len: u32,
    /// Sequence number of the newest entry (0: none yet).
    last_seq: u64,
}

/// Longest packed entry: op, id length, id, two u64 varints, length byte.
const MAX_ENTRY_BYTES: usize = 2 + MAX_ID_BYTES + 2 * 10 + 1;
const _: () = assert!(
    MAX_ENTRY_BYTES <= u8::MAX as usize,
    "the length byte holds it"
);

fn put_varint(buf: &mut [u8; MAX_ENTRY_BYTES], mut at: usize, mut v: u64) -> usize {
    loop {
        let byte = (v & 0x7f) as u8;
        v >>= 7;
        if v == 0 {
            buf[at] = byte;
            return at + 1;
        }
        buf[at] = byte | 0x80;
        at += 1;
    }
}

impl History {
    pub fn len(&self) -> usize {
        self.len as usize
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Reads the newest entry's last byte (where the next entry goes), for
    /// [`crate::Engine::prefetch`].
    #[inline]
    pub fn touch(&self) -> u64 {
        self.bytes.back().map_or(0, |b| u64::from(*b))
    }

    /// Sequence number of the newest entry (0 if none was ever logged).
    pub fn last_seq(&self) -> u64 {
        self.last_seq
    }

    /// Appends an entry, dropping the oldest ones beyond `cap` entries.
    pub fn push(&mut self, cap: usize, at_ms: u64, op: Op, id: &[u8], amount: u64) {
        assert!(id.len() <= MAX_ID_BYTES, "ids are validated");
        while self.len as usize >= cap.max(1) {
            self.pop_front();
        }
        let mut buf = [0u8; MAX_ENTRY_BYTES];
        buf[0] = op as u8;
        buf[1] = id.len() as u8;
        buf[2..2 + id.len()].copy_from_slice(id);
        let n = put_varint(&mut buf, 2 + id.len(), at_ms);
        let n = put_varint(&mut buf, n, amount);
        buf[n] = (n + 1) as u8;
        let n = n + 1;
        // The first entry allocates exactly (many accounts log one grant and
        // nothing more); later ones grow the buffer by doubling.
        if self.bytes.capacity() == 0 {
            self.bytes.reserve_exact(n);
        }
        self.bytes.extend(&buf[..n]);
        self.len += 1;
        self.last_seq += 1;
    }

    fn pop_front(&mut self) {
        if self.len == 0 {
            return;
        }
        // The oldest entry's length: walk its fields (its length byte is last).
        let mut i = 2 + self.bytes[1] as usize;
        for _ in 0..2 {
            while self.bytes[i] & 0x80 != 0 {
                i += 1;
            }
            i += 1;
        }
        debug_assert_eq!(self.bytes[i] as usize, i + 1);
        self.bytes.drain(..=i);
        self.len -= 1;
    }

    /// Decodes the entry whose bytes start at `at`.
    fn decode(&self, mut at: usize, seq: u64) -> HistoryEntry {
        let op = Op::from_byte(self.bytes[at]).expect("packed by push");
        let id_len = self.bytes[at + 1] as usize;
        let mut id = [0u8; MAX_ID_BYTES];
        for (dst, src) in id.iter_mut().zip(self.bytes.range(at + 2..at + 2 + id_len)) {
            *dst = *src;
        }
        at += 2 + id_len;
        let mut varint = || {
            let mut v = 0u64;
            let mut shift = 0;
            loop {
                let b = self.bytes[at];
                at += 1;
                v |= u64::from(b & 0x7f) << shift;
                if b & 0x80 == 0 {
                    return v;
                }
                shift += 7;
            }
        };
        let at_ms = varint();
        let amount = varint();
        HistoryEntry {
            seq,
            at_ms,
            op,
            id: Id::new(&id[..id_len]),
            amount,
        }
    }

    /// Up to `count` entries, newest first: decodes only those, from the back.
    pub fn newest(&self, count: usize) -> Vec<HistoryEntry> {
        let count = count.min(self.len as usize);
        let mut out = Vec::with_capacity(count);
        let mut end = self.bytes.len();
        for k in 0..count as u64 {
            let start = end - self.bytes[end - 1] as usize;
            out.push(self.decode(start, self.last_seq - k));
            end = start;
        }
        out
    }

    /// Every entry, oldest first.
    pub fn entries(&self) -> Vec<HistoryEntry> {
        let mut all = self.newest(self.len as usize);
        all.reverse();
        all
    }
}

/// Stored (snapshots, Redis) as the newest sequence number and the entries,
/// independent of the packing.
#[derive(Serialize, Deserialize)]
struct HistoryForm {
    last_seq: u64,
    entries: Vec<(u64, Op, Id, u64)>,
}

impl Serialize for History {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        HistoryForm {
            last_seq: self.last_seq,
            entries: self
                .entries()
                .into_iter()
                .map(|e| (e.at_ms, e.op, e.id, e.amount))
                .collect(),
        }
        .serialize(s)
    }
}

impl<'de> Deserialize<'de> for History {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<History, D::Error> {
        let form = HistoryForm::deserialize(d)?;
        if (form.entries.len() as u64) > form.last_seq {
            return Err(D::Error::custom("history longer than its sequence"));
        }
        let mut h = History::default();
        for (at_ms, op, id, amount) in &form.entries {
            h.push(usize::MAX, *at_ms, *op, id, *amount);
        }
        h.last_seq = form.last_seq;
        Ok(h)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn packed_entries_read_back_with_their_sequence_numbers() {
        let mut h = History::default();
        let long_id = [7u8; MAX_ID_BYTES];
        for n in 0..50u64 {
            let id: &[u8] = if n % 7 == 0 { &long_id } else { b"h:1" };
            h.push(
                10,
                n * 1_000_000_007,
                Op::ALL[(n % 13) as usize],
                id,
                n << 40,
            );
        }
        assert_eq!(h.len(), 10);
        assert_eq!(h.last_seq(), 50);
        let all = h.entries();
        assert_eq!(all.len(), 10);
        for (i, e) in all.iter().enumerate() {
            let n = 40 + i as u64;
            assert_eq!(e.seq, n + 1);
            assert_eq!(e.at_ms, n * 1_000_000_007);
            assert_eq!(e.amount, n << 40);
            assert_eq!(e.op, Op::ALL[(n % 13) as usize]);
        }
        // From the back, without decoding the rest: the same entries.
        let newest_3: Vec<HistoryEntry> = all[7..].iter().rev().cloned().collect();
        assert_eq!(h.newest(3), newest_3);
        assert_eq!(h.newest(3)[0].seq, 50);
        assert_eq!(h.newest(100).len(), 10);
        assert!(History::default().newest(5).is_empty());
        let bytes = postcard::to_allocvec(&h).unwrap();
        let back: History = postcard::from_bytes(&bytes).unwrap();
        assert_eq!(back, h);
    }
}
