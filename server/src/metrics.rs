//! Counters and Prometheus metrics (through the `metrics` crate).
//!
//! The server-wide counts INFO shows are atomics in [`Counters`], and
//! `/metrics` publishes those same atomics when it is scraped ([`render`]),
//! so the two never disagree. Per-command handles are registered once, so the
//! hot path only bumps atomics (no label lookups).

use crate::app::App;
use crate::commands::COMMANDS;
use crate::error::ErrorCode;
use metrics::{counter, gauge, histogram, Counter, Histogram};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;

/// The `result` label of a command that succeeded; a failed one has its code.
const OK: &str = "ok";

/// Latency buckets (seconds): from 5 µs to 1 s, dense where a reservation lives.
pub const LATENCY_BUCKETS_S: &[f64] = &[
    0.000_005, 0.000_01, 0.000_025, 0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005,
    0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
];

/// Journal group sizes (bytes per write): how much group commit batches.
pub const GROUP_BYTES_BUCKETS: &[f64] = &[
    64.0, 256.0, 1024.0, 4096.0, 16384.0, 65536.0, 262144.0, 1048576.0, 4194304.0,
];

/// Every metric with its help text: each gets a `# HELP` line.
const DESCRIPTIONS: &[(&str, &str)] = &[
    ("creditd_accounts", "Accounts in memory."),
    (
        "creditd_open_holds",
        "Open holds (reservations not yet committed, released or expired).",
    ),
    (
        "creditd_hold_expiries_total",
        "Holds that expired unresolved.",
    ),
    (
        "creditd_bucket_expiries_total",
        "Credit buckets that expired with credits left.",
    ),
    ("creditd_renewals_total", "Plan cycles renewed."),
    ("creditd_events_kept", "Events kept in memory for EVENTS."),
    (
        "creditd_events_last_seq",
        "The number of the last event raised (low, insufficient, limited).",
    ),
    (
        "creditd_events_dropped_total",
        "Events dropped from memory by max_events or event_retention_ms.",
    ),
    (
        "creditd_redis_events_streamed_seq",
        "The last event number appended to the creditd:events stream.",
    ),
    (
        "creditd_command_duration_seconds",
        "Time to execute one command (parse to reply, without the journal wait).",
    ),
    (
        "creditd_commands_total",
        "Commands by command and result code (registered when first seen).",
    ),
    (
        "creditd_commands_processed_total",
        "Commands processed (INFO total_commands_processed).",
    ),
    (
        "creditd_connections_open",
        "Client connections open now (INFO connected_clients).",
    ),
    (
        "creditd_connections_total",
        "Client connections accepted (INFO total_connections_received).",
    ),
    (
        "creditd_connections_rejected_total",
        "Connections refused at max_clients (INFO rejected_connections).",
    ),
    (
        "creditd_protocol_errors_total",
        "Connections closed for malformed input (INFO total_protocol_errors).",
    ),
    (
        "creditd_error_replies_total",
        "Error replies sent, by code (INFO errorstat_<code>).",
    ),
    (
        "creditd_journal_wait_seconds",
        "Time replies waited for the journal to make their changes durable.",
    ),
    (
        "creditd_durability_timeouts_total",
        "Replies turned into -BUSY because their change was not durable in time.",
    ),
    (
        "creditd_journal_write_seconds",
        "Time of one journal write(2) (one group of records).",
    ),
    (
        "creditd_journal_fsync_seconds",
        "Time of one journal fsync.",
    ),
    (
        "creditd_journal_group_bytes",
        "Bytes per journal write: how much group commit batches.",
    ),
    (
        "creditd_journal_bytes_written_total",
        "Journal bytes written.",
    ),
    ("creditd_journal_records_total", "Journal records written."),
    ("creditd_journal_writes_total", "Journal writes (groups)."),
    ("creditd_journal_fsyncs_total", "Journal fsyncs."),
    (
        "creditd_journal_last_write_seconds",
        "Time of the last journal write.",
    ),
    (
        "creditd_journal_last_fsync_seconds",
        "Time of the last journal fsync.",
    ),
    (
        "creditd_journal_pending_bytes",
        "Journal bytes appended but not yet written.",
    ),
    (
        "creditd_journal_segments",
        "Journal segment files in the data dir.",
    ),
    (
        "creditd_write_errors_total",
        "Failed journal writes, segment creations and fsyncs (INFO write_errors).",
    ),
    (
        "creditd_redis_connected",
        "1 while the Redis write-behind is connected.",
    ),
    (
        "creditd_redis_pending",
        "Acknowledged changes not yet written to Redis.",
    ),
    (
        "creditd_redis_lag_seconds",
        "Age of the oldest change not yet written to Redis.",
    ),
    ("creditd_ready", "1 while /readyz answers 200."),
];

