//! # creditd-journal
//!
//! The on-disk journal: an append-only log of opaque records (the engine encodes them) that lets
//! creditd answer a client only after its change is written, and come back whole after `kill -9`.
//! It knows nothing of accounts or credits: payloads are bytes, and recovery hands them back in
//! order to callbacks. The server puts it behind the engine's journal sink.
//!
//! Data dir: `journal-<first_seq:020>.log` segments of frames (see [`FRAME_VERSION`]) with contiguous seqs 1, 2, 3...
//! across segments, and `snapshot-<first_seq:020>.snap` images that cover every record before
//! `first_seq`. Segments are bounded in size so a snapshot can delete the old ones. The one
//! exception to contiguity: [`Journal::open_with`] may be asked to continue numbering beyond the
//! records on disk (state restored from elsewhere, e.g. Redis, already carries higher seqs); it
//! then writes a `gap-<first_seq:020>.mark` file before the segment that starts after the jump,
//! and recovery accepts that one jump.
//!
//! Why one writer thread with group commit: the engine appends while it holds an account shard
//! lock, so an append only copies a frame into a shared buffer. The writer takes the whole buffer
//! at once and issues one write(2) (and in `always` mode one fsync) for every record that arrived
//! meanwhile: the cost of a syscall is shared by all requests waiting on it, so throughput rises
//! with load. Replies wait for [`Journal::durable_seq`] (or `on_durable`) to pass their seq.

#![forbid(unsafe_code)]

mod frame;
mod fsync;
mod store;
mod writer;

#[cfg(test)]
mod fault_tests;
#[cfg(test)]
mod tests;

use std::fmt;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering::{Acquire, Relaxed};
use std::sync::atomic::{AtomicBool, AtomicU64};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use parking_lot::{Condvar, Mutex};

use frame::{begin_frame, seal_frame};
pub use frame::{
    decode_frame, encode_frame, Decoded, FRAME_HEADER_BYTES, FRAME_PAYLOAD_MAX_BYTES, FRAME_VERSION,
};
pub use fsync::FsyncMode;
pub use store::SNAPSHOT_FILE_VERSION;
use writer::Segment;

/// A segment is closed and a new one started once it holds this much.
pub const SEGMENT_MAX_BYTES: u64 = 64 << 20;
/// Appended but unwritten bytes beyond which [`Journal::has_capacity`] says no.
pub const BUFFER_MAX_BYTES: u64 = 64 << 20;
/// How long [`Journal::rotate`] waits for the writer to open the new segment.
pub const ROTATE_TIMEOUT_MS: u64 = 10_000;
/// Bound on segment switches waiting for the writer.
const ROTATIONS_PENDING_MAX: usize = 1_024;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum JournalErrorKind {
    /// The file system failed.
    Io,
    /// The files hold damaged or missing records; recovery refuses to guess.
    Corrupt,
    /// A replay callback rejected a record.
    Replay,
}

/// Where opening or replaying the journal failed. Display: `<file> at offset <n>: <message>`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct JournalError {
    pub kind: JournalErrorKind,
    pub file: PathBuf,
    pub offset: u64,
    pub message: String,
}

impl JournalError {
    fn new(kind: JournalErrorKind, file: &Path, offset: u64, message: String) -> JournalError {
        JournalError {
            kind,
            file: file.to_path_buf(),
            offset,
            message,
        }
    }
    pub(crate) fn io(file: &Path, error: io::Error) -> JournalError {
        JournalError::new(JournalErrorKind::Io, file, 0, error.to_string())
    }
    pub(crate) fn corrupt(file: &Path, offset: u64, message: String) -> JournalError {
        JournalError::new(JournalErrorKind::Corrupt, file, offset, message)
    }
    pub(crate) fn replay(file: &Path, offset: u64, message: String) -> JournalError {
        JournalError::new(JournalErrorKind::Replay, file, offset, message)
    }
}

