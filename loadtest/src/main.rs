//! creditd-loadtest: open- and closed-loop load generator for creditd, and for
//! redis-server running the equivalent Lua scripts, with one identical workload
//! and client so the two compare fairly. See loadtest/README.md.

mod args;
mod client;
mod conn;
mod ledger;
mod members;
mod ops;
mod report;
mod resp;
mod verify;
mod workload;

use args::{alert_thresholds, check, describe, Args, ModeArg, PacerArg, Target};
use clap::Parser;
use client::{Auth, Endpoint};
use conn::{ConnCfg, Mode, Progress, Stats};
use indicatif::{ProgressBar, ProgressStyle};
use ledger::Ledger;
use members::traffic::MembersLedger;
use members::MembersCfg;
use ops::{lua, Op, Shas, Speller, TargetKind};
use report::{Report, RunConfig};
use resp::Reply;
use std::io::IsTerminal;
use std::process::ExitCode;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tokio::sync::mpsc;
use workload::{Generator, KeyDist, WorkloadCfg, WorkloadKind};

fn main() -> ExitCode {
    // Bad arguments exit 64 (clap's own code, 2, means verify mismatches here).
    let args = match Args::try_parse() {
        Ok(args) => args,
        Err(e) => {
            let _ = e.print();
            return ExitCode::from(if e.use_stderr() { 64 } else { 0 });
        }
    };
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

/// What to do about a setup command the server refused for want of rights.
fn setup_hint(reply: &Reply) -> &'static str {
    match reply.error_code() {
        Some("NOAUTH") => " (the server wants a token: give it with --token or CREDITD_TOKEN)",
        Some("NOPERM") => {
            " (the token's role may not run it: the setup grants credits, which takes an admin token)"
        }
        _ => "",
    }
}

