//! The writer thread: takes everything appended so far, writes it with one write(2) per segment
//! touched, fsyncs per the mode, then publishes the durable seq.

use std::fs::{File, OpenOptions};
use std::io::{self, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering::{Acquire, Relaxed, Release};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::store::{segment_path, sync_dir};
use super::{DiskOp, Fault, FsyncMode, JournalEvent, Rotation, Shared};

/// EverySec fsyncs at most this often, like Redis AOF `everysec`.
const EVERYSEC_INTERVAL_MS: u64 = 1_000;
/// Longest idle wait, so the EverySec timer and shutdown are noticed without an append.
const WRITER_IDLE_WAIT_MS: u64 = 1_000;
const RETRY_BACKOFF_MIN_MS: u64 = 10;
const RETRY_BACKOFF_MAX_MS: u64 = 1_000;

/// The segment file the writer appends to.
pub(crate) struct Segment {
    file: File,
    path: PathBuf,
    pub first_seq: u64,
    /// Bytes written to the file: the offset of the next write.
    pub bytes: u64,
    /// A failed write left the file offset unknown: seek before the next write.
    needs_seek: bool,
    /// The spare group buffer of inline writes ([`write_inline`]): kept with the segment,
    /// under its lock, which every inline write holds anyway.
    pub inline_spare: Vec<u8>,
}

impl Segment {
    /// Creates an empty segment (or reuses an empty file left by a failed earlier attempt).
    pub fn create(dir: &Path, first_seq: u64) -> io::Result<Segment> {
        let path = segment_path(dir, first_seq);
        let file = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)?;
        if file.metadata()?.len() != 0 {
            let message = format!("{} already exists and is not empty", path.display());
            return Err(io::Error::new(io::ErrorKind::AlreadyExists, message));
        }
        sync_dir(dir)?;
        Ok(Segment {
            file,
            path,
            first_seq,
            bytes: 0,
            needs_seek: false,
            inline_spare: Vec::new(),
        })
    }

    /// Opens the recovered last segment for appending after its `bytes_valid` bytes, cutting
    /// (and fsyncing the cut of) a torn tail so new frames follow the last complete one.
    pub fn open_at(path: PathBuf, first_seq: u64, bytes_valid: u64) -> io::Result<Segment> {
        let mut file = OpenOptions::new().write(true).open(&path)?;
        let bytes_on_disk = file.metadata()?.len();
        assert!(
            bytes_valid <= bytes_on_disk,
            "recovery saw more bytes than the file has"
        );
        if bytes_valid < bytes_on_disk {
            file.set_len(bytes_valid)?;
            file.sync_all()?;
        }
        file.seek(SeekFrom::Start(bytes_valid))?;
        Ok(Segment {
            file,
            path,
            first_seq,
            bytes: bytes_valid,
            needs_seek: false,
            inline_spare: Vec::new(),
        })
    }

    /// Writes all of `bytes` at the end, or nothing: a partial write is cut back so that a retry
    /// does not leave a torn frame in the middle of the segment.
    fn write(&mut self, bytes: &[u8], fault: Option<Fault>) -> io::Result<()> {
        if self.needs_seek {
            self.file.set_len(self.bytes)?;
            self.file.seek(SeekFrom::Start(self.bytes))?;
            self.needs_seek = false;
        }
        let written = match fault {
            None => self.file.write_all(bytes),
            Some(Fault::Fail(kind)) => Err(io::Error::from(kind)),
            Some(Fault::Short(n)) => self
                .file
                .write_all(&bytes[..n.min(bytes.len())])
                .and(Err(io::Error::from(io::ErrorKind::StorageFull))),
        };
        match written {
            Ok(()) => {
                self.bytes += bytes.len() as u64;
                Ok(())
            }
            Err(error) => {
                self.needs_seek = true;
                Err(error)
            }
        }
    }
}

