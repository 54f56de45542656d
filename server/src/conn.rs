//! One client connection: read, parse every complete frame, execute each,
//! wait once for the journal to cover the batch, write all replies at once.
//!
//! This is mini-redis's frame/parse/apply shape with its gaps closed: full
//! pipelining (a batch is everything the last read delivered), explicit
//! limits on every buffer, and backpressure: replies are written before more
//! is read, so a client that never reads its replies stalls only itself.
//!
//! Per-connection memory is bounded: the query buffer by
//! [`Limits::max_request_bytes`] (one partial frame, at most), pending replies
//! by [`OUT_FLUSH_BYTES`] plus one reply (EXEC's replies too, one command at
//! a time), a MULTI queue by [`crate::multi::MULTI_MAX_BYTES`].

use crate::app::App;
use crate::cluster::Cluster;
use crate::commands::Session;
use crate::dispatch::{execute_exec_step, execute_frame, finish_exec_unanswered, reply_error};
use crate::error::{ErrorCode, Failure};
use crate::read_ahead;
use crate::resp::parse::{parse, Frame, Limits, Parsed};
use crate::stop::Stop;
use smallvec::SmallVec;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::watch;

/// Bytes asked of the socket per read.
pub const READ_CHUNK_BYTES: usize = 16 * 1024;
/// Replies are flushed once this much is pending, even mid-batch.
pub const OUT_FLUSH_BYTES: usize = 1024 * 1024;
/// Longest wait for the journal to make a batch's changes durable. Past it
/// (the disk is full or failing) each reply still waiting becomes `-BUSY`
/// instead of hanging: the client learns the outcome by retrying the same id.
pub const DURABLE_WAIT_MAX_MS: u64 = 3_000;
/// A buffer holding more than this much room while (nearly) empty gives it back.
const KEEP_CAPACITY_BYTES: usize = READ_CHUNK_BYTES * 4;

/// Makes room for `additional` more elements, doubling as `Vec` does but never
/// past `ceiling` elements of capacity (unless `len + additional` alone is
/// more), so that a bound on a buffer's contents also bounds its allocation.
pub fn reserve_within<T>(v: &mut Vec<T>, additional: usize, ceiling: usize) {
    let needed = v.len() + additional;
    if needed <= v.capacity() {
        return;
    }
    let target = (v.capacity() * 2).clamp(needed, ceiling.max(needed));
    v.reserve_exact(target - v.len());
}

/// A reply that may go out only once the journal is durable up to `seq`:
/// `out[start..end]`.
struct Waiting {
    start: usize,
    end: usize,
    seq: u64,
    /// Cluster mode: the slot and its generation when the command ran; if
    /// the slot stopped being served here since, the reply is refused.
    routed: Option<(u16, u64)>,
}

/// How executing what was buffered ended.
#[derive(Default)]
struct Batch {
    /// The highest journal seq a reply waits for (0: none).
    wait_seq: u64,
    /// A protocol error: close once the replies are out.
    close: bool,
    /// Stopped early to flush: complete frames may remain buffered, or EXEC
    /// commands remain to run.
    more_buffered: bool,
}

struct Connection {
    app: Arc<App>,
    stream: TcpStream,
    session: Session,
    durable: watch::Receiver<u64>,
    /// Bytes read; those before `start` are parsed already.
    buf: Vec<u8>,
    start: usize,
    frame: Frame,
    /// The frame [`read_ahead`] parses into.
    scan: Frame,
    /// Replies not written yet.
    out: Vec<u8>,
    waiting: Vec<Waiting>,
}

/// Serves one connection until it closes, errs, or the server stops.
pub async fn serve(app: Arc<App>, stream: TcpStream, mut stop: Stop) {
    let _ = stream.set_nodelay(true);
    let mut conn = Connection::new(app, stream);
    loop {
        let batch = conn.execute_buffered();
        conn.keep_unparsed_tail();
        if !conn.out.is_empty() && !conn.send_replies(&batch).await {
            return;
        }
        if batch.close || (conn.session.closing && conn.session.exec.is_none()) {
            let _ = conn.stream.shutdown().await;
            return;
        }
        if batch.more_buffered {
            continue;
        }
        if stop.requested() || !conn.read(&mut stop).await {
            return;
        }
    }
}

impl Connection {
    fn new(app: Arc<App>, stream: TcpStream) -> Connection {
        let id = app.next_client_id.fetch_add(1, Ordering::Relaxed) + 1;
        Connection {
            session: Session::new(id, app.initial_role()),
            durable: app.durable.subscribe(),
            app,
            stream,
            buf: Vec::with_capacity(READ_CHUNK_BYTES),
            start: 0,
            frame: Frame::new(),
            scan: Frame::new(),
            out: Vec::with_capacity(READ_CHUNK_BYTES),
            waiting: Vec::new(),
        }
    }

