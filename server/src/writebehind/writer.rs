//! The writer thread: its loop, its link to Redis, and what it does about
//! each way a write can fail (the passes themselves are in [`super::pass`]).
//!
//! Failures, each bounded: a lost connection marks the unconfirmed accounts
//! dirty and reconnects with backoff; an account Redis refuses (a foreign key
//! of another type) stays dirty, is logged once and counted, and the writer
//! pauses (100 ms doubling to 1 s) before trying again; `-NOSCRIPT` loads the
//! script again; `-LOSTDATA` writes everything again; `-NOLEASE` asks the
//! lease keeper to renew; `-FENCED` stops the writer for good.

use super::events;
use super::script::{self, Call, Refusal, Reply};
use super::{Shared, BACKOFF_MAX, BACKOFF_MIN};
use crate::app::WriteBehindStatus;
use crate::config::ServerSettings;
use crate::lease::{Lease, LeaseStatus};
use crate::stop::Stop;
use creditd_engine::clock::wall_clock_ms;
use creditd_engine::events::Event;
use creditd_engine::id::Id;
use creditd_engine::Engine;
use parking_lot::RwLock;
use redis::Client;
use std::collections::{HashMap, HashSet};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How often an idle writer looks for changes.
const IDLE_TICK: Duration = Duration::from_millis(5);
/// How often an idle writer checks that Redis still holds what it wrote
/// (every write checks it too).
const IDLE_CHECK: Duration = Duration::from_secs(1);
/// Pause after a write Redis refused, doubling up to the max.
const ERROR_PAUSE_MIN: Duration = Duration::from_millis(100);
const ERROR_PAUSE_MAX: Duration = Duration::from_secs(1);
/// While the lease is not held: how often to look again.
const LEASE_WAIT: Duration = Duration::from_millis(50);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
const RESPONSE_TIMEOUT: Duration = Duration::from_secs(5);
/// A link that keeps dropping is logged at most this often.
const LINK_LOG_EVERY: Duration = Duration::from_secs(10);
/// How long a graceful shutdown keeps writing what's left.
const STOP_DEADLINE: Duration = Duration::from_secs(5);

/// How a pass (or a check) ended.
pub(super) enum PassEnd {
    /// Nothing was waiting to be written.
    Idle,
    /// Everything taken was written.
    Wrote,
    /// These accounts could not be written (they stay dirty); the rest were.
    Failed(Vec<(Id, String)>),
    Refused(Refusal),
    Disconnected(String),
}

pub(super) struct Writer {
    /// Asked at shutdown: write what's left (up to [`STOP_DEADLINE`]), then end.
    stop: Stop,
    pub(super) shared: Arc<Shared>,
    pub(super) engine: Arc<Engine>,
    pub(super) lease: Arc<Lease>,
    pub(super) client: Client,
    /// The URL without its password.
    pub(super) url: String,
    pub(super) node_id: String,
    /// Every account known to be in Redis, with the last history seq streamed for it.
    pub(super) streamed: HashMap<Id, u64>,
    /// The last watermark written to (or found in) `creditd:meta`.
    pub(super) meta_written: u64,
    /// `creditd:meta` exists; Redis losing it means Redis lost data.
    pub(super) meta_expected: bool,
    /// The server's settings in force (a config reload changes them).
    pub(super) settings: Arc<RwLock<ServerSettings>>,
    pub(super) maxlen: u64,
    pub(super) conn: Option<redis::Connection>,
    pub(super) sha: String,
    /// The events script's sha.
    pub(super) events_sha: String,
    /// The last event number the stream holds (`None`: ask Redis first).
    pub(super) events_streamed: Option<u64>,
    /// Reused buffer of encoded commands.
    pub(super) out: Vec<u8>,
    /// The link state last seen.
    pub(super) linked: bool,
    /// When a dropped link was last logged; whether the current drop was;
    /// drops not logged since.
    pub(super) link_logged: Option<Instant>,
    pub(super) drop_logged: bool,
    pub(super) drops_unlogged: u64,
    pub(super) last_check: Instant,
    pub(super) error_pause: Duration,
    /// Accounts whose last write Redis refused (each logged once until written).
    pub(super) failing: HashSet<Id>,
    /// The last whole-call error logged (logged again only when it changes).
    pub(super) last_refusal: Option<String>,
}