/// Connects (and authenticates), then loads the scripts (redis-lua) or checks
/// the server answers (creditd).
async fn prepare(args: &Args, endpoint: &Endpoint, timeout: Duration) -> Result<Speller, String> {
    let prefix = args.run_prefix.clone().unwrap_or_else(|| {
        let ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis())
            .unwrap_or(0);
        format!("lt{:x}:", ms % (1 << 40))
    });
    let mut c = endpoint.connect(timeout).await?;
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
                    _ => return Err(format!("SCRIPT LOAD {name}.lua: {r}{}", setup_hint(&r))),
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
async fn grant_all(
    args: &Args,
    endpoint: &Endpoint,
    speller: &Speller,
    timeout: Duration,
) -> Result<(), String> {
    const CONNS: u32 = 4;
    const CHUNK: u32 = 1000;
    let n = args.accounts;
    let mut tasks = Vec::new();
    for k in 0..CONNS {
        let endpoint = endpoint.clone();
        let speller = speller.clone();
        let amount = args.grant;
        tasks.push(tokio::spawn(async move {
            let mut c = endpoint.connect(timeout).await?;
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
                        return Err(format!(
                            "GRANT account {}: {r}{}",
                            first + i as u64,
                            setup_hint(r)
                        ));
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

/// The members workload's setup from the flags (`None` for other workloads).
fn members_cfg(args: &Args) -> Option<MembersCfg> {
    (args.workload == WorkloadKind::Members).then(|| MembersCfg {
        members: args.members,
        cap: args.member_cap,
        per: args.member_per,
        pool: args.pool,
        thresholds: alert_thresholds(args),
        accounts: args.accounts,
        connections: args.connections as u32,
        keys: args.keys,
        zipf_s: args.zipf_s,
        period_ends: None,
    })
}

/// When the caps' period ends (Unix ms, 0: never), as an instant two seconds
/// early: the client's and the server's clocks may differ a little.
fn period_ends(period_end_ms: u64) -> Option<Instant> {
    if period_end_ms == 0 {
        return None;
    }
    let now_ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64);
    let left = period_end_ms.saturating_sub(now_ms).saturating_sub(2_000);
    Some(Instant::now() + Duration::from_millis(left))
}

async fn run(args: Args) -> Result<u8, String> {
    let timeout = Duration::from_secs_f64(args.timeout);
    if !args.quiet {
        eprintln!("creditd-loadtest: {}", describe(&args));
    }
    let endpoint = Endpoint {
        addr: args.addr.clone(),
        auth: args.token.clone().map(|token| Auth {
            user: args.user.clone(),
            token,
        }),
    };
    let speller = prepare(&args, &endpoint, timeout).await?;
    let t0 = Instant::now();
    let mut members_cfg = members_cfg(&args);
    let members_setup = match &members_cfg {
        Some(cfg) => Some(members::setup::setup(cfg, &endpoint, &speller, timeout).await?),
        None => {
            grant_all(&args, &endpoint, &speller, timeout).await?;
            None
        }
    };
    let grant_s = t0.elapsed().as_secs_f64();

    let duration = match (args.duration, args.requests) {
        (Some(d), _) => d,
        (None, Some(_)) => 86_400.0,
        (None, None) => 10.0,
    };
    let prefix = String::from_utf8_lossy(&speller.prefix).into_owned();
    if let (Some(cfg), Some(setup)) = (members_cfg.as_mut(), members_setup) {
        cfg.period_ends = period_ends(setup.period_end_ms);
        if !args.quiet {
            eprintln!(
                "creditd-loadtest: set up {} accounts in {grant_s:.2} s: a pool of {} credits, \
                 {} members capped at {} per {}, alerts below {:?}; ids start with {prefix}",
                args.accounts,
                cfg.pool,
                cfg.members,
                cfg.cap,
                cfg.per.word(),
                cfg.thresholds,
            );
        }
    } else if !args.quiet {
        eprintln!(
            "creditd-loadtest: granted {} credits to each of {} accounts in {grant_s:.2} s; ids start with {prefix}",
            args.grant, args.accounts,
        );
    }
    let show_bar = !args.quiet && std::io::stderr().is_terminal();

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
        members: members_cfg.clone(),
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
            endpoint.clone(),
            cfg,
            speller.clone(),
            gen,
            progress.clone(),
            slots,
            start,
        );
        tasks.push(tokio::spawn(fut));
    }
    let (pacer, spin_pacer) = if args.mode == ModeArg::Open {
        let rate = args.rate.unwrap_or(1.0);
        let limit = args.requests;
        let slack = args.timer_slack_us;
        let slots = conn::Slots::new(start, measure_start, end, rate, limit);
        match args.pacer {
            PacerArg::Thread => (
                Some(
                    std::thread::Builder::new()
                        .name("pacer".into())
                        .spawn(move || conn::pacer(senders, slots, slack))
                        .map_err(|e| format!("pacer thread: {e}"))?,
                ),
                None,
            ),
            PacerArg::Spin => (None, Some(tokio::spawn(conn::spin_pacer(senders, slots)))),
        }
    } else {
        (None, None)
    };

    let bar = if show_bar {
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
    let mut members_ledger = MembersLedger::default();
    let mut dropped = 0;
    let mut errors = Vec::new();
    for (i, t) in tasks.into_iter().enumerate() {
        let mut r = t.await.map_err(|e| format!("connection task: {e}"))?;
        stats.merge(&r.stats);
        if let Some(m) = r.gen.take_members() {
            members_ledger.merge(m);
        }
        ledger.merge(r.gen.ledger);
        dropped += r.dropped;
        if let Some(e) = r.error {
            errors.push(format!("connection {i}: {e}"));
        }
    }
    if let Some(p) = pacer {
        let _ = p.join();
    }
    if let Some(p) = spin_pacer {
        let _ = p.await;
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
        workload: args.workload.name().into(),
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
    let mut report = Report::new(
        config,
        &stats,
        elapsed_s,
        dropped,
        errors,
        args.max_error_rate,
    );
    if args.verify {
        let v = match (&members_cfg, members_setup) {
            (Some(cfg), Some(setup)) => {
                if !args.quiet {
                    eprintln!(
                        "creditd-loadtest: verifying {} accounts, their members and the events after {}...",
                        cfg.accounts, setup.after_seq
                    );
                }
                let (after, ledger) = (setup.after_seq, members_ledger);
                members::verify::verify(cfg, &endpoint, &speller, ledger, after, timeout).await?
            }
            _ => {
                if !args.quiet {
                    eprintln!(
                        "creditd-loadtest: verifying {} accounts...",
                        ledger.touched.len()
                    );
                }
                verify::verify(&endpoint, &speller, ledger, args.grant, timeout).await?
            }
        };
        report.verify = Some(v);
    }
    print!("{}", report.table());
    if let Some(path) = &args.json {
        let text = serde_json::to_string_pretty(&report).map_err(|e| format!("json: {e}"))?;
        std::fs::write(path, text + "\n").map_err(|e| format!("{}: {e}", path.display()))?;
    }
    let failures = report.failures();
    for (_, why) in &failures {
        eprintln!("creditd-loadtest: FAILED: {why}");
    }
    Ok(failures.first().map_or(0, |(code, _)| *code))
}