/// Server-wide counts: the one copy INFO shows and `/metrics` publishes.
#[derive(Default)]
pub struct Counters {
    pub connections_total: AtomicU64,
    pub connections_open: AtomicU64,
    pub connections_rejected: AtomicU64,
    pub commands_processed: AtomicU64,
    pub protocol_errors: AtomicU64,
    /// Error replies sent, indexed by [`ErrorCode::index`].
    error_replies: [AtomicU64; ErrorCode::ALL.len()],
}

impl Counters {
    /// Counts one error reply.
    #[inline]
    pub fn error_reply(&self, code: ErrorCode) {
        self.error_replies[code.index()].fetch_add(1, Ordering::Relaxed);
    }

    /// Error replies sent with `code`.
    pub fn error_replies(&self, code: ErrorCode) -> u64 {
        self.error_replies[code.index()].load(Ordering::Relaxed)
    }

    /// Every error reply sent.
    pub fn total_error_replies(&self) -> u64 {
        ErrorCode::ALL.iter().map(|&c| self.error_replies(c)).sum()
    }
}

struct CommandMetrics {
    name: &'static str,
    latency: Histogram,
    /// `ok` at 0, then each code at 1 + its index; registered on first use:
    /// only results that happened show up (no `quit/INSUFFICIENT` series).
    results: [OnceLock<Counter>; 1 + ErrorCode::ALL.len()],
}

/// The server's counters and metric handles.
pub struct Metrics {
    handle: PrometheusHandle,
    pub counters: Counters,
    commands: Vec<CommandMetrics>,
    unknown_commands: Counter,
    pub durability_wait: Histogram,
    /// Replies turned into `-BUSY` because their change was not durable in time.
    pub durability_timeouts: Counter,
    pub journal_write: Histogram,
    pub journal_fsync: Histogram,
    pub journal_group_bytes: Histogram,
}

static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();

fn recorder() -> PrometheusHandle {
    HANDLE
        .get_or_init(|| {
            let handle = PrometheusBuilder::new()
                .set_buckets(LATENCY_BUCKETS_S)
                .and_then(|b| {
                    b.set_buckets_for_metric(Matcher::Suffix("_seconds".into()), LATENCY_BUCKETS_S)
                })
                .and_then(|b| {
                    b.set_buckets_for_metric(
                        Matcher::Full("creditd_journal_group_bytes".into()),
                        GROUP_BYTES_BUCKETS,
                    )
                })
                .expect("buckets are valid")
                .install_recorder()
                .expect("one Prometheus recorder per process");
            for (name, help) in DESCRIPTIONS {
                metrics::describe_counter!(*name, *help);
            }
            handle
        })
        .clone()
}

impl Metrics {
    pub fn new() -> Metrics {
        let handle = recorder();
        let commands = COMMANDS
            .iter()
            .map(|spec| CommandMetrics {
                name: spec.name,
                latency: histogram!("creditd_command_duration_seconds", "command" => spec.name),
                results: Default::default(),
            })
            .collect();
        Metrics {
            handle,
            counters: Counters::default(),
            commands,
            unknown_commands: counter!("creditd_commands_total", "command" => "unknown", "result" => ErrorCode::ERR.as_str()),
            durability_wait: histogram!("creditd_journal_wait_seconds"),
            durability_timeouts: counter!("creditd_durability_timeouts_total"),
            journal_write: histogram!("creditd_journal_write_seconds"),
            journal_fsync: histogram!("creditd_journal_fsync_seconds"),
            journal_group_bytes: histogram!("creditd_journal_group_bytes"),
        }
    }

