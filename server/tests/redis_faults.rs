//! Fault injection of the Redis writer, over several seeds: connections cut
//! mid-pipeline (a proxy cuts each connection after a random number of
//! bytes, and sometimes all of them at once), the script cache flushed
//! (`-NOSCRIPT`), and foreign keys of another type at the keys of accounts
//! creditd then creates (the script refuses those accounts until the keys
//! are removed). Once the faults stop and the writer has drained, Redis
//! equals the engine for every account, and the audit stream holds each
//! history entry exactly once.
//!
//! `CREDITD_FAULT_SEEDS=1,2,3` runs other seeds.

mod common;
mod redis_support;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use redis::Connection;
use redis_support::proxy::Proxy;
use redis_support::{cmd, info_field, wait_until, Creditd, RedisServer, TempDir};
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

const ACCOUNTS: usize = 12;
/// Rounds of faults per seed: each round cuts every connection, flushes the
/// script cache, puts a foreign key at a new account's key and removes one,
/// in a random order with random pauses (50 to 250 ms) between.
const ROUNDS: usize = 4;

fn seeds() -> Vec<u64> {
    std::env::var("CREDITD_FAULT_SEEDS")
        .ok()
        .map(|s| s.split(',').filter_map(|x| x.trim().parse().ok()).collect())
        .unwrap_or_else(|| vec![1, 2, 3, 4])
}

/// Random mutations on `accounts` until stopped; `-BUSY` (the lease lapsed
/// while connections were cut) is fine, any other error is not.
fn load(
    mut conn: Connection,
    accounts: Vec<String>,
    seed: u64,
    stop: Arc<AtomicBool>,
    ops: Arc<AtomicU64>,
) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        let mut rng = StdRng::seed_from_u64(seed);
        let mut open: Vec<(String, String)> = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(30);
        let mut i = 0u64;
        while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
            i += 1;
            let account = accounts[rng.random_range(0..accounts.len())].clone();
            let id = format!("op-{i}");
            let args: Vec<String> = match rng.random_range(0..10) {
                0 => vec!["GRANT".into(), account, id, "100".into()],
                1..=3 => {
                    open.push((account.clone(), id.clone()));
                    vec!["RESERVE".into(), account, id, "5".into()]
                }
                4..=6 if !open.is_empty() => {
                    let (account, hold) = open.swap_remove(rng.random_range(0..open.len()));
                    vec!["COMMIT".into(), account, hold, "3".into()]
                }
                7 if !open.is_empty() => {
                    let (account, hold) = open.swap_remove(rng.random_range(0..open.len()));
                    vec!["RELEASE".into(), account, hold]
                }
                _ => vec!["DEBIT".into(), account, id, "1".into()],
            };
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            match cmd::<i64>(&mut conn, &args) {
                Ok(_) => {
                    ops.fetch_add(1, Ordering::Relaxed);
                }
                Err(e) if e.code() == Some("BUSY") => {
                    std::thread::sleep(Duration::from_millis(10));
                }
                // A COMMIT/RELEASE of a hold whose RESERVE was refused.
                Err(e) if e.code() == Some("NOTFOUND") => {}
                Err(e) => panic!("{args:?}: {e}"),
            }
        }
    })
}

/// Puts a string (a foreign key of another type) at an account's key.
fn poison(r: &mut Connection, account: &str) {
    let _: () = cmd(r, &["SET", &format!("creditd:acct:{account}"), "foreign"]).unwrap();
}

fn unpoison(r: &mut Connection, account: &str) {
    let _: () = cmd(r, &["DEL", &format!("creditd:acct:{account}")]).unwrap();
}

