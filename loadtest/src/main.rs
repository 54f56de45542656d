//! creditd-loadtest: open- and closed-loop load generator for creditd, and for
//! redis-server running the equivalent Lua scripts, with one identical workload
//! and client so the two compare fairly. See loadtest/README.md.

mod client;
mod conn;
mod ops;
mod report;
mod resp;
mod verify;
mod workload;

use clap::{Parser, ValueEnum};
use client::Client;
use conn::{ConnCfg, Mode, Progress, Stats};
use indicatif::{ProgressBar, ProgressStyle};
use ops::{lua, Op, Shas, Speller, TargetKind};
use report::{Report, RunConfig};
use std::io::IsTerminal;
use std::process::ExitCode;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tokio::sync::mpsc;
use workload::{Generator, KeyDist, Ledger, WorkloadCfg, WorkloadKind};

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Target {
    /// creditd's own commands.
    Creditd,
    /// redis-server with the equivalent Lua scripts (SCRIPT LOAD, then EVALSHA).
    RedisLua,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum ModeArg {
    /// Each connection sends its next batch when the previous replies arrived.
    Closed,
    /// A fixed total rate; latency from each request's intended send time.
    Open,
}

/// Load generator for creditd (and redis-server + Lua, for comparison).
#[derive(Debug, Parser)]
#[command(name = "creditd-loadtest", version, about, long_about = None)]
struct Args {
    /// Server address (the only address this tool connects to).
    #[arg(long, default_value = "127.0.0.1:6479")]
    addr: String,

    /// What the server is.
    #[arg(long, value_enum, default_value = "creditd")]
    target: Target,

    #[arg(long, value_enum, default_value = "closed")]
    mode: ModeArg,

    /// Open loop: total requests per second over all connections.
    #[arg(long)]
    rate: Option<f64>,

    #[arg(long, default_value_t = 50)]
    connections: usize,

    /// Closed loop: requests per batch. Open loop: most requests in flight per connection.
    #[arg(long, default_value_t = 1)]
    pipeline: usize,

    /// Seconds to run after the warmup (default 10 unless --requests is given).
    #[arg(long)]
    duration: Option<f64>,

    /// Measured requests to send in all (stops at whichever of this and --duration comes first).
    #[arg(long)]
    requests: Option<u64>,

    /// Seconds run before measuring (not in the figures; still verified).
    #[arg(long, default_value_t = 0.0)]
    warmup: f64,

    #[arg(long, value_enum, default_value = "reserve")]
    workload: WorkloadKind,

    /// Number of accounts; each gets --grant credits before the run.
    #[arg(long, default_value_t = 10_000)]
    accounts: u32,

    /// How accounts are picked.
    #[arg(long, value_enum, default_value = "zipf")]
    keys: KeyDist,

    /// Zipf exponent (--keys zipf).
    #[arg(long, default_value_t = 0.99)]
    zipf_s: f64,

    #[arg(long, default_value_t = 1)]
    seed: u64,

    /// Credits granted to each account before the run.
    #[arg(long, default_value_t = 1_000_000_000_000)]
    grant: u64,

    /// Amount of each RESERVE (--workload reserve).
    #[arg(long, default_value_t = 1)]
    amount: u64,

    /// TTL of each RESERVE of --workload reserve (default: none, the server's default).
    #[arg(long)]
    reserve_ttl_ms: Option<u64>,

    /// TTL of the abandoned holds of --workload mix (they must expire).
    #[arg(long, default_value_t = 200)]
    abandon_ttl_ms: u64,

    /// The server's default hold TTL (creditd hold_ttl_ms), for --verify.
    #[arg(long, default_value_t = 900_000)]
    default_ttl_ms: u64,

    /// Prefix of every id of this run (default: unique per run, so runs never collide).
    #[arg(long)]
    run_prefix: Option<String>,

    /// Open loop: the pacer thread's timer slack in µs (Linux; the kernel default is 50).
    #[arg(long, default_value_t = 50)]
    timer_slack_us: u64,

    /// Client runtime threads (1: everything on one thread, like redis-benchmark).
    #[arg(long, default_value_t = 1)]
    threads: usize,

    /// Seconds a connect or a read may take before the connection is given up.
    #[arg(long, default_value_t = 30.0)]
    timeout: f64,

    /// Seconds to wait for outstanding replies after the end.
    #[arg(long, default_value_t = 10.0)]
    drain: f64,

    /// At the end, check every touched account against the client's ledger.
    #[arg(long)]
    verify: bool,

    /// Write the report as JSON to this file.
    #[arg(long)]
    json: Option<std::path::PathBuf>,

    /// No progress bar.
    #[arg(long)]
    quiet: bool,
}

fn main() -> ExitCode {
    let args = Args::parse();
    if let Err(e) = check(&args) {
        eprintln!("creditd-loadtest: {e}");
        return ExitCode::from(64);
    }
    let rt = if args.threads <= 1 {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
    } else {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(args.threads)
            .enable_all()
            .build()
    };
    let rt = match rt {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("creditd-loadtest: runtime: {e}");
            return ExitCode::from(1);
        }
    };
    match rt.block_on(run(args)) {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            eprintln!("creditd-loadtest: {e}");
            ExitCode::from(1)
        }
    }
}

