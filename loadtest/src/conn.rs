//! One connection's loop, closed or open.
//!
//! Closed loop: send `pipeline` requests, wait for all their replies, repeat.
//! Latency: from the moment the batch was written to the moment each reply was read.
//!
//! Open loop: a pacer (a spinning task, or a thread: `--pacer`) hands each
//! connection its intended send times (a fixed global rate, slots dealt
//! round-robin); the connection sends each request
//! at its slot, at most `pipeline` in flight, and latency runs from the
//! *intended* time, so a stall of the server (or of the client) shows up in full
//! for every request that should have gone out meanwhile (no coordinated omission).

use crate::client::Endpoint;
use crate::ops::{Kind, Op, Speller, KINDS};
use crate::resp::{self, Encoder, Reply};
use crate::workload::{Generator, ReplyClass, Tag};
use hdrhistogram::Histogram;
use std::collections::{BTreeMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::OwnedReadHalf;
use tokio::sync::mpsc;

/// Latency histograms record nanoseconds, up to a minute.
pub fn histogram(sigfig: u8) -> Histogram<u64> {
    Histogram::new_with_bounds(1, 60_000_000_000, sigfig).expect("valid histogram bounds")
}

/// Distinct messages kept per error code, and characters kept per message:
/// enough to tell what went wrong without a report the size of the run.
const MESSAGES_PER_CODE: usize = 3;
const MESSAGE_CHARS: usize = 200;

/// The error replies of one code (first word of the error).
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct ErrorTally {
    pub count: u64,
    /// Those the workload does not expect (see [`ReplyClass`]).
    pub unexpected: u64,
    /// The first distinct messages, whole (`ERR too many open holds ...`).
    pub messages: Vec<String>,
}

impl ErrorTally {
    fn keep(&mut self, message: &str) {
        if self.messages.len() >= MESSAGES_PER_CODE {
            return;
        }
        let end = message
            .char_indices()
            .nth(MESSAGE_CHARS)
            .map_or(message.len(), |(i, _)| i);
        let message = &message[..end];
        if !self.messages.iter().any(|m| m == message) {
            self.messages.push(message.to_string());
        }
    }

    fn merge(&mut self, other: &ErrorTally) {
        self.count += other.count;
        self.unexpected += other.unexpected;
        for m in &other.messages {
            self.keep(m);
        }
    }
}

/// Counters and histograms of the measured part of a run (after warmup).
pub struct Stats {
    pub all: Histogram<u64>,
    pub by_kind: Vec<Histogram<u64>>,
    /// Error replies by code (first word), overall and per kind.
    pub errors: BTreeMap<String, ErrorTally>,
    /// Error replies the workload does not expect, of every code.
    pub unexpected_errors: u64,
    pub errors_by_kind: Vec<u64>,
    /// Open loop: how late each request was written after its intended time
    /// (the client's own share of the latency; large values mean the client,
    /// not the server, is the bottleneck).
    pub send_lag: Histogram<u64>,
    pub ok: u64,
    /// When the last measured reply arrived.
    pub last_reply: Option<Instant>,
}

impl Stats {
    pub fn new() -> Self {
        Stats {
            all: histogram(3),
            by_kind: KINDS.iter().map(|_| histogram(2)).collect(),
            errors: BTreeMap::new(),
            unexpected_errors: 0,
            errors_by_kind: vec![0; KINDS.len()],
            send_lag: histogram(2),
            ok: 0,
            last_reply: None,
        }
    }

    pub fn merge(&mut self, other: &Stats) {
        self.all.add(&other.all).expect("same bounds");
        for (a, b) in self.by_kind.iter_mut().zip(&other.by_kind) {
            a.add(b).expect("same bounds");
        }
        for (code, tally) in &other.errors {
            self.errors.entry(code.clone()).or_default().merge(tally);
        }
        self.unexpected_errors += other.unexpected_errors;
        for (a, b) in self.errors_by_kind.iter_mut().zip(&other.errors_by_kind) {
            *a += b;
        }
        self.send_lag.add(&other.send_lag).expect("same bounds");
        self.ok += other.ok;
        self.last_reply = self.last_reply.max(other.last_reply);
    }

    fn record(
        &mut self,
        kind: Kind,
        reply: &Reply,
        class: ReplyClass,
        latency: Duration,
        now: Instant,
    ) {
        let ns = (latency.as_nanos() as u64).max(1);
        self.all.saturating_record(ns);
        self.by_kind[kind.index()].saturating_record(ns);
        match reply {
            Reply::Error(message) => {
                let code = reply.error_code().unwrap_or("ERR");
                let tally = match self.errors.get_mut(code) {
                    Some(t) => t,
                    None => self.errors.entry(code.to_string()).or_default(),
                };
                tally.count += 1;
                if class == ReplyClass::UnexpectedError {
                    tally.unexpected += 1;
                    self.unexpected_errors += 1;
                }
                tally.keep(message);
                self.errors_by_kind[kind.index()] += 1;
            }
            _ => self.ok += 1,
        }
        self.last_reply = Some(now);
    }
}

#[derive(Debug, Clone, Copy)]
pub enum Mode {
    Closed,
    Open,
}

#[derive(Debug, Clone)]
pub struct ConnCfg {
    pub mode: Mode,
    /// Closed: batch size. Open: most requests in flight.
    pub pipeline: usize,
    /// Replies to requests intended before this are not measured (warmup).
    pub measure_start: Instant,
    /// No request intended at or after this is sent.
    pub end: Instant,
    /// Closed loop: most measured requests this connection sends (`--requests`).
    pub quota: Option<u64>,
    /// After `end`, how long to wait for outstanding replies.
    pub drain: Duration,
    /// How long a read may wait for a reply.
    pub io_timeout: Duration,
}

pub struct ConnResult {
    pub stats: Stats,
    pub gen: Generator,
    /// Open loop: slots never sent (the connection fell too far behind).
    pub dropped: u64,
    pub error: Option<String>,
}

/// Progress shared with the progress bar.
#[derive(Default)]
pub struct Progress {
    pub replies: AtomicU64,
}

struct Pending {
    intended: Instant,
    op: Op,
    tag: Tag,
}

struct Conn {
    rd: OwnedReadHalf,
    wr: tokio::net::tcp::OwnedWriteHalf,
    rbuf: Vec<u8>,
    enc: Encoder,
    /// Requests in `enc` not written yet.
    enc_count: usize,
    inflight: VecDeque<Pending>,
    speller: Speller,
    gen: Generator,
    stats: Stats,
    progress: Arc<Progress>,
    measure_start: Instant,
}

impl Conn {
    fn queue(&mut self, intended: Instant) {
        let (op, tag) = self.gen.next_op();
        self.speller.encode(&mut self.enc, &op);
        self.inflight.push_back(Pending { intended, op, tag });
        self.enc_count += 1;
    }

    async fn flush(&mut self) -> std::io::Result<()> {
        if !self.enc.is_empty() {
            self.wr.write_all(&self.enc.buf).await?;
            self.enc.clear();
            self.enc_count = 0;
        }
        Ok(())
    }

    /// Reads once and handles every complete reply. Err on EOF or bad data.
    async fn read_some(&mut self) -> Result<(), String> {
        if self.rbuf.capacity() - self.rbuf.len() < 16 * 1024 {
            self.rbuf.reserve(64 * 1024);
        }
        let n = self
            .rd
            .read_buf(&mut self.rbuf)
            .await
            .map_err(|e| format!("read: {e}"))?;
        if n == 0 {
            return Err("the server closed the connection".into());
        }
        self.handle_replies(Instant::now())
    }

    fn handle_replies(&mut self, now: Instant) -> Result<(), String> {
        let mut pos = 0;
        let mut handled = 0;
        loop {
            let parsed = resp::parse(&self.rbuf[pos..]).map_err(|e| e.to_string())?;
            let Some((reply, used)) = parsed else { break };
            pos += used;
            let Some(p) = self.inflight.pop_front() else {
                return Err(format!("unexpected reply {reply}"));
            };
            let kind = match p.tag {
                Tag::Retry(_) => Kind::Retry,
                _ => p.op.kind(),
            };
            let class = self.gen.on_reply(&p.op, p.tag, &reply, p.intended, now);
            if p.intended >= self.measure_start {
                let latency = now.saturating_duration_since(p.intended);
                self.stats.record(kind, &reply, class, latency, now);
                handled += 1;
            }
        }
        self.rbuf.drain(..pos);
        if handled > 0 {
            self.progress.replies.fetch_add(handled, Ordering::Relaxed);
        }
        Ok(())
    }

    /// Requests that will never be answered.
    fn lose_inflight(&mut self) {
        for p in self.inflight.drain(..) {
            self.gen.on_lost(&p.op);
        }
    }

    async fn closed(&mut self, cfg: &ConnCfg) -> Result<(), String> {
        let mut quota = cfg.quota;
        loop {
            let now = Instant::now();
            if now >= cfg.end || quota == Some(0) {
                return Ok(());
            }
            let mut n = cfg.pipeline as u64;
            if let Some(q) = quota.as_mut() {
                if now >= cfg.measure_start {
                    n = n.min(*q);
                    *q -= n;
                }
            }
            for _ in 0..n {
                self.queue(now);
            }
            let batch = async {
                self.flush().await.map_err(|e| format!("write: {e}"))?;
                while !self.inflight.is_empty() {
                    self.read_some().await?;
                }
                Ok::<(), String>(())
            };
            match tokio::time::timeout(cfg.io_timeout, batch).await {
                Ok(r) => r?,
                Err(_) => return Err(format!("no reply within {:?}", cfg.io_timeout)),
            }
        }
    }

    async fn open(
        &mut self,
        cfg: &ConnCfg,
        slots: &mut mpsc::UnboundedReceiver<Instant>,
    ) -> Result<u64, String> {
        let deadline =
            tokio::time::sleep_until(tokio::time::Instant::from_std(cfg.end + cfg.drain));
        tokio::pin!(deadline);
        let mut due: VecDeque<Instant> = VecDeque::new();
        let mut pacer_done = false;
        loop {
            // Take every slot the pacer has dealt so far.
            loop {
                match slots.try_recv() {
                    Ok(t) => due.push_back(t),
                    Err(mpsc::error::TryRecvError::Empty) => break,
                    Err(mpsc::error::TryRecvError::Disconnected) => {
                        pacer_done = true;
                        break;
                    }
                }
            }
            let mut queued = false;
            while self.inflight.len() < cfg.pipeline {
                let Some(t) = due.pop_front() else { break };
                self.queue(t);
                queued = true;
            }
            if queued {
                let now = Instant::now();
                let first = self.inflight.len() - self.enc_count;
                for p in self.inflight.range(first..) {
                    if p.intended >= self.measure_start {
                        let lag = now.saturating_duration_since(p.intended).as_nanos() as u64;
                        self.stats.send_lag.saturating_record(lag.max(1));
                    }
                }
            }
            self.flush().await.map_err(|e| format!("write: {e}"))?;
            if pacer_done && due.is_empty() && self.inflight.is_empty() {
                return Ok(0);
            }
            let can_send = !pacer_done && self.inflight.len() < cfg.pipeline;
            tokio::select! {
                biased;
                r = self.rd.read_buf(&mut self.rbuf) => {
                    let n = r.map_err(|e| format!("read: {e}"))?;
                    if n == 0 {
                        return Err("the server closed the connection".into());
                    }
                    self.handle_replies(Instant::now())?;
                    if self.rbuf.capacity() - self.rbuf.len() < 16 * 1024 {
                        self.rbuf.reserve(64 * 1024);
                    }
                }
                t = slots.recv(), if can_send => match t {
                    Some(t) => due.push_back(t),
                    None => pacer_done = true,
                },
                _ = &mut deadline => {
                    // Whatever the pacer still deals is dropped too.
                    slots.close();
                    while slots.try_recv().is_ok() {
                        due.push_back(Instant::now());
                    }
                    return Ok(due.len() as u64);
                }
            }
        }
    }
}

/// Runs one connection to the end. Never panics on I/O trouble: an error ends
/// this connection and is reported.
pub async fn run(
    endpoint: Endpoint,
    cfg: ConnCfg,
    speller: Speller,
    gen: Generator,
    progress: Arc<Progress>,
    slots: Option<mpsc::UnboundedReceiver<Instant>>,
    start: Instant,
) -> ConnResult {
    let stream = match endpoint.connect(cfg.io_timeout).await {
        Ok(client) => client.into_stream(),
        Err(e) => return failed(gen, e),
    };
    // Every connection is up before the first request: all start together.
    tokio::time::sleep_until(tokio::time::Instant::from_std(start)).await;
    let (rd, wr) = stream.into_split();
    let mut c = Conn {
        rd,
        wr,
        rbuf: Vec::with_capacity(64 * 1024),
        enc: Encoder::default(),
        enc_count: 0,
        inflight: VecDeque::new(),
        speller,
        gen,
        stats: Stats::new(),
        progress,
        measure_start: cfg.measure_start,
    };
    let outcome = match (cfg.mode, slots) {
        (Mode::Open, Some(mut slots)) => c.open(&cfg, &mut slots).await,
        _ => c.closed(&cfg).await.map(|_| 0),
    };
    let (dropped, error) = match outcome {
        Ok(d) => (d, None),
        Err(e) => (0, Some(e)),
    };
    c.lose_inflight();
    ConnResult {
        stats: c.stats,
        gen: c.gen,
        dropped,
        error,
    }
}

fn failed(gen: Generator, error: String) -> ConnResult {
    ConnResult {
        stats: Stats::new(),
        gen,
        dropped: 0,
        error: Some(error),
    }
}

/// The open loop's intended send times: slot `j` at `start + j / rate`, to
/// connection `j % n`, until `end` (and at most `limit` measured slots).
pub struct Slots {
    start: Instant,
    measure_start: Instant,
    end: Instant,
    period_ns: f64,
    limit: Option<u64>,
    next: u64,
    measured: u64,
}

impl Slots {
    pub fn new(
        start: Instant,
        measure_start: Instant,
        end: Instant,
        rate: f64,
        limit: Option<u64>,
    ) -> Slots {
        Slots {
            start,
            measure_start,
            end,
            period_ns: 1e9 / rate,
            limit,
            next: 0,
            measured: 0,
        }
    }

    /// The next slot's connection index and instant (`None`: no more).
    fn peek(&self, n: u64) -> Option<(usize, Instant)> {
        let at = self.start + Duration::from_nanos((self.next as f64 * self.period_ns) as u64);
        let over = at >= self.end || self.limit.is_some_and(|l| self.measured >= l);
        (!over).then_some(((self.next % n) as usize, at))
    }

    fn advance(&mut self, at: Instant) {
        if at >= self.measure_start {
            self.measured += 1;
        }
        self.next += 1;
    }
}

/// Deals the slots from its own thread, sleeping with the OS's precision
/// rather than the runtime's 1 ms timer.
pub fn pacer(senders: Vec<mpsc::UnboundedSender<Instant>>, mut slots: Slots, slack_us: u64) {
    set_timer_slack(slack_us);
    let n = senders.len() as u64;
    while let Some((conn, at)) = slots.peek(n) {
        let now = Instant::now();
        if at > now {
            std::thread::sleep(at - now);
        }
        // A closed receiver (the connection failed) just drops its slots.
        let _ = senders[conn].send(at);
        slots.advance(at);
    }
}

/// Slots dealt per turn of the spinning pacer, at most (then it yields, so
/// the connections run even when it is behind).
const SPIN_BATCH: usize = 256;

/// Deals the slots from a task on the client runtime: every due slot, then
/// `yield_now`, again and again. Between turns the runtime runs the
/// connections (and polls the sockets), so a slot reaches its connection
/// within one turn, without a thread hand-off or a timer wake-up.
pub async fn spin_pacer(senders: Vec<mpsc::UnboundedSender<Instant>>, mut slots: Slots) {
    let n = senders.len() as u64;
    loop {
        let now = Instant::now();
        for _ in 0..SPIN_BATCH {
            match slots.peek(n) {
                None => return,
                Some((_, at)) if at > now => break,
                Some((conn, at)) => {
                    let _ = senders[conn].send(at);
                    slots.advance(at);
                }
            }
        }
        tokio::task::yield_now().await;
    }
}

/// Linux lets a sleeping thread wake up to 50 µs late by default (timer
/// slack); the pacer may ask for less, so intended times are kept more closely
/// (at the price of more timer interrupts).
#[cfg(target_os = "linux")]
fn set_timer_slack(us: u64) {
    let ns = us.saturating_mul(1000).max(1) as libc::c_ulong;
    // SAFETY: PR_SET_TIMERSLACK takes plain integers and only affects this thread.
    unsafe {
        libc::prctl(libc::PR_SET_TIMERSLACK, ns, 0, 0, 0);
    }
}

#[cfg(not(target_os = "linux"))]
fn set_timer_slack(_us: u64) {}
