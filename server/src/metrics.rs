//! Prometheus metrics through the `metrics` crate. Per-command handles are
//! registered once, so the hot path only bumps atomics (no label lookups).

use crate::commands::COMMANDS;
use metrics::{counter, gauge, histogram, Counter, Gauge, Histogram};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use std::sync::OnceLock;

/// Result codes a command can end with (label `result`).
pub const CODES: &[&str] = &[
    "ok",
    "ERR",
    "NOAUTH",
    "WRONGPASS",
    "NOPERM",
    "INSUFFICIENT",
    "NOTFOUND",
    "CONFLICT",
    "EXPIRED",
    "NOTENTITLED",
    "BUSY",
    "NOPROTO",
];

/// Latency buckets (seconds): from 5 µs to 1 s, dense where a reservation lives.
pub const LATENCY_BUCKETS_S: &[f64] = &[
    0.000_005, 0.000_01, 0.000_025, 0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005,
    0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
];

/// Journal group sizes (bytes per write): how much group commit batches.
pub const GROUP_BYTES_BUCKETS: &[f64] = &[
    64.0, 256.0, 1024.0, 4096.0, 16384.0, 65536.0, 262144.0, 1048576.0, 4194304.0,
];

struct CommandMetrics {
    latency: Histogram,
    results: Vec<Counter>,
}

/// The server's metric handles.
pub struct Metrics {
    handle: PrometheusHandle,
    commands: Vec<CommandMetrics>,
    unknown_commands: Counter,
    pub connections_open: Gauge,
    pub connections_total: Counter,
    pub connections_rejected: Counter,
    pub protocol_errors: Counter,
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
            PrometheusBuilder::new()
                .set_buckets(LATENCY_BUCKETS_S)
                .and_then(|b| {
                    b.set_buckets_for_metric(Matcher::Suffix("_seconds".into()), LATENCY_BUCKETS_S)
                })
                .expect("buckets are valid")
                .install_recorder()
                .expect("one Prometheus recorder per process")
        })
        .clone()
}

impl Metrics {
    pub fn new() -> Metrics {
        let handle = recorder();
        let commands = COMMANDS
            .iter()
            .map(|spec| CommandMetrics {
                latency: histogram!("creditd_command_duration_seconds", "command" => spec.name),
                results: CODES
                    .iter()
                    .map(|code| counter!("creditd_commands_total", "command" => spec.name, "result" => *code))
                    .collect(),
            })
            .collect();
        Metrics {
            handle,
            commands,
            unknown_commands: counter!("creditd_commands_total", "command" => "unknown", "result" => "ERR"),
            connections_open: gauge!("creditd_connections_open"),
            connections_total: counter!("creditd_connections_total"),
            connections_rejected: counter!("creditd_connections_rejected_total"),
            protocol_errors: counter!("creditd_protocol_errors_total"),
            durability_wait: histogram!("creditd_journal_wait_seconds"),
            durability_timeouts: counter!("creditd_durability_timeouts_total"),
            journal_write: histogram!("creditd_journal_write_seconds"),
            journal_fsync: histogram!("creditd_journal_fsync_seconds"),
            journal_group_bytes: histogram!("creditd_journal_group_bytes"),
        }
    }

    /// Records one command's result and execution time.
    #[inline]
    pub fn command(&self, index: usize, code: &str, seconds: f64) {
        let m = &self.commands[index];
        m.latency.record(seconds);
        let i = CODES.iter().position(|c| *c == code).unwrap_or(1);
        m.results[i].increment(1);
    }

    pub fn unknown_command(&self) {
        self.unknown_commands.increment(1);
    }

    /// Prometheus text.
    pub fn render(&self) -> String {
        self.handle.render()
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