fn check(a: &Args) -> Result<(), String> {
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
    Ok(())
}

/// Loads the scripts (redis-lua) or checks the server answers (creditd).
async fn prepare(args: &Args, timeout: Duration) -> Result<Speller, String> {
    let prefix = args.run_prefix.clone().unwrap_or_else(|| {
        let ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis())
            .unwrap_or(0);
        format!("lt{:x}:", ms % (1 << 40))
    });
    let mut c = Client::connect(&args.addr, timeout).await?;
    let pong = c.call(&[b"PING"]).await?;
    if pong.error_code().is_some() {
        return Err(format!("PING: {pong}"));
    }
    let (target, shas) = match args.target {
        Target::Creditd => (TargetKind::Creditd, Shas::default()),
        Target::RedisLua => {
            let mut shas = Vec::new();
            for (name, body) in lua::SCRIPTS {
                let src = lua::source(body);
                let r = c.call(&[b"SCRIPT", b"LOAD", src.as_bytes()]).await?;
                match r.as_str() {
                    Some(sha) if r.error_code().is_none() => shas.push(sha.to_string()),
                    _ => return Err(format!("SCRIPT LOAD {name}.lua: {r}")),
                }
            }
            (TargetKind::RedisLua, Shas(shas))
        }
    };
    Ok(Speller {
        target,
        prefix: prefix.into_bytes(),
        shas,
    })
}

/// GRANTs every account, pipelined over a few connections.
async fn grant_all(args: &Args, speller: &Speller, timeout: Duration) -> Result<(), String> {
    const CONNS: u32 = 4;
    const CHUNK: u32 = 1000;
    let n = args.accounts;
    let mut tasks = Vec::new();
    for k in 0..CONNS {
        let addr = args.addr.clone();
        let speller = speller.clone();
        let amount = args.grant;
        tasks.push(tokio::spawn(async move {
            let mut c = Client::connect(&addr, timeout).await?;
            let mut first = (k * CHUNK) as u64;
            while first < n as u64 {
                let last = (first + CHUNK as u64).min(n as u64);
                for acct in first..last {
                    let op = Op::Grant {
                        acct: acct as u32,
                        amount,
                    };
                    speller.encode(&mut c.enc, &op);
                }
                for (i, r) in c
                    .exchange((last - first) as usize)
                    .await?
                    .iter()
                    .enumerate()
                {
                    if r.as_int().is_none() || r.error_code().is_some() {
                        return Err(format!("GRANT account {}: {r}", first + i as u64));
                    }
                }
                first += (CHUNK * CONNS) as u64;
            }
            Ok::<(), String>(())
        }));
    }
    for t in tasks {
        t.await.map_err(|e| format!("grant task: {e}"))??;
    }
    Ok(())
}