fn fault_round(seed: u64) {
    let redis = RedisServer::start();
    let proxy = Proxy::start(redis.port);
    let dir = TempDir::new(&format!("faults-{seed}"));
    let creditd = Creditd::start(&dir.path().join("data"), &["--redis", &proxy.url()]);
    let accounts: Vec<String> = (0..ACCOUNTS).map(|i| format!("f-{i}")).collect();
    let mut c = creditd.conn();
    for a in &accounts {
        let _: i64 = cmd(&mut c, &["GRANT", a, "g-0", "1000000"]).unwrap();
    }
    let stop = Arc::new(AtomicBool::new(false));
    let ops = Arc::new(AtomicU64::new(0));
    let loader = load(
        creditd.conn(),
        accounts.clone(),
        seed + 1000,
        stop.clone(),
        ops.clone(),
    );

    proxy.cut_randomly(Some((seed, 512 << 10)));
    let mut rng = StdRng::seed_from_u64(seed);
    let mut r = redis.conn();
    let mut poisoned: Vec<String> = Vec::new();
    let mut all = accounts.clone();
    let (mut flushes, mut poisons) = (0, 0);
    let mut schedule: Vec<u8> = Vec::new();
    for _ in 0..ROUNDS {
        let mut round = vec![0u8, 1, 2, 3];
        for i in (1..round.len()).rev() {
            round.swap(i, rng.random_range(0..=i));
        }
        schedule.extend(round);
    }
    for fault in schedule {
        match fault {
            0 => proxy.cut_all(),
            1 => {
                let _: () = cmd(&mut r, &["SCRIPT", "FLUSH"]).unwrap();
                flushes += 1;
            }
            2 => {
                // A new account whose key is taken by something else: its
                // writes fail until the key is removed.
                let account = format!("x-{poisons}");
                let errors = info_field(&mut c, "redis_write_errors");
                poison(&mut r, &account);
                let granted = wait_until(Duration::from_secs(5), || {
                    cmd::<i64>(&mut c, &["GRANT", &account, "g-0", "1000"]).is_ok()
                });
                assert!(granted, "GRANT {account} (BUSY for 5 s)");
                let refused = wait_until(Duration::from_secs(5), || {
                    info_field(&mut c, "redis_write_errors") > errors
                });
                assert!(
                    refused,
                    "the write of {account} was refused:\n{}",
                    creditd.log_text()
                );
                poisoned.push(account.clone());
                all.push(account);
                poisons += 1;
            }
            _ => {
                if let Some(account) = poisoned.pop() {
                    unpoison(&mut r, &account);
                }
            }
        }
        std::thread::sleep(Duration::from_millis(rng.random_range(50..250)));
    }
    stop.store(true, Ordering::Relaxed);
    loader.join().unwrap();
    proxy.cut_randomly(None);
    for account in poisoned.drain(..) {
        unpoison(&mut r, &account);
    }
    assert!(ops.load(Ordering::Relaxed) > 100, "the load ran");

    // Drained: nothing pending, and Redis equals the engine.
    let drained = wait_until(Duration::from_secs(20), || {
        info_field(&mut c, "redis_pending") == 0
    });
    assert!(
        drained,
        "seed {seed}: did not drain:\n{}",
        creditd.log_text()
    );
    let entries: Vec<(String, HashMap<String, String>)> =
        cmd(&mut r, &["XRANGE", "creditd:audit", "-", "+"]).unwrap();
    let mut streamed: HashMap<String, Vec<u64>> = HashMap::new();
    for (_, f) in &entries {
        streamed
            .entry(f["account"].clone())
            .or_default()
            .push(f["seq"].parse().unwrap());
    }
    for a in &all {
        let engine: HashMap<String, i64> = cmd(&mut c, &["BALANCE", a]).unwrap();
        for (field, value) in &engine {
            let stored: Option<i64> =
                cmd(&mut r, &["HGET", &format!("creditd:acct:{a}"), field]).unwrap();
            assert_eq!(
                stored,
                Some(*value),
                "seed {seed}, account {a}, field {field}:\n{}",
                creditd.log_text()
            );
        }
        let history_seq: u64 = cmd(
            &mut r,
            &["HGET", &format!("creditd:acct:{a}"), "history_seq"],
        )
        .unwrap();
        let mut seqs = streamed.remove(a).unwrap_or_default();
        seqs.sort_unstable();
        assert_eq!(
            seqs,
            (1..=history_seq).collect::<Vec<_>>(),
            "seed {seed}, account {a}: each history entry in the stream exactly once"
        );
    }
    let log = creditd.log_text();
    if poisons > 0 {
        assert!(
            log.contains("Redis refused the write of creditd:acct:x-0"),
            "{log}"
        );
    }
    eprintln!(
        "seed {seed}: {} ops, {} connections cut, {flushes} script flushes, {poisons} foreign keys",
        ops.load(Ordering::Relaxed),
        proxy.cuts()
    );
}

#[test]
fn the_writer_survives_cut_connections_script_flushes_and_foreign_keys() {
    for seed in seeds() {
        fault_round(seed);
    }
}