impl fmt::Display for JournalError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} at offset {}: {}",
            self.file.display(),
            self.offset,
            self.message
        )
    }
}

impl std::error::Error for JournalError {}

/// What recovery did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct OpenReport {
    /// First seq of the snapshot handed to `replay_snapshot`, if any.
    pub snapshot_seq: Option<u64>,
    pub records_replayed: u64,
    /// The last segment and the offset where an unacknowledged torn write was cut off.
    pub torn_tail: Option<(PathBuf, u64)>,
    /// Highest seq on disk; the next append gets `last_seq + 1`. Raised to `min_next_seq - 1`
    /// when [`Journal::open_with`] jumped the numbering.
    pub last_seq: u64,
    /// Snapshots skipped because they failed their checks.
    pub warnings: Vec<String>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct JournalStats {
    pub fsync_mode: FsyncMode,
    pub bytes_written: u64,
    pub records_written: u64,
    pub groups_written: u64,
    pub fsyncs: u64,
    pub last_write_latency_ns: u64,
    pub last_fsync_latency_ns: u64,
    pub segment_count: u64,
    pub current_segment_bytes: u64,
    /// Appended but not yet written.
    pub pending_bytes: u64,
    pub write_errors: u64,
    /// The writer stopped on an error: nothing more becomes durable until a restart.
    pub writer_failed: bool,
    pub last_seq: u64,
    pub durable_seq: u64,
}

/// A segment switch inside the append buffer: frames from `offset` on have seq >= `first_seq`.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Rotation {
    offset: usize,
    first_seq: u64,
}

pub(crate) struct State {
    /// Frames appended but not yet taken by the writer.
    buf: Vec<u8>,
    /// Segment switches inside `buf`, in offset order.
    rotations: Vec<Rotation>,
    last_seq: u64,
    /// The segment appends go to now (the writer may still be behind).
    segment_first_seq: u64,
    segment_bytes: u64,
    /// The segment the writer has open.
    writer_segment_first_seq: u64,
    shutdown: bool,
}

#[derive(Default)]
pub(crate) struct Counters {
    bytes_written: AtomicU64,
    records: AtomicU64,
    groups: AtomicU64,
    fsyncs: AtomicU64,
    last_write_latency_ns: AtomicU64,
    last_fsync_latency_ns: AtomicU64,
    segments: AtomicU64,
    segment_bytes: AtomicU64,
    write_errors: AtomicU64,
}

/// What the writer thread reports to an observer (metrics), after the fact.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum JournalEvent {
    /// One group written with one write(2).
    Write { latency_ns: u64, bytes: u64 },
    /// One fsync.
    Fsync { latency_ns: u64 },
}

/// An observer of writer events (called on the writer thread: must be cheap).
pub type JournalObserver = Box<dyn Fn(JournalEvent) + Send + Sync>;

/// Where the writer is about to touch the disk (for [`Journal::inject_faults`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DiskOp {
    /// Appending `bytes` to the current segment.
    Write { bytes: usize },
    /// fsync of the current segment.
    Sync,
    /// Creating the next segment.
    Create,
}

/// An injected disk fault.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fault {
    /// The operation fails with this error and does nothing.
    Fail(io::ErrorKind),
    /// A write stores only its first `n` bytes, then fails (the disk filled).
    Short(usize),
}

/// Decides, for each disk operation, whether it fails (tests only: the
/// fault-injection tests run the real writer against them).
pub type FaultHook = Box<dyn Fn(DiskOp) -> Option<Fault> + Send + Sync>;