    /// Before AUTH a client may send only small frames.
    fn limits(&self) -> &'static Limits {
        if self.session.role.is_some() {
            &Limits::AUTHENTICATED
        } else {
            &Limits::UNAUTHENTICATED
        }
    }

    /// Executes every complete frame buffered (pipelining), a running EXEC's
    /// commands first, until none is left or the replies reach
    /// [`OUT_FLUSH_BYTES`].
    fn execute_buffered(&mut self) -> Batch {
        let mut batch = Batch::default();
        self.waiting.clear();
        let mut commands = 0u64;
        let mut read_ahead_done = false;
        loop {
            if self.out.len() >= OUT_FLUSH_BYTES {
                batch.more_buffered = self.start < self.buf.len() || self.session.exec.is_some();
                break;
            }
            // A running EXEC goes first: its replies come before later frames'.
            let reply_start = self.out.len();
            if let Some(seq) = execute_exec_step(&self.app, &mut self.session, &mut self.out) {
                // One element of EXEC's array: an error in its place is valid.
                self.note_wait(&mut batch, reply_start, seq);
                continue;
            }
            if self.session.closing {
                break;
            }
            let limits = self.limits();
            match parse(&self.buf[self.start..], limits, &mut self.frame) {
                Ok(Parsed::Complete { consumed }) => {
                    let window = &self.buf[self.start..self.start + consumed];
                    let args: SmallVec<[&[u8]; 16]> = self.frame.iter(window).collect();
                    let rest = &self.buf[self.start + consumed..];
                    // Once per batch, when more requests follow this one (a
                    // pipeline), for an authenticated session outside MULTI
                    // (its account commands run now). A lone request is
                    // parsed once, as before.
                    if !read_ahead_done
                        && !rest.is_empty()
                        && self.session.role.is_some()
                        && self.session.multi.is_none()
                    {
                        read_ahead_done = true;
                        let engine = &self.app.engine;
                        read_ahead::prefetch_accounts(engine, &args, rest, limits, &mut self.scan);
                    }
                    let seq = execute_frame(&self.app, &mut self.session, &args, &mut self.out);
                    drop(args);
                    self.note_wait(&mut batch, reply_start, seq);
                    commands += 1;
                    self.start += consumed;
                }
                Ok(Parsed::Empty { consumed }) => self.start += consumed,
                Ok(Parsed::Incomplete) => break,
                Err(e) => {
                    let counters = &self.app.metrics.counters;
                    counters.protocol_errors.fetch_add(1, Ordering::Relaxed);
                    let failure = Failure::err(format!("Protocol error: {e}"));
                    reply_error(&self.app, &mut self.out, &failure);
                    batch.close = true;
                    break;
                }
            }
        }
        if commands > 0 {
            let counters = &self.app.metrics.counters;
            counters
                .commands_processed
                .fetch_add(commands, Ordering::Relaxed);
        }
        batch
    }

    /// The reply from `start` to the end of `out` waits for `seq` (0: it need not).
    fn note_wait(&mut self, batch: &mut Batch, start: usize, seq: u64) {
        let routed = self.session.routed.take();
        if seq > 0 {
            let end = self.out.len();
            self.waiting.push(Waiting {
                start,
                end,
                seq,
                routed,
            });
        }
        batch.wait_seq = batch.wait_seq.max(seq);
    }

    /// Keeps only the unparsed tail of the query buffer, and gives back the
    /// room of a large frame once it is gone rather than keep it idle.
    fn keep_unparsed_tail(&mut self) {
        let buf = &mut self.buf;
        if self.start == buf.len() {
            buf.clear();
            self.start = 0;
        } else if self.start > 0 && (self.start >= buf.len() / 2 || buf.len() > KEEP_CAPACITY_BYTES)
        {
            buf.drain(..self.start);
            self.start = 0;
        }
        if buf.len() <= READ_CHUNK_BYTES && buf.capacity() > KEEP_CAPACITY_BYTES {
            buf.shrink_to(READ_CHUNK_BYTES);
        }
    }

    /// Waits until the journal covers the batch's changes, then writes the
    /// replies. False: the connection is over (the client is gone, or the
    /// journal: the server is stopping).
    async fn send_replies(&mut self, batch: &Batch) -> bool {
        if batch.wait_seq > *self.durable.borrow() {
            if let Some(cluster) = &self.app.cluster {
                cluster.wake_writer();
            } else if self.app.journal.inline_writes() {
                // As Redis writes its AOF once per event-loop round: let the
                // other connections ready on this thread run their batches
                // first, then write every record appended so far here,
                // without handing the write to another thread.
                tokio::task::yield_now().await;
                if !self.app.journal.write_inline(batch.wait_seq) {
                    self.app.journal.wake_writer();
                }
            }
            if !self.wait_durable(batch.wait_seq).await {
                return false;
            }
        }
        let durable_seq = *self.durable.borrow();
        let unsettled = |w: &Waiting| {
            w.seq > durable_seq || self.app.cluster.as_ref().is_some_and(|c| moved_since(c, w))
        };
        if self.waiting.iter().any(unsettled) {
            self.out = refuse_unsettled(&self.app, &self.out, &self.waiting, durable_seq);
        }
        if self.stream.write_all(&self.out).await.is_err() {
            finish_exec_unanswered(&self.app, &mut self.session);
            return false;
        }
        self.out.clear();
        // Large replies are gone: give their room back before waiting for
        // the client (not between flushes of one long batch).
        if !batch.more_buffered && self.out.capacity() > KEEP_CAPACITY_BYTES {
            self.out.shrink_to(READ_CHUNK_BYTES);
        }
        true
    }

    /// Waits up to [`DURABLE_WAIT_MAX_MS`] for the journal to be durable up
    /// to `seq`; past it, the replies still waiting become `-BUSY`. False:
    /// the journal is gone.
    async fn wait_durable(&mut self, seq: u64) -> bool {
        let waited = Instant::now();
        let limit = Duration::from_millis(DURABLE_WAIT_MAX_MS);
        let waited_for = tokio::time::timeout(limit, self.durable.wait_for(|d| *d >= seq)).await;
        match waited_for.map(|r| r.map(|_| ())) {
            Ok(Ok(())) => {}
            Ok(Err(_)) => return false,
            // Past the bound: the replies still waiting become -BUSY.
            Err(_) => {}
        }
        self.app
            .metrics
            .durability_wait
            .record(waited.elapsed().as_secs_f64());
        true
    }

    /// Reads more, unless the server stops first. False: the connection is over.
    async fn read(&mut self, stop: &mut Stop) -> bool {
        let ceiling = self.limits().max_request_bytes + READ_CHUNK_BYTES;
        reserve_within(&mut self.buf, READ_CHUNK_BYTES, ceiling);
        tokio::select! {
            read = self.stream.read_buf(&mut self.buf) => matches!(read, Ok(n) if n > 0),
            _ = stop.wait() => false,
        }
    }
}