impl Writer {
    #[allow(clippy::too_many_arguments)]
    pub(super) fn new(
        stop: Stop,
        shared: Arc<Shared>,
        engine: Arc<Engine>,
        lease: Arc<Lease>,
        client: Client,
        url: String,
        node_id: String,
        streamed: HashMap<Id, u64>,
        meta_written: u64,
        meta_expected: bool,
        settings: Arc<RwLock<ServerSettings>>,
    ) -> Writer {
        let maxlen = settings.read().redis_stream_maxlen;
        Writer {
            stop,
            shared,
            engine,
            lease,
            client,
            url,
            node_id,
            streamed,
            meta_written,
            meta_expected,
            settings,
            maxlen,
            conn: None,
            sha: String::new(),
            events_sha: String::new(),
            events_streamed: None,
            out: Vec::new(),
            linked: false,
            link_logged: None,
            drop_logged: true,
            drops_unlogged: 0,
            last_check: Instant::now(),
            error_pause: ERROR_PAUSE_MIN,
            failing: HashSet::new(),
            last_refusal: None,
        }
    }

    /// Writes changes behind until stopped; then, for up to
    /// [`STOP_DEADLINE`], what is left.
    pub(super) fn run(mut self) {
        let mut backoff = BACKOFF_MIN;
        let mut deadline: Option<Instant> = None;
        let drained = loop {
            if deadline.is_none() && self.stop.requested() {
                deadline = Some(Instant::now() + STOP_DEADLINE);
            }
            let remaining = deadline.map(|d| d.saturating_duration_since(Instant::now()));
            if remaining == Some(Duration::ZERO) {
                break false;
            }
            let bounded = |wait: Duration| remaining.map_or(wait, |r| wait.min(r));
            self.refresh_settings();
            match self.lease.status() {
                LeaseStatus::Held => {}
                LeaseStatus::Lost(_) if deadline.is_some() => break false,
                // Never write without the lease: a lost one for good, a
                // lapsed one until the keeper renews it.
                LeaseStatus::Lost(_) => {
                    self.pause(IDLE_CHECK);
                    continue;
                }
                LeaseStatus::Lapsed { .. } => {
                    self.pause(bounded(LEASE_WAIT));
                    continue;
                }
            }
            if !self.connected(&mut backoff, bounded) {
                continue;
            }
            if !self.meta_expected {
                // First contact, or just after a loss: make sure creditd:meta
                // exists before writing, so that losing it is noticed.
                if let Err(end) = self.check(Some(self.meta_written)) {
                    self.handle(end);
                }
                continue;
            }
            let end = match self.pass() {
                end @ (PassEnd::Idle | PassEnd::Wrote) => match self.stream_events() {
                    Ok(true) => PassEnd::Wrote,
                    Ok(false) => end,
                    Err(failed) => failed,
                },
                end => end,
            };
            match end {
                PassEnd::Idle if deadline.is_some() => break true,
                PassEnd::Idle => self.idle(),
                end => self.handle(end),
            }
        };
        self.log_stopped(drained);
    }

    /// Connects if not connected; a failed attempt pauses for the backoff
    /// (cut by `bounded`), which doubles. True when connected.
    fn connected(
        &mut self,
        backoff: &mut Duration,
        bounded: impl Fn(Duration) -> Duration,
    ) -> bool {
        if self.conn.is_some() {
            return true;
        }
        if let Err(e) = self.connect() {
            self.conn = None;
            self.set_link(false, &e);
            self.pause(bounded(*backoff));
            *backoff = (*backoff * 2).min(BACKOFF_MAX);
            return false;
        }
        *backoff = BACKOFF_MIN;
        true
    }

    /// Nothing to write: check on Redis now and then, and wait a tick.
    fn idle(&mut self) {
        if self.last_check.elapsed() >= IDLE_CHECK {
            if let Err(end) = self.check(None) {
                self.handle(end);
            }
        }
        self.pause(IDLE_TICK);
    }

    fn log_stopped(&self, drained: bool) {
        if drained {
            tracing::info!(redis = %self.url, "Redis write-behind stopped: every change is in Redis");
        } else {
            tracing::warn!(
                redis = %self.url,
                accounts = self.engine.dirty_count(),
                changes = self.shared.pending(),
                "Redis write-behind stopped with changes not yet in Redis; they are in the journal and are written behind after the next start"
            );
        }
    }