async fn run(args: Args) -> Result<u8, String> {
    let timeout = Duration::from_secs_f64(args.timeout);
    let speller = prepare(&args, timeout).await?;
    let t0 = Instant::now();
    grant_all(&args, &speller, timeout).await?;
    let grant_s = t0.elapsed().as_secs_f64();

    let duration = match (args.duration, args.requests) {
        (Some(d), _) => d,
        (None, Some(_)) => 86_400.0,
        (None, None) => 10.0,
    };
    let show = !args.quiet && std::io::stderr().is_terminal();
    if show {
        eprintln!(
            "granted {} accounts in {grant_s:.2} s; running {:?} {:?} against {} ({})",
            args.accounts,
            args.workload,
            args.mode,
            args.addr,
            String::from_utf8_lossy(&speller.prefix)
        );
    }

    // Leave the connections time to connect before the first request.
    let start = Instant::now() + Duration::from_millis(200 + 2 * args.connections as u64);
    let measure_start = start + Duration::from_secs_f64(args.warmup);
    let end = measure_start + Duration::from_secs_f64(duration);
    let mode = match args.mode {
        ModeArg::Closed => Mode::Closed,
        ModeArg::Open => Mode::Open,
    };
    let wcfg = WorkloadCfg {
        kind: args.workload,
        accounts: args.accounts,
        keys: args.keys,
        zipf_s: args.zipf_s,
        amount: args.amount,
        reserve_ttl_ms: args.reserve_ttl_ms,
        abandon_ttl_ms: args.abandon_ttl_ms,
        default_ttl_ms: args.default_ttl_ms,
        verify: args.verify,
    };
    let progress = Arc::new(Progress::default());
    let n = args.connections;
    let mut senders = Vec::new();
    let mut tasks = Vec::with_capacity(n);
    for i in 0..n {
        let quota = args.requests.map(|r| {
            let share = r / n as u64 + u64::from((i as u64) < r % n as u64);
            share.max(1)
        });
        let cfg = ConnCfg {
            mode,
            pipeline: args.pipeline,
            measure_start,
            end,
            quota,
            drain: Duration::from_secs_f64(args.drain),
            io_timeout: timeout,
        };
        let slots = if args.mode == ModeArg::Open {
            let (tx, rx) = mpsc::unbounded_channel();
            senders.push(tx);
            Some(rx)
        } else {
            None
        };
        let gen = Generator::new(wcfg.clone(), i as u32, args.seed);
        let fut = conn::run(
            args.addr.clone(),
            cfg,
            speller.clone(),
            gen,
            progress.clone(),
            slots,
            start,
        );
        tasks.push(tokio::spawn(fut));
    }
    let pacer = if args.mode == ModeArg::Open {
        let rate = args.rate.unwrap_or(1.0);
        let limit = args.requests;
        let slack = args.timer_slack_us;
        Some(
            std::thread::Builder::new()
                .name("pacer".into())
                .spawn(move || conn::pacer(senders, start, measure_start, end, rate, limit, slack))
                .map_err(|e| format!("pacer thread: {e}"))?,
        )
    } else {
        None
    };

    let bar = if show {
        let total_ms = ((end - start).as_millis() as u64).max(1);
        let pb = ProgressBar::new(total_ms);
        pb.set_style(
            ProgressStyle::with_template("{spinner} [{elapsed}] {bar:40} {percent:>3}% {msg}")
                .expect("valid template"),
        );
        Some(pb)
    } else {
        None
    };
    let ticker = bar.clone().map(|pb| {
        let progress = progress.clone();
        let limit = args.requests;
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_millis(250));
            let mut last = (Instant::now(), 0u64);
            loop {
                tick.tick().await;
                let now = Instant::now();
                let done = progress.replies.load(Ordering::Relaxed);
                let rate = (done - last.1) as f64 / (now - last.0).as_secs_f64().max(1e-3);
                last = (now, done);
                let by_time = now.saturating_duration_since(start).as_millis() as u64;
                let pos = match limit {
                    Some(l) => by_time.max(done * pb.length().unwrap_or(1) / l.max(1)),
                    None => by_time,
                };
                pb.set_position(pos.min(pb.length().unwrap_or(pos)));
                pb.set_message(format!("{rate:>9.0} ops/s  {done} replies"));
            }
        })
    });

    let mut stats = Stats::new();
    let mut ledger = Ledger::default();
    let mut dropped = 0;
    let mut errors = Vec::new();
    for (i, t) in tasks.into_iter().enumerate() {
        let r = t.await.map_err(|e| format!("connection task: {e}"))?;
        stats.merge(&r.stats);
        ledger.merge(r.gen.ledger);
        dropped += r.dropped;
        if let Some(e) = r.error {
            errors.push(format!("connection {i}: {e}"));
        }
    }
    if let Some(p) = pacer {
        let _ = p.join();
    }
    if let Some(t) = ticker {
        t.abort();
    }
    if let Some(pb) = &bar {
        pb.finish_and_clear();
    }

    let elapsed_s = stats
        .last_reply
        .map(|t| t.saturating_duration_since(measure_start).as_secs_f64())
        .unwrap_or(0.0);
    let config = RunConfig {
        target: match args.target {
            Target::Creditd => "creditd",
            Target::RedisLua => "redis-lua",
        }
        .into(),
        addr: args.addr.clone(),
        mode: match args.mode {
            ModeArg::Closed => "closed",
            ModeArg::Open => "open",
        }
        .into(),
        workload: match args.workload {
            WorkloadKind::Reserve => "reserve",
            WorkloadKind::Mix => "mix",
        }
        .into(),
        connections: n,
        pipeline: args.pipeline,
        rate: args.rate.filter(|_| args.mode == ModeArg::Open),
        duration_s: args.duration,
        requests: args.requests,
        warmup_s: args.warmup,
        accounts: args.accounts,
        keys: match args.keys {
            KeyDist::Uniform => "uniform",
            KeyDist::Zipf => "zipf",
        }
        .into(),
        zipf_s: args.zipf_s,
        seed: args.seed,
        threads: args.threads,
        run_prefix: String::from_utf8_lossy(&speller.prefix).into_owned(),
    };
    let mut report = Report::new(config, &stats, elapsed_s, dropped, errors);
    if args.verify {
        if show {
            eprintln!("verifying {} accounts...", ledger.touched.len());
        }
        let v = verify::verify(&args.addr, &speller, ledger, args.grant, timeout).await?;
        report.verify = Some(v);
    }
    print!("{}", report.table());
    if let Some(path) = &args.json {
        let text = serde_json::to_string_pretty(&report).map_err(|e| format!("json: {e}"))?;
        std::fs::write(path, text + "\n").map_err(|e| format!("{}: {e}", path.display()))?;
    }
    let verify_failed = report.verify.as_ref().is_some_and(|v| v.mismatches > 0);
    Ok(if verify_failed {
        2
    } else if !report.connection_errors.is_empty() || report.requests == 0 {
        1
    } else {
        0
    })
}