/// Runs the writer until shutdown or a fatal error; on error, marks the journal failed so
/// `durable_seq` stops and the engine refuses work.
pub(crate) fn run(shared: Arc<Shared>) -> io::Result<()> {
    let result = run_loop(&shared);
    if let Err(error) = &result {
        eprintln!(
            "creditd journal: writer stopped on {}: {error}",
            shared.segment.lock().path.display()
        );
        *shared.problem.lock() = error.to_string();
        // Under the state lock, so a `rotate` between its check and its wait cannot miss it.
        let _state = shared.state.lock();
        shared.failed.store(true, Release);
    }
    shared.segment_opened.notify_all();
    result
}

/// How long the writer thread sleeps while callers write inline: it only
/// picks up appends that no caller wrote (a safety net) and runs the timer.
const INLINE_POLL_MS: u64 = 5;

fn run_loop(shared: &Shared) -> io::Result<()> {
    // The spare buffers swap with the shared ones, so each group reuses the allocation of the
    // one before: appends never wait for the disk, and no group allocates.
    let mut group: Vec<u8> = Vec::with_capacity(1 << 20);
    let mut rotations: Vec<Rotation> = Vec::new();
    let mut last_sync = Instant::now();
    let everysec = Duration::from_millis(EVERYSEC_INTERVAL_MS);
    loop {
        assert!(group.is_empty() && rotations.is_empty());
        {
            let mut state = shared.state.lock();
            if state.buf.is_empty() && state.rotations.is_empty() && !state.shutdown {
                let idle_ms = if shared.inline_writes.load(Relaxed) {
                    INLINE_POLL_MS
                } else {
                    WRITER_IDLE_WAIT_MS
                };
                let mut wait = Duration::from_millis(idle_ms);
                if shared.mode == FsyncMode::EverySec && shared.unsynced.load(Relaxed) {
                    wait = wait.min(everysec.saturating_sub(last_sync.elapsed()));
                }
                shared.writer_wake.wait_for(&mut state, wait);
            }
        }
        // The segment first, then the buffer: whoever holds the segment writes groups in order.
        let mut segment = shared.segment.lock();
        let (last_seq, shutdown) = {
            let mut state = shared.state.lock();
            std::mem::swap(&mut state.buf, &mut group);
            std::mem::swap(&mut state.rotations, &mut rotations);
            (state.last_seq, state.shutdown)
        };
        let seq_written = shared.durable_seq.load(Relaxed);
        assert!(last_seq >= seq_written, "seqs only increase");
        assert_eq!(
            group.is_empty(),
            last_seq == seq_written,
            "a group holds exactly the new seqs"
        );
        if !group.is_empty() || !rotations.is_empty() {
            let started = Instant::now();
            let mut start = 0;
            for rotation in rotations.drain(..) {
                write_retrying(shared, &mut segment, &group[start..rotation.offset])?;
                switch_segment(shared, &mut segment, rotation.first_seq)?;
                start = rotation.offset;
            }
            write_retrying(shared, &mut segment, &group[start..])?;
            if !group.is_empty() {
                shared.unsynced.store(true, Relaxed);
            }
            if shared.mode == FsyncMode::Always && shared.unsynced.load(Relaxed) {
                sync(shared, &segment)?;
                shared.unsynced.store(false, Relaxed);
                last_sync = Instant::now();
            }
            published(
                shared,
                &segment,
                started,
                group.len(),
                seq_written,
                last_seq,
            );
            group.clear();
        }
        if shutdown {
            return sync(shared, &segment);
        }
        let sync_due = shared.mode == FsyncMode::EverySec
            && shared.unsynced.load(Relaxed)
            && last_sync.elapsed() >= everysec;
        if sync_due {
            // As Redis's background fsync: on a second handle of the file, after the segment
            // is unlocked, so writes (inline ones included) go on while the disk syncs. What
            // is written after `unsynced` is cleared here waits for the next second.
            shared.unsynced.store(false, Relaxed);
            match segment.file.try_clone() {
                Ok(file) => {
                    drop(segment);
                    sync_file(shared, &file)?;
                }
                Err(_) => sync(shared, &segment)?,
            }
            last_sync = Instant::now();
        }
    }
}