    /// Records one command's result (None: it succeeded) and execution time.
    #[inline]
    pub fn command(&self, index: usize, failed: Option<ErrorCode>, seconds: f64) {
        let m = &self.commands[index];
        m.latency.record(seconds);
        let (slot, label) = match failed {
            None => (0, OK),
            Some(code) => (1 + code.index(), code.as_str()),
        };
        m.results[slot]
            .get_or_init(
                || counter!("creditd_commands_total", "command" => m.name, "result" => label),
            )
            .increment(1);
    }

    pub fn unknown_command(&self) {
        self.unknown_commands.increment(1);
    }

    /// Drains histogram samples into their buckets (bounded memory between scrapes).
    pub fn upkeep(&self) {
        self.handle.run_upkeep();
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

/// Prometheus text: what is read from state rather than counted (engine,
/// journal, Redis, readiness) and the [`Counters`] are set first.
pub fn render(app: &App) -> String {
    publish_state(app);
    publish_counters(&app.metrics.counters);
    app.metrics.handle.render()
}

fn publish_state(app: &App) {
    let es = app.engine.stats();
    gauge!("creditd_accounts").set(es.accounts as f64);
    gauge!("creditd_open_holds").set(es.open_holds as f64);
    counter!("creditd_hold_expiries_total").absolute(es.hold_expiries);
    counter!("creditd_bucket_expiries_total").absolute(es.bucket_expiries);
    counter!("creditd_renewals_total").absolute(es.renewals);
    let (events_kept, events_next_seq, events_dropped) = app.engine.event_stats();
    gauge!("creditd_events_kept").set(events_kept as f64);
    gauge!("creditd_events_last_seq").set((events_next_seq - 1) as f64);
    counter!("creditd_events_dropped_total").absolute(events_dropped);
    let js = app.journal.stats();
    counter!("creditd_journal_bytes_written_total").absolute(js.bytes_written);
    counter!("creditd_journal_records_total").absolute(js.records_written);
    counter!("creditd_journal_writes_total").absolute(js.groups_written);
    counter!("creditd_journal_fsyncs_total").absolute(js.fsyncs);
    counter!("creditd_write_errors_total").absolute(js.write_errors);
    gauge!("creditd_journal_last_write_seconds").set(js.last_write_latency_ns as f64 / 1e9);
    gauge!("creditd_journal_last_fsync_seconds").set(js.last_fsync_latency_ns as f64 / 1e9);
    gauge!("creditd_journal_pending_bytes").set(js.pending_bytes as f64);
    gauge!("creditd_journal_segments").set(js.segment_count as f64);
    let (connected, pending, lag_ms) = app.redis_status();
    gauge!("creditd_redis_connected").set(connected as u8 as f64);
    gauge!("creditd_redis_pending").set(pending as f64);
    gauge!("creditd_redis_lag_seconds").set(lag_ms as f64 / 1e3);
    if let Some(redis) = app.redis.read().as_ref() {
        redis.export_metrics();
    }
    if let Some(cluster) = &app.cluster {
        cluster.export_metrics();
    }
    gauge!("creditd_ready").set(app.not_ready_reason().is_none() as u8 as f64);
}

fn publish_counters(c: &Counters) {
    let read = |n: &AtomicU64| n.load(Ordering::Relaxed);
    gauge!("creditd_connections_open").set(read(&c.connections_open) as f64);
    counter!("creditd_connections_total").absolute(read(&c.connections_total));
    counter!("creditd_connections_rejected_total").absolute(read(&c.connections_rejected));
    counter!("creditd_protocol_errors_total").absolute(read(&c.protocol_errors));
    counter!("creditd_commands_processed_total").absolute(read(&c.commands_processed));
    for code in ErrorCode::ALL {
        let n = c.error_replies(code);
        if n > 0 {
            counter!("creditd_error_replies_total", "code" => code.as_str()).absolute(n);
        }
    }
}
