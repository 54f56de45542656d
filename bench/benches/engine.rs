//! Engine benchmarks over 1,000,000 accounts: RESERVE+COMMIT pairs, DEBIT,
//! BALANCE, priced RESERVE, RESERVE+COMMIT with and without MEMBER, the
//! expiry sweep; one and two threads; uniform
//! and Zipf (s = 0.99) keys.
//!
//! `cargo bench -p creditd-bench --bench engine`

use creditd_bench::{
    id_into, loaded_engine, loaded_engine_with, reserve, reserve_commit, reserve_commit_as, Keys,
    ACCOUNTS,
};
use creditd_engine::account::{Cap, Per};
use creditd_engine::command::{Charge, Mutation};
use creditd_engine::config::Config;
use creditd_engine::id::Bytes;
use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use std::hint::black_box;
use std::sync::atomic::{AtomicU64, Ordering};
/// mimalloc for the engine microbenchmarks (the server binary uses the
/// system allocator: see docs/PERFORMANCE.md, "Allocator").
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::time::{Duration, Instant};

static HOLD_SEQ: AtomicU64 = AtomicU64::new(0);

fn single_thread(c: &mut Criterion) {
    let engine = loaded_engine(ACCOUNTS, 1_000_000_000);
    let mut g = c.benchmark_group("engine-1t");
    g.throughput(Throughput::Elements(1));
    for (name, mut keys) in [
        ("uniform", Keys::uniform(ACCOUNTS, 1)),
        ("zipf", Keys::zipf(ACCOUNTS, 2)),
    ] {
        g.bench_function(format!("reserve_commit/{name}"), |b| {
            let mut a = [0u8; 32];
            b.iter(|| {
                let account = id_into(&mut a, b"acct:", keys.next_key());
                let n = HOLD_SEQ.fetch_add(1, Ordering::Relaxed);
                reserve_commit(&engine, account, n, Charge::Amount(3));
            })
        });
        g.bench_function(format!("debit/{name}"), |b| {
            let mut a = [0u8; 32];
            let mut d = [0u8; 32];
            b.iter(|| {
                let account = id_into(&mut a, b"acct:", keys.next_key());
                let n = HOLD_SEQ.fetch_add(1, Ordering::Relaxed);
                let debit = id_into(&mut d, b"d:", n);
                engine
                    .execute(
                        account,
                        &Mutation::Debit {
                            debit_id: Bytes(debit),
                            charge: Charge::Amount(1),
                            member: None,
                        },
                    )
                    .expect("debit")
            })
        });
        g.bench_function(format!("balance/{name}"), |b| {
            let mut a = [0u8; 32];
            b.iter(|| {
                let account = id_into(&mut a, b"acct:", keys.next_key());
                black_box(engine.balance(account))
            })
        });
        g.bench_function(format!("priced_reserve_commit/{name}"), |b| {
            let mut a = [0u8; 32];
            b.iter(|| {
                let account = id_into(&mut a, b"acct:", keys.next_key());
                let n = HOLD_SEQ.fetch_add(1, Ordering::Relaxed);
                let charge = Charge::Sku {
                    sku: "image/flux-2-pro",
                    qty: 4,
                };
                reserve_commit(&engine, account, n, charge);
            })
        });
    }
    g.finish();
}

/// RESERVE+COMMIT pairs with and without `MEMBER` (a member capped per
/// day, far above what the run spends): what the member check and its
/// counters cost, in cache (1,000 accounts) and over 1,000,000. Steady
/// state: a 1 ms idempotency window, so records turn over.
fn members(c: &mut Criterion) {
    let mut g = c.benchmark_group("engine-members");
    g.throughput(Throughput::Elements(1));
    let mut config = Config::builtin();
    config.settings.idempotency_window_ms = 1;
    for accounts in [1_000, ACCOUNTS] {
        let engine = loaded_engine_with(accounts, 1_000_000_000, config.clone());
        let mut a = [0u8; 32];
        for i in 0..accounts {
            let cap = Some(Cap {
                limit: creditd_engine::MAX_AMOUNT,
                per: Per::Day,
            });
            let limit = Mutation::Limit {
                member: Bytes(b"alice"),
                cap,
            };
            engine
                .execute(id_into(&mut a, b"acct:", i), &limit)
                .expect("limit");
        }
        for (name, member) in [("without", None), ("member", Some(&b"alice"[..]))] {
            let mut keys = Keys::uniform(accounts, 3);
            g.bench_function(format!("reserve_commit/{accounts}/{name}"), |b| {
                b.iter(|| {
                    let account = id_into(&mut a, b"acct:", keys.next_key());
                    let n = HOLD_SEQ.fetch_add(1, Ordering::Relaxed);
                    reserve_commit_as(&engine, account, n, Charge::Amount(3), member);
                })
            });
        }
    }
    g.finish();
}

/// Two threads doing RESERVE+COMMIT pairs on their own key streams: the
/// time for `iters` pairs per thread, so ops/s = 2 x the 1-thread figure at
/// perfect scaling.
fn two_threads(c: &mut Criterion) {
    let engine = loaded_engine(ACCOUNTS, 1_000_000_000);
    let mut g = c.benchmark_group("engine-2t");
    g.throughput(Throughput::Elements(2));
    for zipf in [false, true] {
        let name = if zipf { "zipf" } else { "uniform" };
        g.bench_function(format!("reserve_commit/{name}"), |b| {
            b.iter_custom(|iters| {
                let start = Instant::now();
                std::thread::scope(|s| {
                    for t in 0..2u64 {
                        let engine = &engine;
                        s.spawn(move || {
                            let mut keys = if zipf {
                                Keys::zipf(ACCOUNTS, 10 + t)
                            } else {
                                Keys::uniform(ACCOUNTS, 10 + t)
                            };
                            let mut a = [0u8; 32];
                            for _ in 0..iters {
                                let account = id_into(&mut a, b"acct:", keys.next_key());
                                let n = HOLD_SEQ.fetch_add(1, Ordering::Relaxed);
                                reserve_commit(engine, account, n, Charge::Amount(3));
                            }
                        });
                    }
                });
                start.elapsed()
            })
        });
    }
    g.finish();
}

/// The sweeper expiring holds: 10,000 accounts each with an abandoned hold
/// whose TTL has passed.
fn sweep(c: &mut Criterion) {
    let mut g = c.benchmark_group("engine-sweep");
    g.sample_size(10);
    g.bench_function("expire_10k_holds", |b| {
        b.iter_batched(
            || {
                let engine = loaded_engine(10_000, 1_000);
                let mut a = [0u8; 32];
                for n in 0..10_000 {
                    let account = id_into(&mut a, b"acct:", n);
                    reserve(&engine, account, n, Charge::Amount(10), Some(1));
                }
                std::thread::sleep(Duration::from_millis(3));
                engine
            },
            |engine| {
                let mut visited = 0;
                while visited < 10_000 {
                    let n = engine.sweep(4096);
                    if n == 0 {
                        break;
                    }
                    visited += n;
                }
                assert_eq!(engine.stats().open_holds, 0);
                engine
            },
            BatchSize::PerIteration,
        )
    });
    g.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().measurement_time(Duration::from_secs(3)).warm_up_time(Duration::from_secs(1));
    targets = single_thread, members, two_threads, sweep
}
criterion_main!(benches);
