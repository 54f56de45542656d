//! Restarts and config reloads never change the state.
//!
//! Two engines get the same random stream of commands, clock moves, sweeps
//! and config reloads (idempotency window, id cap, history length, default
//! hold TTL). One runs uninterrupted; the other is "restarted" at random
//! points: a fresh engine, built with the config of that moment, recovers
//! from the journal alone or from a snapshot plus the journal after it, and
//! carries on. Every reply must be the same on both (so hidden state such as
//! the idempotency records must agree too: a retry answers from it), and so
//! must every account's ACCOUNT view and whole HISTORY after each restart
//! and at the end. Recovery must never refuse what the first process wrote.

use creditd_engine::bucket::BucketKind;
use creditd_engine::clock::TestClock;
use creditd_engine::config::Config;
use creditd_engine::id::Bytes;
use creditd_engine::{Charge, Engine, Expiry, MemoryJournal, Mutation, Outcome};
use proptest::prelude::*;
use std::sync::Arc;

const START_MS: u64 = 1_700_000_000_000;
const ACCOUNTS: [&str; 2] = ["ws-a", "ws-b"];
const IDS: [&str; 4] = ["i0", "i1", "i2", "i3"];

#[derive(Debug, Clone)]
enum Op {
    Grant(usize, usize, u64, Option<u64>),
    Reserve(usize, usize, u64, Option<u64>),
    Commit(usize, usize, Option<u64>),
    Release(usize, usize),
    Debit(usize, usize, u64),
    Plan(usize, bool),
    Advance(u64),
    Sweep,
    Reload {
        window_ms: u64,
        max_ids: u32,
        history_len: u32,
        hold_ttl_ms: u64,
    },
    Snapshot,
    Restart {
        from_snapshot: bool,
    },
}

fn config(window_ms: u64, max_ids: u32, history_len: u32, hold_ttl_ms: u64) -> Config {
    let text = format!(
        "idempotency_window_ms = {window_ms}\nmax_ids_per_account = {max_ids}\n\
         history_per_account = {history_len}\nhold_ttl_ms = {hold_ttl_ms}\n\
         [skus.\"image/x\"]\nunit = \"image\"\ncredits = 10\n\
         [plans.pro]\nperiod = \"month\"\ncredits_per_seat = 300\n"
    );
    Config::parse(&text, "restarts.toml").expect("test config parses")
}

fn op() -> impl Strategy<Value = Op> {
    let a = 0..ACCOUNTS.len();
    let i = 0..IDS.len();
    let ttl = prop_oneof![Just(None), Just(Some(2_000)), Just(Some(50_000))];
    prop_oneof![
        4 => (a.clone(), i.clone(), 1..400u64, prop_oneof![Just(None), Just(Some(30_000u64))])
            .prop_map(|(a, i, n, t)| Op::Grant(a, i, n, t)),
        6 => (a.clone(), i.clone(), 0..150u64, ttl).prop_map(|(a, i, n, t)| Op::Reserve(a, i, n, t)),
        3 => (a.clone(), i.clone(), prop_oneof![Just(None), (0..200u64).prop_map(Some)])
            .prop_map(|(a, i, t)| Op::Commit(a, i, t)),
        2 => (a.clone(), i.clone()).prop_map(|(a, i)| Op::Release(a, i)),
        4 => (a.clone(), i.clone(), 1..100u64).prop_map(|(a, i, n)| Op::Debit(a, i, n)),
        1 => (a.clone(), any::<bool>()).prop_map(|(a, on)| Op::Plan(a, on)),
        4 => prop_oneof![Just(1u64), Just(700), Just(3_000), Just(40_000), Just(35 * 86_400_000)]
            .prop_map(Op::Advance),
        1 => Just(Op::Sweep),
        2 => (
            prop_oneof![Just(1_000u64), Just(10_000), Just(600_000)],
            prop_oneof![Just(1u32), Just(3), Just(1_000)],
            prop_oneof![Just(100u32), Just(130)],
            prop_oneof![Just(1_500u64), Just(30_000)],
        )
            .prop_map(|(window_ms, max_ids, history_len, hold_ttl_ms)| Op::Reload {
                window_ms,
                max_ids,
                history_len,
                hold_ttl_ms,
            }),
        1 => Just(Op::Snapshot),
        2 => any::<bool>().prop_map(|from_snapshot| Op::Restart { from_snapshot }),
    ]
}

/// A reply as a client would see it.
fn shown(r: Result<Outcome, creditd_engine::EngineError>) -> Result<(u64, bool), String> {
    r.map(|o| (o.reply, o.changed)).map_err(|e| e.to_string())
}