pub(crate) struct Shared {
    dir: PathBuf,
    mode: FsyncMode,
    on_durable: Box<dyn Fn(u64) + Send + Sync>,
    observer: std::sync::OnceLock<JournalObserver>,
    faults: std::sync::OnceLock<FaultHook>,
    state: Mutex<State>,
    writer_wake: Condvar,
    segment_opened: Condvar,
    stopping: AtomicBool,
    failed: AtomicBool,
    /// A write or segment creation is failing and being retried (disk full,
    /// EIO): set on the first failure, cleared by the first success.
    stalled: AtomicBool,
    /// What failed last, for operators (`Journal::write_problem`).
    problem: Mutex<String>,
    durable_seq: AtomicU64,
    appended_bytes: AtomicU64,
    written_bytes: AtomicU64,
    counters: Counters,
    /// The segment being appended to. Whoever writes (the writer thread, or
    /// a caller of [`Journal::write_inline`]) holds this lock from taking
    /// the buffer until the durable seq is published, so groups reach the
    /// file, and seqs become durable, in order.
    segment: Mutex<Segment>,
    /// Written since the last fsync (the EverySec timer's business).
    unsynced: AtomicBool,
    /// Callers write inline ([`Journal::set_inline_writes`]): appends do not
    /// wake the writer thread.
    inline_writes: AtomicBool,
}

/// The journal of one data dir. Send + Sync: share it behind an `Arc`.
pub struct Journal {
    shared: Arc<Shared>,
    writer: Mutex<Option<JoinHandle<io::Result<()>>>>,
    snapshot_lock: Mutex<()>,
}

/// Replays the data dir without changing it (for inspection tools): the latest valid snapshot,
/// then every later record in seq order.
pub fn replay(
    dir: &Path,
    replay_snapshot: impl FnOnce(u64, &[u8]) -> Result<(), String>,
    replay: impl FnMut(u64, &[u8]) -> Result<(), String>,
) -> Result<OpenReport, JournalError> {
    Ok(store::recover(dir, replay_snapshot, replay)?.report)
}

impl Journal {
    /// Opens (creating) the data dir and recovers: `replay_snapshot(first_seq, body)` gets the
    /// latest valid snapshot, then `replay(seq, payload)` every record of the later segments in
    /// seq order (records the snapshot already covers included: the caller skips them). A torn
    /// tail of the last segment is cut off; damage anywhere else is an error naming the file and
    /// offset. Then starts the writer thread, which calls `on_durable(seq)` after every group
    /// with the highest seq written (and fsynced in `always` mode).
    pub fn open(
        dir: &Path,
        mode: FsyncMode,
        on_durable: Box<dyn Fn(u64) + Send + Sync>,
        replay_snapshot: impl FnOnce(u64, &[u8]) -> Result<(), String>,
        replay: impl FnMut(u64, &[u8]) -> Result<(), String>,
    ) -> Result<(Journal, OpenReport), JournalError> {
        Journal::open_with(dir, mode, 1, on_durable, replay_snapshot, replay)
    }

