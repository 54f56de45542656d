//! A plain timing loop of RESERVE+COMMIT pairs over 1,000,000 accounts, for
//! profilers (`perf record`, `valgrind --tool=callgrind`).
//!
//! `cargo run --release -p creditd-bench --bin hotpath -- [pairs]`

use creditd_bench::{id_into, loaded_engine, reserve_commit, Keys, ACCOUNTS};
use creditd_engine::command::Charge;
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
    let engine = loaded_engine(accounts, 1_000_000_000);
    let mut keys = Keys::uniform(accounts, 1);
    let mut a = [0u8; 32];
    let started = Instant::now();
    for n in 0..pairs {
        let account = id_into(&mut a, b"acct:", keys.next_key());
        reserve_commit(&engine, account, n, Charge::Amount(3));
    }
    let elapsed = started.elapsed();
    println!(
        "{pairs} RESERVE+COMMIT pairs over {accounts} accounts: {:.0} ns/pair",
        elapsed.as_nanos() as f64 / pairs as f64
    );
}
