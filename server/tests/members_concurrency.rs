//! A member's cap under concurrent reservations, commits, releases and
//! debits from many connections: never passed, and used up to the last charge.

mod common;
mod members_support;

use members_support::*;
use redis::Value;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Barrier};

/// What one worker saw acknowledged.
#[derive(Default)]
struct Tally {
    /// Credits committed or debited for the member.
    used: u64,
    /// Credits of holds left open.
    open: u64,
    /// Every accepted charge (reservations and debits).
    accepted: u64,
    limited: u64,
}

const CAP: u64 = 10_000;
const MAX_CHARGE: u64 = 100;
const POOL: u64 = 10_000_000;

/// One charge of `amount`: true if accepted; a refusal must be LIMITED,
/// with less remaining than asked.
fn charge(c: &mut redis::Connection, t: &mut Tally, args: &[&str], amount: u64) -> bool {
    match call(c, args) {
        Ok(Value::Int(n)) => {
            assert_eq!(n as u64, amount, "{args:?}");
            t.accepted += amount;
            true
        }
        Err(e) => {
            let prefix = format!("LIMITED need {amount} remaining ");
            let remaining: u64 = e
                .strip_prefix(&prefix)
                .and_then(|r| r.parse().ok())
                .unwrap_or_else(|| panic!("{args:?}: {e}"));
            assert!(remaining < amount, "{args:?}: {e}");
            t.limited += 1;
            false
        }
        Ok(other) => panic!("{args:?}: {other:?}"),
    }
}

/// One connection charging member `m` of `pool`: first a mix of reserve,
/// commit (part or all), release, keep open and debit; then, after the
/// barrier, only reservations it commits whole or keeps, until the first
/// LIMITED (nothing is given back in that phase, so the member's total only grows).
fn charge_member(port: u16, worker: u64, barrier: Arc<Barrier>) -> Tally {
    let client = redis::Client::open(format!("redis://127.0.0.1:{port}/")).unwrap();
    let mut c = client.get_connection().unwrap();
    let c = &mut c;
    let mut rng = Rng::new(worker + 1);
    let mut t = Tally::default();
    for round in 0..40 {
        let amount = rng.range(1, MAX_CHARGE);
        let amount_s = amount.to_string();
        if round % 5 == 4 {
            let id = format!("d{worker}-{round}");
            let args = ["DEBIT", "pool", &id, &amount_s, "MEMBER", "m"];
            if charge(c, &mut t, &args, amount) {
                t.used += amount;
            }
            continue;
        }
        let id = format!("h{worker}-{round}");
        let args = ["RESERVE", "pool", &id, &amount_s, "MEMBER", "m"];
        if !charge(c, &mut t, &args, amount) {
            continue;
        }
        match rng.range(0, 2) {
            0 => {
                let total = rng.range(0, amount);
                let commit = ["COMMIT", "pool", &id, &total.to_string()];
                assert_eq!(int(c, &commit) as u64, total);
                t.used += total;
            }
            1 => assert_eq!(int(c, &["RELEASE", "pool", &id]) as u64, amount),
            _ => t.open += amount,
        }
    }
    barrier.wait();
    for round in 0.. {
        let amount = rng.range(1, MAX_CHARGE);
        let id = format!("f{worker}-{round}");
        let args = ["RESERVE", "pool", &id, &amount.to_string(), "MEMBER", "m"];
        if !charge(c, &mut t, &args, amount) {
            break;
        }
        if rng.range(0, 1) == 0 {
            assert_eq!(int(c, &["COMMIT", "pool", &id]) as u64, amount);
            t.used += amount;
        } else {
            t.open += amount;
        }
    }
    t
}

#[test]
fn concurrent_charges_never_pass_a_members_cap() {
    let (srv, mut c) = start_mid_january(&[]);
    let c = &mut c;
    assert_eq!(
        int(c, &["GRANT", "pool", "g", &POOL.to_string()]),
        POOL as i64
    );
    let cap = CAP.to_string();
    assert_eq!(
        int(c, &["LIMIT", "pool", "m", &cap, "PER", "day"]),
        CAP as i64
    );

    // A watcher checks the cap and conservation while the workers run.
    let done = Arc::new(AtomicBool::new(false));
    let watched = Arc::new(AtomicU64::new(0));
    let watcher = {
        let (mut w, done, watched) = (srv.client(), done.clone(), watched.clone());
        std::thread::spawn(move || {
            while !done.load(Ordering::Relaxed) {
                let m = &members(&mut w, "pool")[0];
                assert!(m.used + m.held <= CAP as i64, "over the cap: {m:?}");
                balance(&mut w, "pool"); // checks conservation
                watched.fetch_add(1, Ordering::Relaxed);
            }
        })
    };
    const WORKERS: u64 = 16;
    let barrier = Arc::new(Barrier::new(WORKERS as usize));
    let workers: Vec<_> = (0..WORKERS)
        .map(|w| {
            let (port, barrier) = (srv.port, barrier.clone());
            std::thread::spawn(move || charge_member(port, w, barrier))
        })
        .collect();
    let tallies: Vec<Tally> = workers.into_iter().map(|w| w.join().unwrap()).collect();
    done.store(true, Ordering::Relaxed);
    watcher.join().unwrap();
    assert!(watched.load(Ordering::Relaxed) > 0, "the watcher looked");

    let used: u64 = tallies.iter().map(|t| t.used).sum();
    let open: u64 = tallies.iter().map(|t| t.open).sum();
    let accepted: u64 = tallies.iter().map(|t| t.accepted).sum();
    let limited: u64 = tallies.iter().map(|t| t.limited).sum();
    let m = &members(c, "pool")[0];
    assert_eq!((m.used as u64, m.held as u64), (used, open), "{m:?}");
    assert!(used + open <= CAP, "acknowledged {used} used + {open} held");
    // Every worker stopped at a refusal while nothing was being given back:
    // the cap was used up to less than one charge.
    assert!(
        used + open > CAP - MAX_CHARGE,
        "the cap was not used: {used} + {open} of {CAP}"
    );
    assert!(accepted > CAP, "releases made room again: {accepted}");
    assert!(limited >= WORKERS, "{limited}");
    let b = balance(c, "pool");
    assert_eq!(
        b,
        [
            (POOL - used - open) as i64,
            open as i64,
            used as i64,
            0,
            POOL as i64
        ]
    );

    // At the edge the cap is exact.
    let remaining = CAP - used - open;
    let over = (remaining + 1).to_string();
    assert_eq!(
        err(c, &["RESERVE", "pool", "edge-1", &over, "MEMBER", "m"]),
        format!("LIMITED need {over} remaining {remaining}")
    );
    let exact = remaining.to_string();
    assert_eq!(
        int(c, &["RESERVE", "pool", "edge-2", &exact, "MEMBER", "m"]),
        remaining as i64
    );
    // Many refusals at one instant (the clock stands still): one event.
    let limited_events: Vec<Event> = all_events(c)
        .into_iter()
        .filter(|e| e.kind == "limited")
        .collect();
    assert_eq!(limited_events.len(), 1, "{limited_events:?}");
    assert_eq!(limited_events[0].member, "m");
}
