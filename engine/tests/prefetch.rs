//! `Engine::prefetch`: reading a pipeline's accounts ahead changes nothing,
//! and taking a batch's shard locks together never deadlocks with commands
//! or other prefetches.

use creditd_engine::bucket::BucketKind;
use creditd_engine::clock::SystemClock;
use creditd_engine::config::Config;
use creditd_engine::engine::MAX_PREFETCH;
use creditd_engine::id::Bytes;
use creditd_engine::{Charge, Engine, Expiry, MemoryJournal, Mutation};
use std::sync::Arc;
use std::time::{Duration, Instant};

fn engine() -> Arc<Engine> {
    Arc::new(Engine::new(
        Config::builtin(),
        Arc::new(SystemClock),
        Arc::new(MemoryJournal::discarding()),
    ))
}

fn grant(engine: &Engine, account: &str) {
    let m = Mutation::Grant {
        grant_id: Bytes(b"g"),
        amount: 1_000_000,
        kind: BucketKind::Prepaid,
        expiry: Expiry::Never,
        priority: 50,
    };
    engine.execute(account.as_bytes(), &m).unwrap();
}

#[test]
fn prefetch_changes_nothing_and_creates_no_account() {
    let e = engine();
    grant(&e, "a");
    grant(&e, "b");
    let before = (e.stats(), e.balance(b"a"), e.balance(b"b"));
    let keys: Vec<&[u8]> = vec![b"a", b"missing", b"b", b"a", b"also-missing"];
    e.prefetch(&keys);
    assert_eq!((e.stats(), e.balance(b"a"), e.balance(b"b")), before);
    assert_eq!(e.stats().accounts, 2, "no account for a missing key");
}

/// Threads prefetching batches that share shards (longer than the bound,
/// with repeats), beside threads executing commands: this ends.
#[test]
fn concurrent_prefetches_and_commands_do_not_deadlock() {
    let e = engine();
    let names: Vec<String> = (0..64).map(|i| format!("acct:{i}")).collect();
    for n in &names {
        grant(&e, n);
    }
    let names = Arc::new(names);
    let mut threads = Vec::new();
    for t in 0..4u64 {
        let (e, names) = (e.clone(), names.clone());
        threads.push(std::thread::spawn(move || {
            for round in 0..2_000u64 {
                let pick = |i: u64| names[((round * 7 + i * 13 + t * 31) % 64) as usize].as_bytes();
                if t % 2 == 0 {
                    let keys: Vec<&[u8]> = (0..MAX_PREFETCH as u64 + 4).map(pick).collect();
                    e.prefetch(&keys);
                } else {
                    let hold = format!("h:{t}:{round}");
                    let m = Mutation::Reserve {
                        hold_id: Bytes(hold.as_bytes()),
                        charge: Charge::Amount(1),
                        ttl_ms: None,
                        member: None,
                    };
                    e.execute(pick(0), &m).unwrap();
                }
            }
        }));
    }
    // A deadlock fails the test rather than hang it.
    let deadline = Instant::now() + Duration::from_secs(60);
    while !threads.iter().all(|t| t.is_finished()) {
        assert!(
            Instant::now() < deadline,
            "prefetch and commands deadlocked"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    for t in threads {
        t.join().unwrap();
    }
    assert_eq!(e.stats().open_holds, 2 * 2_000);
}
