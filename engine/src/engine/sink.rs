//! Where the engine's journal records go: the on-disk journal (the server
//! puts it behind this trait), or a journal in memory for tests and benchmarks.

use parking_lot::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

/// Where the engine puts its journal records. The server implements it over
/// the on-disk journal; tests and benchmarks use [`MemoryJournal`].
pub trait JournalSink: Send + Sync {
    /// False when too much is waiting for the disk: mutations are refused with BUSY.
    fn has_capacity(&self) -> bool {
        true
    }
    /// Appends one record, written by `write` into the journal's buffer.
    /// Returns its sequence number. Called with a shard lock held: must be cheap.
    fn append(&self, write: &mut dyn FnMut(&mut Vec<u8>)) -> u64;
}

/// A journal that keeps nothing but a sequence number (and optionally the
/// records, for tests that replay them).
#[derive(Default)]
pub struct MemoryJournal {
    seq: AtomicU64,
    keep: bool,
    records: Mutex<Vec<(u64, Vec<u8>)>>,
    scratch: Mutex<Vec<u8>>,
}

impl MemoryJournal {
    /// A journal that discards records (benchmarks).
    pub fn discarding() -> Self {
        MemoryJournal::default()
    }

    /// A journal that keeps every record (replay tests).
    pub fn keeping() -> Self {
        MemoryJournal {
            keep: true,
            ..Default::default()
        }
    }

    /// A journal that keeps `records` (a restarted process's data dir) and
    /// numbers new ones after the last of them.
    pub fn continuing(records: Vec<(u64, Vec<u8>)>) -> Self {
        let last_seq = records.last().map_or(0, |(seq, _)| *seq);
        MemoryJournal {
            seq: AtomicU64::new(last_seq),
            keep: true,
            records: Mutex::new(records),
            ..Default::default()
        }
    }

    pub fn records(&self) -> Vec<(u64, Vec<u8>)> {
        self.records.lock().clone()
    }
}

impl JournalSink for MemoryJournal {
    fn append(&self, write: &mut dyn FnMut(&mut Vec<u8>)) -> u64 {
        let mut scratch = self.scratch.lock();
        scratch.clear();
        write(&mut scratch);
        let seq = self.seq.fetch_add(1, Ordering::Relaxed) + 1;
        if self.keep {
            self.records.lock().push((seq, scratch.clone()));
        }
        seq
    }
}
