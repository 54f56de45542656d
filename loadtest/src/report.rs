//! The summary: a table on stdout and the same figures as JSON.

use crate::conn::Stats;
use crate::ops::KINDS;
use crate::verify::VerifyReport;
use hdrhistogram::Histogram;
use serde::Serialize;
use std::collections::BTreeMap;
use std::fmt::Write as _;

#[derive(Debug, Serialize, Clone, Copy)]
pub struct Latency {
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub p999: f64,
    pub max: f64,
    pub mean: f64,
}

impl Latency {
    /// From a histogram of nanoseconds, in microseconds.
    pub fn of(h: &Histogram<u64>) -> Latency {
        let us = |ns: u64| (ns as f64 / 1000.0 * 10.0).round() / 10.0;
        if h.is_empty() {
            return Latency {
                p50: 0.0,
                p90: 0.0,
                p99: 0.0,
                p999: 0.0,
                max: 0.0,
                mean: 0.0,
            };
        }
        Latency {
            p50: us(h.value_at_quantile(0.50)),
            p90: us(h.value_at_quantile(0.90)),
            p99: us(h.value_at_quantile(0.99)),
            p999: us(h.value_at_quantile(0.999)),
            max: us(h.max()),
            mean: (h.mean() / 100.0).round() / 10.0,
        }
    }
}

#[derive(Debug, Serialize)]
pub struct CommandReport {
    pub count: u64,
    pub errors: u64,
    pub latency_us: Latency,
}

#[derive(Debug, Serialize)]
pub struct RunConfig {
    pub target: String,
    pub addr: String,
    pub mode: String,
    pub workload: String,
    pub connections: usize,
    pub pipeline: usize,
    pub rate: Option<f64>,
    pub duration_s: Option<f64>,
    pub requests: Option<u64>,
    pub warmup_s: f64,
    pub accounts: u32,
    pub keys: String,
    pub zipf_s: f64,
    pub seed: u64,
    pub threads: usize,
    pub run_prefix: String,
}

#[derive(Debug, Serialize)]
pub struct Report {
    pub config: RunConfig,
    /// Measured requests (replies to requests intended after the warmup).
    pub requests: u64,
    pub ok: u64,
    /// Error replies by code (first word of the error).
    pub errors: BTreeMap<String, u64>,
    pub elapsed_s: f64,
    pub throughput_ops_s: f64,
    /// Overall latency; open loop: from each request's intended send time.
    pub latency_us: Latency,
    pub by_command: BTreeMap<String, CommandReport>,
    /// Open loop: how late requests were written after their intended time.
    pub send_lag_us: Option<Latency>,
    /// Open loop: slots never sent because the connection fell too far behind.
    pub dropped: u64,
    pub connection_errors: Vec<String>,
    pub verify: Option<VerifyReport>,
}

impl Report {
    pub fn new(
        config: RunConfig,
        stats: &Stats,
        elapsed_s: f64,
        dropped: u64,
        connection_errors: Vec<String>,
    ) -> Report {
        let requests = stats.all.len();
        let mut by_command = BTreeMap::new();
        for k in KINDS {
            let h = &stats.by_kind[k.index()];
            if !h.is_empty() {
                by_command.insert(
                    k.name().to_string(),
                    CommandReport {
                        count: h.len(),
                        errors: stats.errors_by_kind[k.index()],
                        latency_us: Latency::of(h),
                    },
                );
            }
        }
        Report {
            config,
            requests,
            ok: stats.ok,
            errors: stats.errors.clone(),
            elapsed_s,
            throughput_ops_s: if elapsed_s > 0.0 {
                (requests as f64 / elapsed_s).round()
            } else {
                0.0
            },
            latency_us: Latency::of(&stats.all),
            by_command,
            send_lag_us: (!stats.send_lag.is_empty()).then(|| Latency::of(&stats.send_lag)),
            dropped,
            connection_errors,
            verify: None,
        }
    }

    pub fn table(&self) -> String {
        let c = &self.config;
        let mut s = String::new();
        let _ = writeln!(
            s,
            "target {} at {}  workload {}  mode {}{}  connections {}  pipeline {}  accounts {} ({})",
            c.target,
            c.addr,
            c.workload,
            c.mode,
            c.rate.map(|r| format!(" @ {r} ops/s")).unwrap_or_default(),
            c.connections,
            c.pipeline,
            c.accounts,
            c.keys,
        );
        let _ = writeln!(
            s,
            "requests {}  in {:.2} s  throughput {:.0} ops/s  ok {}  errors {}{}",
            self.requests,
            self.elapsed_s,
            self.throughput_ops_s,
            self.ok,
            self.errors.values().sum::<u64>(),
            if self.dropped > 0 {
                format!("  dropped {}", self.dropped)
            } else {
                String::new()
            }
        );
        let _ = writeln!(
            s,
            "\n{:<10} {:>10} {:>8} {:>10} {:>10} {:>10} {:>10} {:>10}",
            "latency", "count", "errors", "p50 µs", "p90 µs", "p99 µs", "p99.9 µs", "max µs"
        );
        let row = |s: &mut String, name: &str, count: u64, errors: u64, l: &Latency| {
            let _ = writeln!(
                s,
                "{:<10} {:>10} {:>8} {:>10.1} {:>10.1} {:>10.1} {:>10.1} {:>10.1}",
                name, count, errors, l.p50, l.p90, l.p99, l.p999, l.max
            );
        };
        row(
            &mut s,
            "all",
            self.requests,
            self.errors.values().sum(),
            &self.latency_us,
        );
        if self.by_command.len() > 1 {
            for (name, r) in &self.by_command {
                row(&mut s, name, r.count, r.errors, &r.latency_us);
            }
        }
        if let Some(l) = &self.send_lag_us {
            let _ = writeln!(
                s,
                "\nsend lag (client, intended -> written): p50 {:.1} µs  p99 {:.1} µs  max {:.1} µs",
                l.p50, l.p99, l.max
            );
        }
        if !self.errors.is_empty() {
            let _ = writeln!(s, "\nerrors by code:");
            for (code, n) in &self.errors {
                let _ = writeln!(s, "  {code:<14} {n}");
            }
        }
        if !self.connection_errors.is_empty() {
            let _ = writeln!(s, "\nconnection errors ({}):", self.connection_errors.len());
            for e in self.connection_errors.iter().take(5) {
                let _ = writeln!(s, "  {e}");
            }
        }
        if let Some(v) = &self.verify {
            let _ = writeln!(
                s,
                "\nverify: {} accounts, {} holds expected open, {} expected expired, {} retries checked, {} live balance checks",
                v.accounts_checked,
                v.holds_expected_open,
                v.holds_expected_expired,
                v.retries_checked,
                v.live_balance_checks
            );
            let _ = writeln!(
                s,
                "  conservation {}  granted {}  spent {}  held {}  retries {}  live balance {}  read errors {}  (skipped: held {}, indeterminate {})",
                v.conservation_failures,
                v.granted_mismatches,
                v.spent_mismatches,
                v.held_mismatches,
                v.retry_mismatches,
                v.live_balance_failures,
                v.read_errors,
                v.held_skipped,
                v.indeterminate
            );
            let _ = writeln!(
                s,
                "  {}",
                if v.mismatches == 0 {
                    "OK".to_string()
                } else {
                    format!("FAILED: {} mismatches", v.mismatches)
                }
            );
            for e in &v.examples {
                let _ = writeln!(s, "  - {e}");
            }
        }
        s
    }
}