fn run(engine: &Engine, op: &Op) -> Option<Result<(u64, bool), String>> {
    let id = |i: usize| Bytes(IDS[i].as_bytes());
    let (acct, m) = match *op {
        Op::Grant(a, i, amount, ttl) => (
            a,
            Mutation::Grant {
                grant_id: id(i),
                amount,
                kind: BucketKind::Prepaid,
                expiry: ttl.map_or(Expiry::Never, Expiry::Ttl),
                priority: 50,
            },
        ),
        Op::Reserve(a, i, amount, ttl_ms) => (
            a,
            Mutation::Reserve {
                hold_id: id(i),
                charge: Charge::Amount(amount),
                ttl_ms,
                member: None,
            },
        ),
        Op::Commit(a, i, total) => (
            a,
            Mutation::Commit {
                hold_id: id(i),
                usage: total.map(creditd_engine::Usage::Total),
            },
        ),
        Op::Release(a, i) => (a, Mutation::Release { hold_id: id(i) }),
        Op::Debit(a, i, n) => (
            a,
            Mutation::Debit {
                debit_id: id(i),
                charge: if n % 3 == 0 {
                    Charge::Sku {
                        sku: "image/x",
                        qty: n / 3,
                    }
                } else {
                    Charge::Amount(n)
                },
                member: None,
            },
        ),
        Op::Plan(a, true) => (
            a,
            Mutation::Subscribe {
                plan: "pro",
                seats: None,
                anchor_ms: None,
            },
        ),
        Op::Plan(a, false) => (a, Mutation::Unsubscribe),
        _ => return None,
    };
    Some(shown(engine.execute(ACCOUNTS[acct].as_bytes(), &m)))
}

/// Every account as a client can read it: ACCOUNT (as Debug text) and HISTORY.
fn state(engine: &Engine) -> Vec<(String, Vec<String>)> {
    ACCOUNTS
        .iter()
        .map(|a| {
            let view = format!("{:?}", engine.account(a.as_bytes()));
            let history = engine
                .history(a.as_bytes(), 100_000)
                .iter()
                .map(|e| format!("{e:?}"))
                .collect();
            (view, history)
        })
        .collect()
}

struct Restartable {
    engine: Engine,
    journal: Arc<MemoryJournal>,
}

fn check(ops: &[Op]) -> Result<(), TestCaseError> {
    let clock = Arc::new(TestClock::new(START_MS));
    let mut cfg = config(86_400_000, 1_000, 100, 30_000);
    let reference = Engine::new(
        cfg.clone(),
        clock.clone(),
        Arc::new(MemoryJournal::discarding()),
    );
    let journal = Arc::new(MemoryJournal::keeping());
    let mut restarted = Restartable {
        engine: Engine::new(cfg.clone(), clock.clone(), journal.clone()),
        journal,
    };
    // (last seq the snapshot covers, its shards)
    let mut snapshot: Option<(u64, Vec<Vec<u8>>)> = None;
    for (step, op) in ops.iter().enumerate() {
        match *op {
            Op::Advance(ms) => {
                clock.advance(ms);
            }
            Op::Sweep => {
                reference.sweep(usize::MAX);
                restarted.engine.sweep(usize::MAX);
            }
            Op::Reload {
                window_ms,
                max_ids,
                history_len,
                hold_ttl_ms,
            } => {
                cfg = config(window_ms, max_ids, history_len, hold_ttl_ms);
                reference.set_config(cfg.clone());
                restarted.engine.set_config(cfg.clone());
            }
            Op::Snapshot => {
                let records = restarted.journal.records();
                let last_seq = records.last().map_or(0, |r| r.0);
                let shards = (0..restarted.engine.shard_count())
                    .map(|i| {
                        let mut part = Vec::new();
                        restarted.engine.snapshot_shard(i, &mut part);
                        part
                    })
                    .collect();
                snapshot = Some((last_seq, shards));
            }
            Op::Restart { from_snapshot } => {
                let records = restarted.journal.records();
                let journal = Arc::new(MemoryJournal::continuing(records.clone()));
                let engine = Engine::new(cfg.clone(), clock.clone(), journal.clone());
                let mut after = 0;
                if let (true, Some((seq, shards))) = (from_snapshot, &snapshot) {
                    for part in shards {
                        engine
                            .restore_shard(part)
                            .map_err(|e| TestCaseError::fail(format!("step {step}: {e}")))?;
                    }
                    after = *seq;
                }
                for (seq, payload) in records.iter().filter(|r| r.0 > after) {
                    engine.replay(*seq, payload).map_err(|e| {
                        TestCaseError::fail(format!("step {step}: recovery refused: {e}"))
                    })?;
                }
                engine
                    .check_all()
                    .map_err(|e| TestCaseError::fail(format!("step {step}: {e}")))?;
                restarted = Restartable { engine, journal };
                prop_assert_eq!(
                    state(&reference),
                    state(&restarted.engine),
                    "state after the restart at step {}",
                    step
                );
            }
            _ => {
                let expected = run(&reference, op);
                let got = run(&restarted.engine, op);
                prop_assert_eq!(expected, got, "reply at step {}: {:?}", step, op);
            }
        }
    }
    prop_assert_eq!(
        state(&reference),
        state(&restarted.engine),
        "state at the end"
    );
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: std::env::var("PROPTEST_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(200),
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    #[test]
    fn restarts_and_reloads_keep_the_state(ops in prop::collection::vec(op(), 1..250)) {
        check(&ops)?;
    }
}
