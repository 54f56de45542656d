//! Shared pieces of the benchmarks: a pre-loaded engine and key distributions.

use creditd_engine::clock::SystemClock;
use creditd_engine::command::{Charge, Expiry, Mutation};
use creditd_engine::config::Config;
use creditd_engine::id::Bytes;
use creditd_engine::{Engine, MemoryJournal};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use rand_distr::{Distribution, Zipf};
use std::sync::Arc;

/// Accounts in the benchmark population (the targets' scale: 1,000,000).
pub const ACCOUNTS: u64 = 1_000_000;

/// Writes `prefix` + decimal `n` into `buf`, returns the used slice (no allocation).
pub fn id_into<'a>(buf: &'a mut [u8; 32], prefix: &[u8], n: u64) -> &'a [u8] {
    let mut digits = [0u8; 20];
    let mut i = digits.len();
    let mut v = n;
    loop {
        i -= 1;
        digits[i] = b'0' + (v % 10) as u8;
        v /= 10;
        if v == 0 {
            break;
        }
    }
    let len = prefix.len() + digits.len() - i;
    buf[..prefix.len()].copy_from_slice(prefix);
    buf[prefix.len()..len].copy_from_slice(&digits[i..]);
    &buf[..len]
}

/// An engine with `accounts` accounts, each granted `credits` in one bucket.
/// The journal discards records (the cost of encoding them is still paid).
pub fn loaded_engine(accounts: u64, credits: u64) -> Arc<Engine> {
    loaded_engine_with(accounts, credits, Config::builtin())
}

/// As [`loaded_engine`] with a given config.
pub fn loaded_engine_with(accounts: u64, credits: u64, config: Config) -> Arc<Engine> {
    let engine = Arc::new(Engine::new(
        config,
        Arc::new(SystemClock),
        Arc::new(MemoryJournal::discarding()),
    ));
    let mut a = [0u8; 32];
    for n in 0..accounts {
        let account = id_into(&mut a, b"acct:", n);
        engine
            .execute(
                account,
                &Mutation::Grant {
                    grant_id: Bytes(b"g"),
                    amount: credits,
                    kind: creditd_engine::bucket::BucketKind::Prepaid,
                    expiry: Expiry::Never,
                    priority: 50,
                },
            )
            .expect("grant");
    }
    engine
}

/// Which account each operation touches.
pub enum Keys {
    Uniform(SmallRng, u64),
    Zipf(SmallRng, Zipf<f64>),
}

impl Keys {
    pub fn uniform(n: u64, seed: u64) -> Keys {
        Keys::Uniform(SmallRng::seed_from_u64(seed), n)
    }
    /// Zipf-skewed (s = 0.99): a few hot accounts take most of the traffic.
    pub fn zipf(n: u64, seed: u64) -> Keys {
        Keys::Zipf(
            SmallRng::seed_from_u64(seed),
            Zipf::new(n as f64, 0.99).expect("zipf params"),
        )
    }
    #[inline]
    pub fn next_key(&mut self) -> u64 {
        match self {
            Keys::Uniform(rng, n) => rng.random_range(0..*n),
            Keys::Zipf(rng, z) => z.sample(rng) as u64 - 1,
        }
    }
}

/// RESERVE `charge` on `account` with hold id `h:<n>` (`ttl_ms` None: the default).
#[inline]
pub fn reserve(engine: &Engine, account: &[u8], n: u64, charge: Charge, ttl_ms: Option<u64>) {
    reserve_as(engine, account, n, charge, ttl_ms, None);
}

/// [`reserve`] charged to `member` too (`MEMBER m`).
#[inline]
pub fn reserve_as(
    engine: &Engine,
    account: &[u8],
    n: u64,
    charge: Charge,
    ttl_ms: Option<u64>,
    member: Option<&[u8]>,
) {
    let mut h = [0u8; 32];
    let hold = id_into(&mut h, b"h:", n);
    engine
        .execute(
            account,
            &Mutation::Reserve {
                hold_id: Bytes(hold),
                charge,
                ttl_ms,
                member: member.map(Bytes),
            },
        )
        .expect("reserve");
}

/// RESERVE `charge` on `account` with hold id `h:<n>`, then COMMIT it.
#[inline]
pub fn reserve_commit(engine: &Engine, account: &[u8], n: u64, charge: Charge) {
    reserve_commit_as(engine, account, n, charge, None);
}

/// [`reserve_commit`] charged to `member` too.
#[inline]
pub fn reserve_commit_as(
    engine: &Engine,
    account: &[u8],
    n: u64,
    charge: Charge,
    member: Option<&[u8]>,
) {
    reserve_as(engine, account, n, charge, None, member);
    let mut h = [0u8; 32];
    let hold = id_into(&mut h, b"h:", n);
    engine
        .execute(
            account,
            &Mutation::Commit {
                hold_id: Bytes(hold),
                usage: None,
            },
        )
        .expect("commit");
}
