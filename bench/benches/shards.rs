//! The shard map's choice: dashmap vs hand-sharded `parking_lot::Mutex<HashMap>`,
//! for creditd's access pattern (look up one account by id, update it),
//! over 1,000,000 keys, one and two threads.
//!
//! `cargo bench -p creditd-bench --bench shards`

use creditd_bench::{id_into, Keys, ACCOUNTS};
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use dashmap::DashMap;
use parking_lot::Mutex;
use std::collections::HashMap;
use std::hash::BuildHasher;
use std::time::{Duration, Instant};

type Key = Box<[u8]>;
/// Roughly the hot fields of an account.
#[derive(Default, Clone, Copy)]
struct Totals {
    available: u64,
    held: u64,
}

/// Padded to two cache lines, as the engine's shards are, so neighbouring
/// locks don't share a line.
#[repr(align(128))]
struct Padded<T>(T);

struct Sharded {
    hasher: foldhash::fast::FixedState,
    shards: Vec<Padded<Mutex<HashMap<Key, Totals, foldhash::fast::RandomState>>>>,
}

impl Sharded {
    fn new(n: usize) -> Self {
        Sharded {
            hasher: foldhash::fast::FixedState::with_seed(7),
            shards: (0..n)
                .map(|_| Padded(Mutex::new(HashMap::default())))
                .collect(),
        }
    }
    #[inline]
    fn update(&self, k: &[u8]) {
        let i = self.hasher.hash_one(k) as usize & (self.shards.len() - 1);
        let mut s = self.shards[i].0.lock();
        if let Some(t) = s.get_mut(k) {
            t.available -= 1;
            t.held += 1;
        }
    }
}

fn populate() -> (Sharded, DashMap<Key, Totals, foldhash::fast::RandomState>) {
    let sharded = Sharded::new(256);
    let dash = DashMap::with_hasher(foldhash::fast::RandomState::default());
    let mut a = [0u8; 32];
    for n in 0..ACCOUNTS {
        let k: Key = id_into(&mut a, b"acct:", n).into();
        let t = Totals {
            available: u64::MAX / 2,
            held: 0,
        };
        let i = sharded.hasher.hash_one(&*k) as usize & 255;
        sharded.shards[i].0.lock().insert(k.clone(), t);
        dash.insert(k, t);
    }
    (sharded, dash)
}

fn bench(c: &mut Criterion) {
    let (sharded, dash) = populate();
    let mut g = c.benchmark_group("shards");
    for threads in [1u64, 2] {
        g.throughput(Throughput::Elements(threads));
        g.bench_function(format!("mutex-hashmap-256/{threads}t"), |b| {
            b.iter_custom(|iters| run(threads, iters, |k| sharded.update(k)))
        });
        g.bench_function(format!("dashmap/{threads}t"), |b| {
            b.iter_custom(|iters| {
                run(threads, iters, |k| {
                    if let Some(mut t) = dash.get_mut(k) {
                        t.available -= 1;
                        t.held += 1;
                    }
                })
            })
        });
    }
    g.finish();
}

fn run(threads: u64, iters: u64, f: impl Fn(&[u8]) + Sync) -> Duration {
    let start = Instant::now();
    std::thread::scope(|s| {
        for t in 0..threads {
            let f = &f;
            s.spawn(move || {
                let mut keys = Keys::uniform(ACCOUNTS, 100 + t);
                let mut a = [0u8; 32];
                for _ in 0..iters {
                    f(id_into(&mut a, b"acct:", keys.next_key()));
                }
            });
        }
    });
    start.elapsed()
}

criterion_group! {
    name = benches;
    config = Criterion::default().measurement_time(Duration::from_secs(3)).warm_up_time(Duration::from_secs(1));
    targets = bench
}
criterion_main!(benches);
