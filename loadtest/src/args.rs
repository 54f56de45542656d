//! The command line: its flags, their checks, and the run described in words.

use crate::members::CapPer;
use crate::workload::{KeyDist, WorkloadKind};
use clap::{Parser, ValueEnum};

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Target {
    /// creditd's own commands.
    Creditd,
    /// redis-server with the equivalent Lua scripts (SCRIPT LOAD, then EVALSHA).
    RedisLua,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ModeArg {
    /// Each connection sends its next batch when the previous replies arrived.
    Closed,
    /// A fixed total rate; latency from each request's intended send time.
    Open,
}

/// How the open loop deals intended send times.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum PacerArg {
    /// A task on the client runtime that deals every due slot, then yields,
    /// over and over: it keeps a client core busy, and no thread hand-off
    /// or timer wake-up stands between a slot and its send. For a client
    /// pinned to its own core(s) (`taskset`).
    Spin,
    /// A thread that sleeps until each slot (the OS timer's precision) and
    /// hands it to the connection: idle between slots, but on a shared core
    /// the hand-off and the wake-up add to the send lag.
    Thread,
}

/// Load generator for creditd (and redis-server + Lua, for comparison).
// No `Debug`: it holds the token.
#[derive(Parser)]
#[command(name = "creditd-loadtest", version, about, long_about = None)]
pub struct Args {
    /// Server address (the only address this tool connects to).
    #[arg(long, default_value = "127.0.0.1:6479")]
    pub addr: String,

    /// What the server is.
    #[arg(long, value_enum, default_value = "creditd")]
    pub target: Target,

    /// Token every connection authenticates with (`AUTH token`): the setup that
    /// grants credits needs a role that may GRANT (admin).
    #[arg(long, env = "CREDITD_TOKEN", hide_env_values = true)]
    pub token: Option<String>,

    /// User name for `AUTH user token`, when the server's token names one.
    #[arg(long, env = "CREDITD_USER", requires = "token")]
    pub user: Option<String>,

    /// Fail (exit 3) when more than this share of the replies are error replies
    /// the workload does not expect: a fraction (0.001) or a percentage (0.1%).
    #[arg(long, default_value = "0.1%", value_parser = parse_rate)]
    pub max_error_rate: f64,

    #[arg(long, value_enum, default_value = "closed")]
    pub mode: ModeArg,

    /// Open loop: total requests per second over all connections.
    #[arg(long)]
    pub rate: Option<f64>,

    #[arg(long, default_value_t = 50)]
    pub connections: usize,

    /// Closed loop: requests per batch. Open loop: most requests in flight per connection.
    #[arg(long, default_value_t = 1)]
    pub pipeline: usize,

    /// Seconds to run after the warmup (default 10 unless --requests is given).
    #[arg(long)]
    pub duration: Option<f64>,

    /// Measured requests to send in all (stops at whichever of this and --duration comes first).
    #[arg(long)]
    pub requests: Option<u64>,

    /// Seconds run before measuring (not in the figures; still verified).
    #[arg(long, default_value_t = 0.0)]
    pub warmup: f64,

    /// What each connection sends.
    #[arg(long, value_enum, default_value = "reserve")]
    pub workload: WorkloadKind,

    /// Number of accounts; each gets --grant credits before the run (--pool
    /// with --workload members).
    #[arg(long, default_value_t = 10_000)]
    pub accounts: u32,

    /// How accounts are picked.
    #[arg(long, value_enum, default_value = "zipf")]
    pub keys: KeyDist,

    /// Zipf exponent (--keys zipf).
    #[arg(long, default_value_t = 0.99)]
    pub zipf_s: f64,

    #[arg(long, default_value_t = 1)]
    pub seed: u64,

    /// Credits granted to each account before the run.
    #[arg(long, default_value_t = 1_000_000_000_000)]
    pub grant: u64,

    /// Amount of each RESERVE (--workload reserve).
    #[arg(long, default_value_t = 1)]
    pub amount: u64,

    /// TTL of each RESERVE of --workload reserve (default: none, the server's default).
    #[arg(long)]
    pub reserve_ttl_ms: Option<u64>,

    /// TTL of the abandoned holds of --workload mix (they must expire).
    #[arg(long, default_value_t = 200)]
    pub abandon_ttl_ms: u64,

    /// The server's default hold TTL (creditd hold_ttl_ms), for --verify.
    #[arg(long, default_value_t = 900_000)]
    pub default_ttl_ms: u64,

    /// --workload members: members per account (m0 spends heavily and meets its cap).
    #[arg(long, default_value_t = 4)]
    pub members: u32,