/// After a group of `bytes` holding seqs `seq_written + 1 ..= last_seq` reached the file (and
/// the disk in `always` mode): counters, the observer, and the durable seq, published last.
/// Called with the segment locked, so durable seqs are published in order.
fn published(
    shared: &Shared,
    segment: &Segment,
    started: Instant,
    bytes: usize,
    seq_written: u64,
    last_seq: u64,
) {
    let latency_ns = elapsed_ns(started);
    shared
        .counters
        .last_write_latency_ns
        .store(latency_ns, Relaxed);
    if let Some(observe) = shared.observer.get() {
        observe(JournalEvent::Write {
            latency_ns,
            bytes: bytes as u64,
        });
    }
    shared.counters.segment_bytes.store(segment.bytes, Relaxed);
    shared.written_bytes.fetch_add(bytes as u64, Relaxed);
    if last_seq > seq_written {
        let counters = &shared.counters;
        counters.records.fetch_add(last_seq - seq_written, Relaxed);
        counters.groups.fetch_add(1, Relaxed);
        counters.bytes_written.fetch_add(bytes as u64, Relaxed);
        shared.durable_seq.store(last_seq, Release);
        (shared.on_durable)(last_seq);
    }
}

/// [`crate::Journal::write_inline`]: one attempt, never a retry or a sleep on the caller's
/// thread. A failed write gives its group back to the front of the buffer and wakes the writer
/// thread, which retries it as it retries its own.
pub(crate) fn write_inline(shared: &Shared, seq: u64) -> bool {
    if shared.durable_seq.load(Acquire) >= seq {
        return true;
    }
    let refused = shared.mode == FsyncMode::Always
        || shared.stalled.load(Relaxed)
        || shared.failed.load(Relaxed)
        || shared.stopping.load(Relaxed);
    if refused {
        return false;
    }
    let Some(mut segment) = shared.segment.try_lock() else {
        return false;
    };
    let mut group = std::mem::take(&mut segment.inline_spare);
    let last_seq = {
        let mut state = shared.state.lock();
        if !state.rotations.is_empty() || state.shutdown {
            segment.inline_spare = group;
            return false;
        }
        std::mem::swap(&mut state.buf, &mut group);
        state.last_seq
    };
    let seq_written = shared.durable_seq.load(Relaxed);
    assert_eq!(
        group.is_empty(),
        last_seq == seq_written,
        "a group holds exactly the new seqs"
    );
    let started = Instant::now();
    let op = DiskOp::Write { bytes: group.len() };
    let written = if group.is_empty() {
        Ok(())
    } else {
        segment.write(&group, shared.fault(op))
    };
    match written {
        Ok(()) => {
            if !group.is_empty() && !shared.unsynced.swap(true, Relaxed) {
                // The EverySec timer starts now: the writer thread times its wait by it.
                shared.writer_wake.notify_one();
            }
            published(
                shared,
                &segment,
                started,
                group.len(),
                seq_written,
                last_seq,
            );
            group.clear();
            segment.inline_spare = group;
            drop(segment);
            last_seq >= seq
        }
        Err(error) => {
            failed(shared, "write", &error, "the writer retries it");
            let mut state = shared.state.lock();
            let len = group.len();
            group.extend_from_slice(&state.buf);
            std::mem::swap(&mut state.buf, &mut group);
            for rotation in state.rotations.iter_mut() {
                rotation.offset += len;
            }
            drop(state);
            group.clear();
            segment.inline_spare = group;
            drop(segment);
            shared.writer_wake.notify_one();
            false
        }
    }
}

/// Why an fsync error is fatal and not retried: after a failed fsync, Linux may mark the dirty
/// pages clean, so a second fsync can succeed without the data being on disk ("fsyncgate").
/// Only a restart, which re-reads the file, knows what is really there.
fn sync(shared: &Shared, segment: &Segment) -> io::Result<()> {
    sync_file(shared, &segment.file)
}

