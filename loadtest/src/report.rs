//! The summary: a table on stdout and the same figures as JSON.

use crate::conn::{ErrorTally, Stats};
use crate::members::verify::MembersReport;
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
    /// Error replies by code (first word of the error): how many, how many of
    /// them the workload does not expect, and the first distinct messages.
    pub errors: BTreeMap<String, ErrorTally>,
    /// Error replies the workload does not expect, of every code.
    pub unexpected_errors: u64,
    /// `unexpected_errors / requests`, a fraction.
    pub unexpected_error_rate: f64,
    /// `--max-error-rate`, a fraction: above it the run fails.
    pub max_error_rate: f64,
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
        max_error_rate: f64,
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
            unexpected_errors: stats.unexpected_errors,
            unexpected_error_rate: if requests > 0 {
                stats.unexpected_errors as f64 / requests as f64
            } else {
                0.0
            },
            max_error_rate,
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

    fn error_count(&self) -> u64 {
        self.errors.values().map(|t| t.count).sum()
    }

    /// Why the run failed, each with its exit status, the most serious first:
    /// 2 `--verify` found the server's state wrong; 1 the run broke
    /// (connection errors, no replies); 3 more unexpected error replies than
    /// `--max-error-rate` allows. Empty: it passed.
    pub fn failures(&self) -> Vec<(u8, String)> {
        let mut out = Vec::new();
        if let Some(v) = self.verify.as_ref().filter(|v| v.mismatches > 0) {
            out.push((2, format!("--verify found {} mismatches", v.mismatches)));
        }
        if !self.connection_errors.is_empty() {
            out.push((
                1,
                format!(
                    "{} connections failed, the first: {}",
                    self.connection_errors.len(),
                    self.connection_errors[0]
                ),
            ));
        }
        if self.requests == 0 {
            out.push((1, "no replies were measured".to_string()));
        }
        if self.unexpected_error_rate > self.max_error_rate {
            let codes: Vec<String> = self
                .errors
                .iter()
                .filter(|(_, t)| t.unexpected > 0)
                .map(|(code, t)| format!("{code} {}", t.unexpected))
                .collect();
            out.push((
                3,
                format!(
                    "unexpected error replies: {} of {} ({}), above --max-error-rate {} ({}; the error table shows their messages)",
                    self.unexpected_errors,
                    self.requests,
                    percent(self.unexpected_error_rate),
                    percent(self.max_error_rate),
                    codes.join(", ")
                ),
            ));
        }
        out
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
            self.error_count(),
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
            self.error_count(),
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
            let _ = writeln!(
                s,
                "\nerror replies by code, with their first distinct messages:"
            );
            for (code, t) in &self.errors {
                let kind = match t.unexpected {
                    0 => "expected refusals".to_string(),
                    n if n == t.count => "unexpected".to_string(),
                    n => format!("{n} unexpected"),
                };
                let _ = writeln!(s, "  {code:<14} {:>10}  {kind}", t.count);
                for m in &t.messages {
                    let _ = writeln!(s, "      {m}");
                }
            }
            let _ = writeln!(
                s,
                "unexpected error replies {} of {} ({}), --max-error-rate {}",
                self.unexpected_errors,
                self.requests,
                percent(self.unexpected_error_rate),
                percent(self.max_error_rate)
            );
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
            if let Some(m) = &v.members {
                members_lines(&mut s, m);
            }
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

/// The members workload's checks: caps, refusals, events.
fn members_lines(s: &mut String, m: &MembersReport) {
    let _ = writeln!(
        s,
        "  members {}: over cap {} (MEMBERS) {} (client sums) {} (acknowledged)  used/held {}  available {}  refusals unlike the client's {}  pool overdrawn {}  replies {}{}",
        m.members_checked,
        m.cap_violations,
        m.client_over_cap,
        m.cap_exceeded,
        m.member_mismatches,
        m.available_mismatches,
        m.wrong_refusals,
        m.pool_overdrawn,
        m.reply_mismatches,
        if m.period_ended {
            "  (the caps' period ended during the run: members' counts not compared)"
        } else {
            ""
        }
    );
    let _ = writeln!(
        s,
        "  refusals: LIMITED {}  INSUFFICIENT {}; top-ups {}",
        m.limited_refusals, m.insufficient_refusals, m.top_ups
    );
    let _ = writeln!(
        s,
        "  low events {} seen, {} crossings expected: missing {}  extra {}  values {}",
        m.low_events, m.crossings_expected, m.low_missing, m.low_extra, m.low_value_mismatches
    );
    let _ = writeln!(
        s,
        "  events read {} after {}: limited {}  insufficient {}  refusal events wrong {}  numbering errors {}",
        m.events_read,
        m.after_seq,
        m.limited_events,
        m.insufficient_events,
        m.refusal_event_mismatches,
        m.event_seq_errors
    );
}

/// A fraction as a percentage, without trailing zeros: 0.001 -> `0.1%`.
pub fn percent(fraction: f64) -> String {
    let text = format!("{:.4}", fraction * 100.0);
    let text = text.trim_end_matches('0').trim_end_matches('.');
    format!("{text}%")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percent_reads_plainly() {
        assert_eq!(percent(0.001), "0.1%");
        assert_eq!(percent(0.9), "90%");
        assert_eq!(percent(0.0), "0%");
        assert_eq!(percent(1.0), "100%");
        assert_eq!(percent(0.000_012_3), "0.0012%");
    }
}