    /// Acts on how a pass or check ended (all but `Idle`).
    fn handle(&mut self, end: PassEnd) {
        match end {
            PassEnd::Idle => {}
            PassEnd::Wrote => {
                self.error_pause = ERROR_PAUSE_MIN;
                self.last_refusal = None;
                self.last_check = Instant::now();
            }
            PassEnd::Failed(accounts) => {
                self.shared
                    .write_errors
                    .fetch_add(accounts.len() as u64, Ordering::Relaxed);
                for (id, error) in accounts {
                    let key = String::from_utf8_lossy(&super::account_key(&id)).into_owned();
                    let message = format!("Redis refused the write of {key}: {error}");
                    if self.failing.insert(id) {
                        tracing::warn!(redis = %self.url, "{message}; it stays pending and is retried (the watermark waits for it)");
                    }
                    *self.shared.last_error.lock() = message;
                }
                self.error_paused();
            }
            PassEnd::Refused(Refusal::Failed(error)) => {
                self.shared.write_errors.fetch_add(1, Ordering::Relaxed);
                let message = format!("Redis refused a write: {error}");
                if self.last_refusal.as_ref() != Some(&message) {
                    tracing::warn!(redis = %self.url, "{message}; retrying");
                    self.last_refusal = Some(message.clone());
                }
                *self.shared.last_error.lock() = message;
                self.error_paused();
            }
            PassEnd::Refused(Refusal::NoScript) => {
                tracing::info!(redis = %self.url, "Redis no longer knows the write script (SCRIPT FLUSH or a restart); loading it again");
                if let Err(e) = self.load_script() {
                    self.conn = None;
                    self.set_link(false, &e);
                }
            }
            PassEnd::Refused(Refusal::NoLease) => {
                self.lease.renew_now();
                self.pause(LEASE_WAIT);
            }
            PassEnd::Refused(Refusal::LostData(found)) => self.on_data_loss(found),
            PassEnd::Refused(Refusal::Fenced(detail)) => self.lease.fenced(&detail),
            PassEnd::Disconnected(e) => {
                self.conn = None;
                self.set_link(false, &e);
            }
        }
    }

    fn error_paused(&mut self) {
        self.pause(self.error_pause);
        self.error_pause = (self.error_pause * 2).min(ERROR_PAUSE_MAX);
    }

    /// Redis lost data: every account is written again, with its history
    /// as far as memory has it (the stream lost it too).
    fn on_data_loss(&mut self, found: u64) {
        let events = self.shared.data_loss_events.fetch_add(1, Ordering::Relaxed) + 1;
        tracing::warn!(
            redis = %self.url,
            watermark_found = found,
            watermark_written = self.meta_written,
            accounts = self.streamed.len(),
            events,
            "Redis lost written-behind data (flushed, evicted, restarted without persistence, or failed over to a stale replica); writing every account and its history again"
        );
        // The stream went too: every event memory keeps goes again.
        self.events_streamed = None;
        for id in self.streamed.keys() {
            self.engine.mark_dirty(id);
        }
        self.streamed.clear();
        self.failing.clear();
        self.meta_written = found;
        self.meta_expected = false;
    }

    /// Sleeps for `wait`, or less if stop is requested.
    fn pause(&self, wait: Duration) {
        self.stop.sleep(wait);
    }

    fn refresh_settings(&mut self) {
        let settings = *self.settings.read();
        self.shared
            .max_pending
            .store(settings.redis_max_pending, Ordering::Relaxed);
        self.maxlen = settings.redis_stream_maxlen;
    }

    /// Logs a change of link state once (not every attempt), and a link
    /// that keeps dropping at most once per [`LINK_LOG_EVERY`] (with how
    /// often it dropped meanwhile).
    fn set_link(&mut self, up: bool, error: &str) {
        self.shared.connected.store(up, Ordering::Relaxed);
        if up == self.linked {
            tracing::debug!(redis = %self.url, up, "{error}");
            return;
        }
        self.linked = up;
        let loud = self
            .link_logged
            .is_none_or(|at| at.elapsed() >= LINK_LOG_EVERY);
        if up {
            if self.drop_logged {
                tracing::info!(redis = %self.url, "Redis write-behind connected");
            }
            self.drop_logged = false;
        } else if loud {
            tracing::warn!(
                redis = %self.url,
                error,
                drops_since_last_logged = self.drops_unlogged,
                "Redis write-behind disconnected; serving from memory and the journal, retrying with backoff"
            );
            (self.link_logged, self.drop_logged, self.drops_unlogged) =
                (Some(Instant::now()), true, 0);
        } else {
            tracing::debug!(redis = %self.url, error, "Redis write-behind disconnected again");
            self.drops_unlogged += 1;
        }
    }