/// [`sync`] of a file handle (the segment's own, or a second one).
fn sync_file(shared: &Shared, file: &File) -> io::Result<()> {
    let started = Instant::now();
    let synced = match shared.fault(DiskOp::Sync) {
        Some(Fault::Fail(kind)) => Err(io::Error::from(kind)),
        Some(Fault::Short(_)) | None => file.sync_data(),
    };
    if let Err(error) = synced {
        shared.counters.write_errors.fetch_add(1, Relaxed);
        return Err(error);
    }
    let latency_ns = elapsed_ns(started);
    shared
        .counters
        .last_fsync_latency_ns
        .store(latency_ns, Relaxed);
    if let Some(observe) = shared.observer.get() {
        observe(JournalEvent::Fsync { latency_ns });
    }
    shared.counters.fsyncs.fetch_add(1, Relaxed);
    Ok(())
}

/// Closes the current segment (fsynced unless the mode is `no`) and opens the next one.
fn switch_segment(shared: &Shared, segment: &mut Segment, first_seq: u64) -> io::Result<()> {
    assert!(
        first_seq > segment.first_seq,
        "segments start at increasing seqs"
    );
    if shared.mode != FsyncMode::No {
        sync(shared, segment)?;
    }
    *segment = retry(shared, "create segment", || {
        if let Some(Fault::Fail(kind)) = shared.fault(DiskOp::Create) {
            return Err(io::Error::from(kind));
        }
        Segment::create(&shared.dir, first_seq)
    })?;
    shared.counters.segments.fetch_add(1, Relaxed);
    shared.counters.segment_bytes.store(0, Relaxed);
    shared.state.lock().writer_segment_first_seq = first_seq;
    shared.segment_opened.notify_all();
    Ok(())
}

fn write_retrying(shared: &Shared, segment: &mut Segment, bytes: &[u8]) -> io::Result<()> {
    if bytes.is_empty() {
        return Ok(());
    }
    let op = DiskOp::Write { bytes: bytes.len() };
    retry(shared, "write", || segment.write(bytes, shared.fault(op)))
}

/// Retries a failed write (disk full, EIO) with exponential backoff until it succeeds or
/// shutdown is requested. Meanwhile nothing is reported durable and appends pile up in the
/// bounded buffer until `has_capacity` turns the engine's new mutations away.
fn retry<T>(
    shared: &Shared,
    what: &str,
    mut operation: impl FnMut() -> io::Result<T>,
) -> io::Result<T> {
    let mut backoff_ms = RETRY_BACKOFF_MIN_MS;
    loop {
        match operation() {
            Ok(value) => {
                if shared.stalled.load(Relaxed) {
                    shared.stalled.store(false, Relaxed);
                    eprintln!(
                        "creditd journal: {what} in {} works again",
                        shared.dir.display()
                    );
                }
                return Ok(value);
            }
            Err(error) => {
                failed(shared, what, &error, &format!("retry in {backoff_ms} ms"));
                if shared.stopping.load(Relaxed) {
                    return Err(error);
                }
                std::thread::sleep(Duration::from_millis(backoff_ms));
                backoff_ms = (backoff_ms * 2).min(RETRY_BACKOFF_MAX_MS);
            }
        }
    }
}

/// A disk operation failed and will be tried again (`then` says how): counted, kept for
/// operators, logged, and the journal marked stalled until a write succeeds.
fn failed(shared: &Shared, what: &str, error: &io::Error, then: &str) {
    shared.counters.write_errors.fetch_add(1, Relaxed);
    *shared.problem.lock() = format!("{what} failed: {error}");
    shared.stalled.store(true, Relaxed);
    eprintln!(
        "creditd journal: {what} in {} failed: {error}; {then}",
        shared.dir.display()
    );
}

impl Shared {
    /// The injected fault for `op`, if a test installed a hook.
    fn fault(&self, op: DiskOp) -> Option<Fault> {
        self.faults.get().and_then(|hook| hook(op))
    }
}

fn elapsed_ns(started: Instant) -> u64 {
    u64::try_from(started.elapsed().as_nanos()).unwrap_or(u64::MAX)
}