    /// [`Journal::open`], and appends continue at `min_next_seq` or later: when the records on
    /// disk end before `min_next_seq - 1` (an empty data dir, or a tail lost with the machine),
    /// a new segment starts at `min_next_seq` behind a durable gap marker. For state recovered
    /// from elsewhere (Redis) that already carries seqs up to `min_next_seq - 1`: new records
    /// must number after them, or replay would take them for already applied.
    pub fn open_with(
        dir: &Path,
        mode: FsyncMode,
        min_next_seq: u64,
        on_durable: Box<dyn Fn(u64) + Send + Sync>,
        replay_snapshot: impl FnOnce(u64, &[u8]) -> Result<(), String>,
        replay: impl FnMut(u64, &[u8]) -> Result<(), String>,
    ) -> Result<(Journal, OpenReport), JournalError> {
        std::fs::create_dir_all(dir).map_err(|e| JournalError::io(dir, e))?;
        let recovery = store::recover(dir, replay_snapshot, replay)?;
        let mut report = recovery.report;
        if let Some(snapshot_seq) = report.snapshot_seq {
            // Left over when a crash came between writing a snapshot and deleting what it covers.
            store::remove_before(dir, snapshot_seq).map_err(|e| JournalError::io(dir, e))?;
        }
        let jump = min_next_seq > report.last_seq + 1;
        let create_after_jump = || {
            store::write_gap_marker(dir, min_next_seq)
                .and_then(|()| Segment::create(dir, min_next_seq))
                .map_err(|e| JournalError::io(dir, e))
        };
        let (segment, segment_count) = match recovery.last_segment {
            Some((first_seq, path, bytes_valid)) => {
                // Opening cuts a torn tail, which must not stay in a segment that is not the last.
                let segment = Segment::open_at(path.clone(), first_seq, bytes_valid)
                    .map_err(|e| JournalError::io(&path, e))?;
                if jump {
                    drop(segment);
                    (create_after_jump()?, recovery.segment_count + 1)
                } else {
                    (segment, recovery.segment_count)
                }
            }
            None if jump => (create_after_jump()?, 1),
            None => (
                Segment::create(dir, report.last_seq + 1).map_err(|e| JournalError::io(dir, e))?,
                1,
            ),
        };
        if jump {
            report.last_seq = min_next_seq - 1;
        }
        assert!(
            segment.first_seq <= report.last_seq + 1,
            "appends continue the last segment"
        );
        let counters = Counters::default();
        counters.segments.store(segment_count, Relaxed);
        counters.segment_bytes.store(segment.bytes, Relaxed);
        let shared = Arc::new(Shared {
            dir: dir.to_path_buf(),
            mode,
            on_durable,
            observer: std::sync::OnceLock::new(),
            faults: std::sync::OnceLock::new(),
            state: Mutex::new(State {
                buf: Vec::with_capacity(1 << 20),
                rotations: Vec::new(),
                last_seq: report.last_seq,
                segment_first_seq: segment.first_seq,
                segment_bytes: segment.bytes,
                writer_segment_first_seq: segment.first_seq,
                shutdown: false,
            }),
            writer_wake: Condvar::new(),
            segment_opened: Condvar::new(),
            stopping: AtomicBool::new(false),
            failed: AtomicBool::new(false),
            stalled: AtomicBool::new(false),
            problem: Mutex::new(String::new()),
            durable_seq: AtomicU64::new(report.last_seq),
            appended_bytes: AtomicU64::new(0),
            written_bytes: AtomicU64::new(0),
            counters,
            segment: Mutex::new(segment),
            unsynced: AtomicBool::new(false),
            inline_writes: AtomicBool::new(false),
        });
        let thread_shared = Arc::clone(&shared);
        let handle = std::thread::Builder::new()
            .name("creditd-journal".into())
            .spawn(move || writer::run(thread_shared))
            .map_err(|e| JournalError::io(dir, e))?;
        let journal = Journal {
            shared,
            writer: Mutex::new(Some(handle)),
            snapshot_lock: Mutex::new(()),
        };
        Ok((journal, report))
    }

    /// Appends one record and returns its seq. Cheap enough to call under a shard lock: the frame
    /// header is reserved, `write_payload` appends the payload straight into the shared buffer
    /// (no allocation per record), the header is sealed, and the writer is woken. It must only
    /// append to the Vec. The record is durable once `durable_seq() >= seq`.
    pub fn append(&self, write_payload: &mut dyn FnMut(&mut Vec<u8>)) -> u64 {
        let mut state = self.shared.state.lock();
        let seq = state.last_seq + 1;
        if state.segment_bytes >= SEGMENT_MAX_BYTES {
            assert!(
                state.rotations.len() < ROTATIONS_PENDING_MAX,
                "writer far behind on rotations"
            );
            let offset = state.buf.len();
            state.rotations.push(Rotation {
                offset,
                first_seq: seq,
            });
            (state.segment_first_seq, state.segment_bytes) = (seq, 0);
        }
        let start = begin_frame(&mut state.buf);
        write_payload(&mut state.buf);
        let frame_bytes = seal_frame(&mut state.buf, start, seq) as u64;
        state.last_seq = seq;
        state.segment_bytes += frame_bytes;
        self.shared.appended_bytes.fetch_add(frame_bytes, Relaxed);
        drop(state);
        if !self.shared.inline_writes.load(Relaxed) {
            self.shared.writer_wake.notify_one();
        }
        seq
    }