    /// --workload members: every member's cap (LIMIT account member CAP PER ...).
    #[arg(long, default_value_t = 20_000)]
    pub member_cap: u64,

    /// --workload members: the period the caps count over.
    #[arg(long, value_enum, default_value = "day")]
    pub member_per: CapPer,

    /// --workload members: credits each account's pool starts with, and each
    /// top-up GRANT adds when `available` falls below the lowest alert
    /// (--grant does not apply to this workload).
    #[arg(long, default_value_t = 10_000)]
    pub pool: u64,

    /// --workload members: low-balance thresholds set with ALERT on every
    /// account, comma-separated, each at most --pool, at most 8 (default: a
    /// half, a quarter and a tenth of --pool).
    #[arg(long, value_delimiter = ',')]
    pub alerts: Vec<u64>,

    /// Prefix of every id of this run (default: unique per run, so runs never collide).
    #[arg(long)]
    pub run_prefix: Option<String>,

    /// Open loop: how intended send times are dealt.
    #[arg(long, value_enum, default_value_t = PacerArg::Spin)]
    pub pacer: PacerArg,

    /// Open loop: the pacer thread's timer slack in µs (Linux; the kernel default is 50).
    #[arg(long, default_value_t = 50)]
    pub timer_slack_us: u64,

    /// Client runtime threads (1: everything on one thread, like redis-benchmark).
    #[arg(long, default_value_t = 1)]
    pub threads: usize,

    /// Seconds a connect or a read may take before the connection is given up.
    #[arg(long, default_value_t = 30.0)]
    pub timeout: f64,

    /// Seconds to wait for outstanding replies after the end.
    #[arg(long, default_value_t = 10.0)]
    pub drain: f64,

    /// At the end, check every touched account against the client's ledger
    /// (with --workload members: also every member's cap and the events).
    #[arg(long)]
    pub verify: bool,

    /// Write the report as JSON to this file.
    #[arg(long)]
    pub json: Option<std::path::PathBuf>,

    /// Nothing on stderr but failures: no header, progress bar or progress lines.
    #[arg(long)]
    pub quiet: bool,
}

/// `--max-error-rate`: `0.001` (a fraction) or `0.1%` (a percentage), 0 to 1.
pub fn parse_rate(text: &str) -> Result<f64, String> {
    let (number, scale) = match text.trim().strip_suffix('%') {
        Some(n) => (n.trim(), 100.0),
        None => (text.trim(), 1.0),
    };
    let value: f64 = number.parse().map_err(|_| {
        format!("{text:?} is not a number: give a fraction (0.001) or a percentage (0.1%)")
    })?;
    let rate = value / scale;
    if !(0.0..=1.0).contains(&rate) {
        return Err(format!("{text:?} is not between 0 and 1 (0% and 100%)"));
    }
    Ok(rate)
}

/// What the run does, in words, for the line printed at its start.
pub fn describe(args: &Args) -> String {
    let workload = args.workload.name();
    let mode = match args.mode {
        ModeArg::Closed => "closed loop".to_string(),
        ModeArg::Open => format!("open loop at {} requests/s", args.rate.unwrap_or(0.0)),
    };
    let plural =
        |n: usize, one: &str, many: &str| format!("{n} {}", if n == 1 { one } else { many });
    let target = match args.target {
        Target::Creditd => "creditd",
        Target::RedisLua => "redis-server with the Lua scripts",
    };
    let mut bound = Vec::new();
    if let Some(d) = args.duration {
        bound.push(format!("{d} s"));
    }
    if let Some(n) = args.requests {
        bound.push(format!("{n} requests"));
    }
    if bound.is_empty() {
        bound.push("10 s".to_string());
    }
    let warmup = if args.warmup > 0.0 {
        format!(" after a {} s warmup", args.warmup)
    } else {
        String::new()
    };
    format!(
        "running the {workload} workload, {mode}, {}, pipeline {}, against {target} at {}, for {}{warmup}",
        plural(args.connections, "connection", "connections"),
        args.pipeline,
        args.addr,
        bound.join(" or "),
    )
}

