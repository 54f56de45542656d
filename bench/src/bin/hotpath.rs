//! A plain timing loop of RESERVE+COMMIT pairs over 1,000,000 accounts, for
//! profilers (`perf record`, `valgrind --tool=callgrind`).
//!
//! `cargo run --release -p creditd-bench --bin hotpath -- [pairs] [accounts]`
//! (`CREDITD_BENCH_WINDOW_MS`, `CREDITD_BENCH_MEMBER`,
//! `CREDITD_BENCH_WARMUP_PAIRS`, `CREDITD_BENCH_PREFETCH`: see below)

use creditd_bench::{id_into, loaded_engine_with, reserve_commit_as, Keys, ACCOUNTS};
use creditd_engine::account::{Cap, Per};
use creditd_engine::command::Charge;
use creditd_engine::command::Mutation;
use creditd_engine::config::Config;
use creditd_engine::id::Bytes;
/// mimalloc for the engine microbenchmarks (the server binary uses the
/// system allocator: see docs/PERFORMANCE.md, "Allocator").
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::time::Instant;

fn main() {
    let pairs: u64 = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(2_000_000);
    let accounts = std::env::args()
        .nth(2)
        .and_then(|a| a.parse().ok())
        .unwrap_or(ACCOUNTS);
    let mut config = Config::builtin();
    // CREDITD_BENCH_WINDOW_MS: a short idempotency window, so records turn
    // over as in a server running longer than its window (steady state).
    if let Some(ms) = std::env::var("CREDITD_BENCH_WINDOW_MS")
        .ok()
        .and_then(|v| v.parse().ok())
    {
        config.settings.idempotency_window_ms = ms;
    }
    let engine = loaded_engine_with(accounts, 1_000_000_000, config);
    let mut a = [0u8; 32];
    // CREDITD_BENCH_MEMBER=<id>: every pair charges that member too, capped
    // per day far above what the run spends (what MEMBER costs).
    let member = std::env::var("CREDITD_BENCH_MEMBER").ok();
    if let Some(m) = &member {
        let cap = Some(Cap {
            limit: creditd_engine::MAX_AMOUNT,
            per: Per::Day,
        });
        for i in 0..accounts {
            let limit = Mutation::Limit {
                member: Bytes(m.as_bytes()),
                cap,
            };
            let account = id_into(&mut a, b"acct:", i);
            engine.execute(account, &limit).expect("limit");
        }
    }
    let member = member.as_deref().map(str::as_bytes);
    let mut keys = Keys::uniform(accounts, 1);
    // Steady state: untimed pairs first, so every account's history is at
    // its cap (1,000 entries: 500 pairs) and the allocator has its pages.
    // CREDITD_BENCH_WARMUP_PAIRS overrides (0: none); by default 600 pairs
    // an account, at most as many as the timed run.
    let warmup: u64 = std::env::var("CREDITD_BENCH_WARMUP_PAIRS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| pairs.min(accounts.saturating_mul(600)));
    for n in 0..warmup {
        let account = id_into(&mut a, b"acct:", keys.next_key());
        reserve_commit_as(&engine, account, n, Charge::Amount(3), member);
    }
    // CREDITD_BENCH_PREFETCH=<n>: pairs go in groups of n accounts, whose
    // accounts `Engine::prefetch` reads first (what a pipeline of n does).
    let group: usize = std::env::var("CREDITD_BENCH_PREFETCH")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1)
        .clamp(1, creditd_engine::engine::MAX_PREFETCH);
    let mut ids = vec![[0u8; 32]; group];
    let mut lens = vec![0usize; group];
    let started = Instant::now();
    let mut n = warmup;
    while n < warmup + pairs {
        let count = group.min((warmup + pairs - n) as usize);
        for i in 0..count {
            lens[i] = id_into(&mut ids[i], b"acct:", keys.next_key()).len();
        }
        if count > 1 {
            let batch: Vec<&[u8]> = (0..count).map(|i| &ids[i][..lens[i]]).collect();
            engine.prefetch(&batch);
        }
        for i in 0..count {
            reserve_commit_as(&engine, &ids[i][..lens[i]], n, Charge::Amount(3), member);
            n += 1;
        }
    }
    let elapsed = started.elapsed();
    // Not dropped: freeing millions of records would dominate a profile.
    std::mem::forget(engine);
    println!(
        "{pairs} RESERVE+COMMIT pairs over {accounts} accounts: {:.0} ns/pair",
        elapsed.as_nanos() as f64 / pairs as f64
    );
}
