//! The machine's memory latency: nanoseconds per dependent load when
//! chasing pointers through a random cycle of cache lines, for working sets
//! from cache-sized to the engine's (1,000,000 accounts take ~500 MB).
//!
//! A RESERVE on a random one of 1M accounts must find the account (hash
//! table control bytes, then the slot) and read it: each a dependent load
//! that misses every cache. This is the floor under the engine benchmark.
//!
//! `cargo run --release -p creditd-bench --bin memlat`

use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use std::hint::black_box;
use std::time::Instant;

/// One cache line: the index of the next line to visit, padded.
#[repr(align(64))]
#[derive(Clone, Copy)]
struct Line {
    next: usize,
    _pad: [u64; 7],
}

fn chase(bytes: usize, loads: usize) -> f64 {
    let n = bytes / std::mem::size_of::<Line>();
    let mut lines = vec![
        Line {
            next: 0,
            _pad: [0; 7]
        };
        n
    ];
    // Sattolo's algorithm: a random permutation that is a single cycle.
    let mut order: Vec<usize> = (0..n).collect();
    let mut rng = SmallRng::seed_from_u64(7);
    for i in (1..n).rev() {
        let j = rng.random_range(0..i);
        order.swap(i, j);
    }
    for i in 0..n {
        lines[order[i]].next = order[(i + 1) % n];
    }
    let mut at = 0;
    let started = Instant::now();
    for _ in 0..loads {
        at = lines[at].next;
    }
    black_box(at);
    started.elapsed().as_nanos() as f64 / loads as f64
}

fn main() {
    println!("working set   ns per dependent load");
    for mb in [1usize, 16, 64, 256, 1024] {
        let ns = chase(mb << 20, 20_000_000);
        println!("{mb:>7} MB   {ns:>8.1}");
    }
}