    /// Callers make their records durable themselves with
    /// [`Journal::write_inline`] (falling back to [`Journal::wake_writer`]),
    /// so an append no longer wakes the writer thread: in the common case
    /// no thread hands work to another. The writer thread still fsyncs,
    /// rotates, retries failed writes, and looks for stray appends every
    /// few milliseconds.
    pub fn set_inline_writes(&self, on: bool) {
        self.shared.inline_writes.store(on, Relaxed);
        self.shared.writer_wake.notify_one();
    }

    /// Writes everything appended so far in the calling thread, as Redis
    /// writes its AOF before replying, when that is cheap and safe: not in
    /// `always` mode (an fsync does not belong on a caller's thread), not
    /// while a write fails or a rotation waits, and not while someone else
    /// is writing (they take this caller's records too, or the writer thread
    /// does once woken). True when `seq` is durable after it; false: wait
    /// for the durable seq as usual (after [`Journal::wake_writer`]).
    pub fn write_inline(&self, seq: u64) -> bool {
        writer::write_inline(&self.shared, seq)
    }

    /// Whether callers write inline (see [`Journal::set_inline_writes`]).
    pub fn inline_writes(&self) -> bool {
        self.shared.inline_writes.load(Relaxed)
    }

    /// Wakes the writer thread to write what was appended.
    pub fn wake_writer(&self) {
        self.shared.writer_wake.notify_one();
    }

    /// Makes disk operations fail as `hook` decides, from now on (once;
    /// later calls are ignored). For fault-injection tests.
    pub fn inject_faults(&self, hook: FaultHook) {
        let _ = self.shared.faults.set(hook);
    }

    /// Installs an observer of write and fsync latencies (once; later calls are ignored).
    pub fn set_observer(&self, observer: JournalObserver) {
        let _ = self.shared.observer.set(observer);
    }

    /// False while the writer cannot write (it retries: disk full, EIO),
    /// has stopped on an error, or more than [`BUFFER_MAX_BYTES`] wait for
    /// the disk: the engine then refuses new mutations with BUSY rather than
    /// buffer without bound or apply changes it cannot make durable.
    pub fn has_capacity(&self) -> bool {
        let pending_bytes = self.pending_bytes();
        pending_bytes < BUFFER_MAX_BYTES
            && !self.shared.failed.load(Relaxed)
            && !self.shared.stalled.load(Relaxed)
    }

    /// Why nothing can be made durable now, if so: the writer is retrying a
    /// failed write, or it stopped on an error (only a restart helps).
    pub fn write_problem(&self) -> Option<String> {
        let problem = || self.shared.problem.lock().clone();
        if self.shared.failed.load(Relaxed) {
            Some(format!(
                "the journal writer stopped after an error ({}); restart creditd",
                problem()
            ))
        } else if self.shared.stalled.load(Relaxed) {
            Some(format!(
                "the journal cannot write ({}); retrying",
                problem()
            ))
        } else {
            None
        }
    }

    fn pending_bytes(&self) -> u64 {
        let written = self.shared.written_bytes.load(Relaxed);
        self.shared
            .appended_bytes
            .load(Relaxed)
            .saturating_sub(written)
    }

    /// Highest seq written (and fsynced in `always` mode); every lower seq is too.
    pub fn durable_seq(&self) -> u64 {
        self.shared.durable_seq.load(Acquire)
    }