    fn connect(&mut self) -> Result<(), String> {
        let err = |e: redis::RedisError| e.to_string();
        let conn = self
            .client
            .get_connection_with_timeout(CONNECT_TIMEOUT)
            .map_err(err)?;
        conn.set_read_timeout(Some(RESPONSE_TIMEOUT)).map_err(err)?;
        conn.set_write_timeout(Some(RESPONSE_TIMEOUT))
            .map_err(err)?;
        self.conn = Some(conn);
        self.load_script()?;
        self.set_link(true, "");
        Ok(())
    }

    fn load_script(&mut self) -> Result<(), String> {
        let conn = self.conn.as_mut().ok_or("not connected")?;
        self.sha = redis::cmd("SCRIPT")
            .arg("LOAD")
            .arg(script::source())
            .query(conn)
            .map_err(|e| e.to_string())?;
        self.events_sha = redis::cmd("SCRIPT")
            .arg("LOAD")
            .arg(events::source())
            .query(conn)
            .map_err(|e| e.to_string())?;
        Ok(())
    }

    /// Streams the next durable events, if any (see [`events`]). True: some
    /// were appended.
    fn stream_events(&mut self) -> Result<bool, PassEnd> {
        let durable_seq = self.shared.journal.durable_seq();
        let streamed = match self.events_streamed {
            Some(seq) => seq,
            None => self.events_call(&[])?,
        };
        let (after, _) = self.engine.events_after(streamed, events::EVENTS_PER_CALL);
        let ready = events::ready(after, durable_seq);
        if ready.is_empty() {
            return Ok(false);
        }
        self.events_call(&ready)?;
        Ok(true)
    }

    /// One call of the events script; returns (and keeps) the stream's last number.
    fn events_call(&mut self, batch: &[Event]) -> Result<u64, PassEnd> {
        let mut out = std::mem::take(&mut self.out);
        out.clear();
        events::encode_call(
            &mut out,
            &self.events_sha,
            self.lease.value(),
            self.maxlen,
            batch,
        );
        let result = self.send_packed(&out).and_then(|()| self.recv());
        self.out = out;
        let reply = result.map_err(PassEnd::Disconnected)?;
        let seq = match events::streamed_seq(&reply) {
            Some(seq) => seq,
            None => {
                return Err(match script::classify(reply) {
                    Reply::Refused(r) => PassEnd::Refused(r),
                    Reply::Ran { .. } => PassEnd::Refused(Refusal::Failed(
                        "unexpected reply from the events script".into(),
                    )),
                })
            }
        };
        self.events_streamed = Some(seq);
        self.shared.events_streamed.store(seq, Ordering::Relaxed);
        Ok(seq)
    }

    pub(super) fn call<'a>(&'a self, new_watermark: Option<u64>) -> Call<'a> {
        Call {
            sha: &self.sha,
            lease: self.lease.value(),
            maxlen: self.maxlen,
            expected_watermark: self.meta_written,
            meta_must_exist: self.meta_expected,
            new_watermark,
            node_id: &self.node_id,
            now_ms: wall_clock_ms(),
        }
    }

    /// One call without accounts: the fence and the watermark checks, and
    /// with `new_watermark`, records it.
    pub(super) fn check(&mut self, new_watermark: Option<u64>) -> Result<(), PassEnd> {
        self.last_check = Instant::now();
        let mut out = std::mem::take(&mut self.out);
        out.clear();
        self.call(new_watermark).encode(&mut out, &[]);
        let result = self.send_packed(&out).and_then(|()| self.recv());
        self.out = out;
        match result.map(script::classify) {
            Ok(Reply::Ran { .. }) => {
                if let Some(seq) = new_watermark {
                    self.meta_written = self.meta_written.max(seq);
                    self.meta_expected = true;
                }
                Ok(())
            }
            Ok(Reply::Refused(r)) => Err(PassEnd::Refused(r)),
            Err(e) => Err(PassEnd::Disconnected(e)),
        }
    }

    pub(super) fn send_packed(&mut self, bytes: &[u8]) -> Result<(), String> {
        match self.conn.as_mut() {
            Some(conn) => conn.send_packed_command(bytes).map_err(|e| e.to_string()),
            None => Err("not connected".to_string()),
        }
    }

    pub(super) fn recv(&mut self) -> Result<redis::Value, String> {
        let conn = self.conn.as_mut().ok_or("not connected")?;
        conn.recv_response().map_err(|e| e.to_string())
    }
}