/// The slot of a waiting reply stopped being served here since its command
/// ran (lost, or handed over): its change may not be in Redis.
fn moved_since(cluster: &Cluster, w: &Waiting) -> bool {
    w.routed
        .is_some_and(|(slot, generation)| cluster.generation(slot) != generation)
}

/// The batch's replies with each one that may not go out as it is replaced:
/// a change not durable yet becomes `-BUSY` (it is applied in memory and
/// will reach the journal, or Redis, once it can write, or be lost with the
/// process, so it was never acknowledged); in cluster mode, a change whose
/// slot moved away meanwhile becomes `-TRYAGAIN` (it may not have reached
/// Redis before the slot went). Either way a retry with the same id answers
/// whether it applied.
fn refuse_unsettled(app: &App, out: &[u8], waiting: &[Waiting], durable_seq: u64) -> Vec<u8> {
    let why = match &app.cluster {
        Some(cluster) => cluster.problem.lock().clone().map_or_else(
            || format!("it did not reach Redis within {DURABLE_WAIT_MAX_MS} ms"),
            |p| format!("Redis: {p}"),
        ),
        None => app.journal.write_problem().unwrap_or_else(|| {
            format!("the journal did not write it within {DURABLE_WAIT_MAX_MS} ms")
        }),
    };
    let busy = Failure::new(
        ErrorCode::BUSY,
        format!(
            "this change is not durable yet: {why}; retry with the same id to learn its outcome"
        ),
    );
    let moved = Failure::new(
        ErrorCode::TryAgain,
        "the account's slot moved to another node before this change was confirmed in Redis; retry with the same id to learn its outcome",
    );
    let mut replaced = Vec::with_capacity(out.len());
    let mut copied = 0;
    for w in waiting {
        let refusal = if w.seq > durable_seq {
            app.metrics.durability_timeouts.increment(1);
            &busy
        } else if app.cluster.as_ref().is_some_and(|c| moved_since(c, w)) {
            &moved
        } else {
            continue;
        };
        replaced.extend_from_slice(&out[copied..w.start]);
        reply_error(app, &mut replaced, refusal);
        copied = w.end;
    }
    replaced.extend_from_slice(&out[copied..]);
    replaced
}