pub fn check(a: &Args) -> Result<(), String> {
    if a.connections == 0 || a.pipeline == 0 || a.accounts == 0 {
        return Err("--connections, --pipeline and --accounts must be at least 1".into());
    }
    if a.connections > 10_000 {
        return Err("--connections at most 10000".into());
    }
    if a.mode == ModeArg::Open {
        match a.rate {
            Some(r) if r > 0.0 && r.is_finite() => {}
            _ => return Err("--mode open needs --rate R > 0".into()),
        }
    }
    if let Some(d) = a.duration {
        if !(d > 0.0 && d <= 86_400.0) {
            return Err("--duration must be in (0, 86400] seconds".into());
        }
    }
    if a.requests == Some(0) {
        return Err("--requests must be at least 1".into());
    }
    if !(0.0..=3_600.0).contains(&a.warmup) {
        return Err("--warmup must be in [0, 3600] seconds".into());
    }
    if !(a.zipf_s >= 0.0 && a.zipf_s.is_finite()) {
        return Err("--zipf-s must be >= 0".into());
    }
    if a.abandon_ttl_ms == 0 || a.abandon_ttl_ms > 86_400_000 {
        return Err("--abandon-ttl-ms must be 1 to 86400000".into());
    }
    if a.grant == 0 || a.grant > 1_000_000_000_000_000 {
        return Err("--grant must be 1 to 10^15".into());
    }
    if !(a.timeout > 0.0 && a.drain >= 0.0) {
        return Err("--timeout must be > 0 and --drain >= 0".into());
    }
    if a.workload == WorkloadKind::Members {
        check_members(a)?;
    }
    Ok(())
}

/// The members workload's flags.
fn check_members(a: &Args) -> Result<(), String> {
    const MAX_AMOUNT: u64 = 1_000_000_000_000_000;
    if a.target != Target::Creditd {
        return Err(
            "--workload members runs against creditd only (the Lua model has no members)".into(),
        );
    }
    if (a.accounts as usize) < a.connections {
        return Err(format!(
            "--workload members drives each account from one connection: --accounts ({}) \
             must be at least --connections ({})",
            a.accounts, a.connections
        ));
    }
    if !(1..=1000).contains(&a.members) {
        return Err("--members must be 1 to 1000".into());
    }
    if a.member_cap == 0 || a.member_cap > MAX_AMOUNT {
        return Err("--member-cap must be 1 to 10^15".into());
    }
    if a.pool == 0 || a.pool > MAX_AMOUNT / 1000 {
        return Err("--pool must be 1 to 10^12".into());
    }
    let alerts = alert_thresholds(a);
    if alerts.is_empty() || alerts.len() > 8 {
        return Err("--alerts: 1 to 8 thresholds (the server keeps at most 8)".into());
    }
    if alerts.iter().any(|&t| t == 0 || t > a.pool) {
        return Err(format!(
            "--alerts: each threshold 1 to --pool ({}), so a top-up arms them all again",
            a.pool
        ));
    }
    Ok(())
}

/// The members workload's thresholds: `--alerts`, or the default for `--pool`;
/// ascending, each once.
pub fn alert_thresholds(a: &Args) -> Vec<u64> {
    let mut t = if a.alerts.is_empty() {
        crate::members::MembersCfg::default_thresholds(a.pool)
    } else {
        a.alerts.clone()
    };
    t.sort_unstable();
    t.dedup();
    t
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(list: &[&str]) -> Args {
        Args::try_parse_from([&["creditd-loadtest"], list].concat()).expect("valid arguments")
    }

    #[test]
    fn max_error_rate_is_a_fraction_or_a_percentage() {
        assert_eq!(parse_rate("0.001"), Ok(0.001));
        assert_eq!(parse_rate("0.1%"), Ok(0.001));
        assert_eq!(parse_rate("5 %"), Ok(0.05));
        assert_eq!(parse_rate("0"), Ok(0.0));
        assert_eq!(parse_rate("100%"), Ok(1.0));
        assert!(parse_rate("1.5").is_err());
        assert!(parse_rate("-1%").is_err());
        assert!(parse_rate("%").is_err());
        assert_eq!(args(&[]).max_error_rate, 0.001);
    }

    #[test]
    fn the_header_says_what_runs_in_words() {
        assert_eq!(
            describe(&args(&["--workload", "mix", "--addr", "127.0.0.1:6479"])),
            "running the mix workload, closed loop, 50 connections, pipeline 1, \
             against creditd at 127.0.0.1:6479, for 10 s"
        );
        assert_eq!(
            describe(&args(&[
                "--target",
                "redis-lua",
                "--addr",
                "127.0.0.1:6379",
                "--mode",
                "open",
                "--rate",
                "5000",
                "--connections",
                "1",
                "--pipeline",
                "16",
                "--requests",
                "1000",
                "--duration",
                "5",
                "--warmup",
                "1",
            ])),
            "running the reserve workload, open loop at 5000 requests/s, 1 connection, \
             pipeline 16, against redis-server with the Lua scripts at 127.0.0.1:6379, \
             for 5 s or 1000 requests after a 1 s warmup"
        );
    }
}