    /// Starts a new segment: records appended after this call go to it. Returns its first seq
    /// once the writer has created it (a no-op if the current segment is still empty). Call it,
    /// then take a fuzzy snapshot of the state, then [`Journal::write_snapshot`] with this seq.
    pub fn rotate(&self) -> io::Result<u64> {
        let mut state = self.shared.state.lock();
        let first_seq = state.last_seq + 1;
        if state.segment_first_seq != first_seq {
            if state.rotations.len() >= ROTATIONS_PENDING_MAX {
                return Err(io::Error::other(
                    "too many rotations waiting for the journal writer",
                ));
            }
            let offset = state.buf.len();
            state.rotations.push(Rotation { offset, first_seq });
            (state.segment_first_seq, state.segment_bytes) = (first_seq, 0);
            self.shared.writer_wake.notify_one();
        }
        let deadline = Instant::now() + Duration::from_millis(ROTATE_TIMEOUT_MS);
        while state.writer_segment_first_seq < first_seq {
            if self.shared.failed.load(Relaxed) {
                return Err(io::Error::other("journal writer failed"));
            }
            if self
                .shared
                .segment_opened
                .wait_until(&mut state, deadline)
                .timed_out()
            {
                return Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "journal writer did not open the segment",
                ));
            }
        }
        Ok(first_seq)
    }

    /// Writes a snapshot covering every record before `first_seq` (a seq returned by
    /// [`Journal::rotate`]) atomically: tmp file, fsync, rename, fsync dir. Then deletes the
    /// segments and snapshots before `first_seq`, which recovery no longer needs.
    pub fn write_snapshot(&self, first_seq: u64, body: &[u8]) -> io::Result<()> {
        let _serial = self.snapshot_lock.lock();
        let writer_first_seq = self.shared.state.lock().writer_segment_first_seq;
        let dir = &self.shared.dir;
        if first_seq == 0
            || first_seq > writer_first_seq
            || !store::segment_path(dir, first_seq).exists()
        {
            let message = format!(
                "snapshot seq {first_seq} is not the start of a segment the writer reached"
            );
            return Err(io::Error::new(io::ErrorKind::InvalidInput, message));
        }
        store::write_snapshot_file(dir, first_seq, body)?;
        let removed = store::remove_before(dir, first_seq)?;
        self.shared.counters.segments.fetch_sub(removed, Relaxed);
        Ok(())
    }

    /// Writes and fsyncs everything appended so far, then stops the writer. Records appended
    /// afterwards are never written. Idempotent.
    pub fn shutdown(&self) -> io::Result<()> {
        let Some(handle) = self.writer.lock().take() else {
            return Ok(());
        };
        self.shared.state.lock().shutdown = true;
        self.shared.stopping.store(true, Relaxed);
        self.shared.writer_wake.notify_one();
        match handle.join() {
            Ok(result) => result,
            Err(_) => Err(io::Error::other("journal writer panicked")),
        }
    }

    pub fn stats(&self) -> JournalStats {
        let counters = &self.shared.counters;
        JournalStats {
            fsync_mode: self.shared.mode,
            bytes_written: counters.bytes_written.load(Relaxed),
            records_written: counters.records.load(Relaxed),
            groups_written: counters.groups.load(Relaxed),
            fsyncs: counters.fsyncs.load(Relaxed),
            last_write_latency_ns: counters.last_write_latency_ns.load(Relaxed),
            last_fsync_latency_ns: counters.last_fsync_latency_ns.load(Relaxed),
            segment_count: counters.segments.load(Relaxed),
            current_segment_bytes: counters.segment_bytes.load(Relaxed),
            pending_bytes: self.pending_bytes(),
            write_errors: counters.write_errors.load(Relaxed),
            writer_failed: self.shared.failed.load(Relaxed),
            last_seq: self.shared.state.lock().last_seq,
            durable_seq: self.durable_seq(),
        }
    }
}

impl Drop for Journal {
    fn drop(&mut self) {
        if let Err(error) = self.shutdown() {
            eprintln!("creditd journal: shutdown on drop failed: {error}");
        }
    }
}
