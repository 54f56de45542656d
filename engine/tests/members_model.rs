//! Model-based test of members, caps, alerts and events (PROTOCOL.md §9 and
//! §10): random streams of GRANT, RESERVE and DEBIT with and without
//! MEMBER, CAPTURE and COMMIT (overage included), RELEASE, LIMIT, ALERT,
//! PLAN, clock jumps from a millisecond to a month, sweeps and restarts, run
//! against the engine and against the reference model of
//! `members_support/reference.rs`.
//!
//! After every step: the reply or error (INSUFFICIENT's and LIMITED's
//! numbers too) is the model's; every BALANCE conserves credits and is the
//! model's; MEMBERS of every account is the model's; EVENTS is the model's
//! log (numbers, instants, types, accounts, members, values, thresholds),
//! less at most events older than the retention; and a member charge the
//! engine accepted never took the member past its cap. A restart rebuilds
//! the engine from the journal, or from a snapshot of the shards and the
//! event log plus the journal, as a restarted server does: nothing may be
//! lost, repeated or numbered again.

mod members_support;

use creditd_engine::account::Per;
use members_support::reference::DAY_MS;
use members_support::{Cmd, Harness, MErr, MemberRow, Reply, ACCOUNTS, MEMBERS, START_MS};
use proptest::prelude::*;

const HOUR_MS: u64 = 3_600_000;
const THRESHOLDS: [u64; 4] = [50, 120, 300, 700];
/// Monthly plans of the built-in config (from one to the other: an upgrade).
const PLANS: [&str; 2] = ["pro", "business"];

// ---------------------------------------------------------------------------
// Generated operations, resolved against the model when run

#[derive(Debug, Clone)]
enum Amount {
    Abs(u64),
    /// Quarters of what is available (5: more than there is).
    Avail(u64),
    /// The member's remaining room, less 1, exactly, or plus 1.
    Room(u64),
}

#[derive(Debug, Clone)]
enum Total {
    Abs(u64),
    /// Quarters of the hold's amount (above 4: overage).
    Quarters(u64),
    /// Captured + held + the member's room, less 1, exactly, or plus 1.
    Room(u64),
}

/// Accounts, members, thresholds and plans by index; a hold by its rank
/// among the open ones.
#[derive(Debug, Clone)]
enum Op {
    /// account, amount, TTL
    Grant(usize, u64, Option<u64>),
    /// account, amount, TTL, member
    Reserve(usize, Amount, Option<u64>, Option<usize>),
    Capture(usize, usize, Total),
    Commit(usize, usize, Option<Total>),
    Release(usize, usize),
    /// account, amount, member
    Debit(usize, Amount, Option<usize>),
    /// account, member, cap
    Limit(usize, usize, Option<(u64, Per)>),
    /// account, threshold, DEL
    Alert(usize, usize, bool),
    /// account, plan (`None`: PLAN NONE)
    Plan(usize, Option<usize>),
    Jump(u64),
    Sweep,
    Snapshot,
    /// from the snapshot, replaying every record (not only those after it)
    Restart(bool, bool),
}

fn op() -> impl Strategy<Value = Op> {
    let a = || 0..ACCOUNTS.len();
    let member = || proptest::option::weighted(0.7, 0..MEMBERS.len());
    let amount = || {
        prop_oneof![
            4 => (0u64..150).prop_map(Amount::Abs),
            2 => (1u64..=5).prop_map(Amount::Avail),
            3 => (0u64..3).prop_map(Amount::Room),
        ]
    };
    let total = || {
        prop_oneof![
            1 => (0u64..200).prop_map(Total::Abs),
            3 => (0u64..=7).prop_map(Total::Quarters),
            3 => (0u64..3).prop_map(Total::Room),
        ]
    };
    let ttl = prop_oneof![
        2 => Just(None),
        1 => Just(Some(2_000u64)),
        1 => Just(Some(60_000)),
        2 => Just(Some(HOUR_MS)),
        3 => Just(Some(DAY_MS)),
    ];
    let grant_ttl = proptest::option::weighted(0.3, prop_oneof![Just(90_000), Just(5 * HOUR_MS)]);
    let per = prop_oneof![Just(Per::Day), Just(Per::Month), Just(Per::Cycle)];
    let limit = prop_oneof![1 => 0u64..20, 2 => 0u64..120];
    let cap = proptest::option::weighted(0.7, (limit, per));
    let pick = any::<usize>;
    prop_oneof![
        5 => (a(), 1u64..1_000, grant_ttl).prop_map(|(a, n, ttl)| Op::Grant(a, n, ttl)),
        6 => (a(), amount(), ttl, member()).prop_map(|(a, n, ttl, m)| Op::Reserve(a, n, ttl, m)),
        4 => (a(), pick(), total()).prop_map(|(a, h, t)| Op::Capture(a, h, t)),
        5 => (a(), pick(), proptest::option::weighted(0.7, total()))
            .prop_map(|(a, h, t)| Op::Commit(a, h, t)),
        2 => (a(), pick()).prop_map(|(a, h)| Op::Release(a, h)),
        5 => (a(), amount(), member()).prop_map(|(a, n, m)| Op::Debit(a, n, m)),
        4 => (a(), 0..MEMBERS.len(), cap).prop_map(|(a, m, cap)| Op::Limit(a, m, cap)),
        3 => (a(), 0..THRESHOLDS.len(), proptest::bool::weighted(0.2))
            .prop_map(|(a, t, del)| Op::Alert(a, t, del)),
        1 => (a(), proptest::option::weighted(0.7, 0..PLANS.len()))
            .prop_map(|(a, p)| Op::Plan(a, p)),
        8 => prop_oneof![
            5 => 1u64..5_000,
            3 => 55_000u64..65_000,
            3 => HOUR_MS..30 * HOUR_MS,
            1 => DAY_MS..4 * DAY_MS,
            1 => 27 * DAY_MS..35 * DAY_MS,
        ]
        .prop_map(Op::Jump),
        1 => Just(Op::Sweep),
        1 => Just(Op::Snapshot),
        2 => (any::<bool>(), any::<bool>()).prop_map(|(s, all)| Op::Restart(s, all)),
    ]
}

fn amount(h: &mut Harness, a: usize, amount: &Amount, member: Option<usize>) -> u64 {
    let now = h.now();
    match *amount {
        Amount::Abs(n) => n,
        Amount::Avail(q) => (h.model.accounts[a].bal.available * q).div_ceil(4),
        Amount::Room(d) => match member.and_then(|m| h.model.remaining(a, m, now)) {
            Some(room) => (room + d).saturating_sub(1),
            None => 30 + d,
        },
    }
}

/// The open hold `pick` names: one of account `a`'s, or if it has none,
/// of the next account that has one.
fn hold(h: &Harness, a: usize, pick: usize) -> Option<(usize, String)> {
    (0..ACCOUNTS.len())
        .map(|i| (a + i) % ACCOUNTS.len())
        .find_map(|a| {
            let holds = &h.model.accounts[a].holds;
            let id = holds.keys().nth(pick % holds.len().max(1))?;
            Some((a, id.clone()))
        })
}

fn total(h: &mut Harness, a: usize, id: &str, total: &Total) -> u64 {
    let now = h.now();
    let hold = h.model.accounts[a].holds[id].clone();
    match *total {
        Total::Abs(n) => n,
        Total::Quarters(q) => hold.amount * q / 4,
        Total::Room(d) => match hold.member.and_then(|m| h.model.remaining(a, m, now)) {
            Some(room) => (hold.captured + hold.held() + room + d).saturating_sub(1),
            None => hold.amount + d,
        },
    }
}

/// The account and command an operation sends now, if any.
fn resolve(h: &mut Harness, op: &Op) -> Option<(usize, Cmd)> {
    let cmd = match *op {
        Op::Grant(a, amount, ttl) => (
            a,
            Cmd::Grant {
                id: h.fresh_id("g"),
                amount,
                ttl,
            },
        ),
        Op::Reserve(a, ref n, ttl, member) => {
            let (id, amount) = (h.fresh_id("h"), amount(h, a, n, member));
            (
                a,
                Cmd::Reserve {
                    id,
                    amount,
                    ttl,
                    member,
                },
            )
        }
        Op::Capture(a, pick, ref t) => {
            let (a, id) = hold(h, a, pick)?;
            let total = total(h, a, &id, t);
            (a, Cmd::Capture { id, total })
        }
        Op::Commit(a, pick, ref t) => {
            let (a, id) = hold(h, a, pick)?;
            let total = t.as_ref().map(|t| total(h, a, &id, t));
            (a, Cmd::Commit { id, total })
        }
        Op::Release(a, pick) => {
            let (a, id) = hold(h, a, pick)?;
            (a, Cmd::Release { id })
        }
        Op::Debit(a, ref n, member) => {
            let (id, amount) = (h.fresh_id("d"), amount(h, a, n, member));
            (a, Cmd::Debit { id, amount, member })
        }
        Op::Limit(a, member, cap) => (a, Cmd::Limit { member, cap }),
        Op::Alert(a, t, remove) => (
            a,
            Cmd::Alert {
                at: THRESHOLDS[t],
                remove,
            },
        ),
        Op::Plan(a, plan) => (a, plan.map_or(Cmd::Plan(None), |p| Harness::plan(PLANS[p]))),
        _ => return None,
    };
    Some(cmd)
}

fn step(h: &mut Harness, op: &Op) -> Result<(), TestCaseError> {
    h.log.push(format!("@{} {op:?}", h.now() - START_MS));
    match *op {
        Op::Jump(ms) => {
            h.clock.advance(ms);
        }
        Op::Sweep => {
            h.engine.sweep(usize::MAX);
        }
        Op::Snapshot => h.take_snapshot(),
        Op::Restart(from_snapshot, replay_all) => h.restart(from_snapshot, replay_all)?,
        _ => {
            h.model.advance(h.now());
            if let Some((a, cmd)) = resolve(h, op) {
                let _reply = h.send(a, cmd)?;
            }
        }
    }
    h.check()
}

fn run(ops: &[Op]) -> Result<(), TestCaseError> {
    let mut h = Harness::new(START_MS);
    for (i, op) in ops.iter().enumerate() {
        let r = step(&mut h, op);
        if r.is_err() {
            eprintln!(
                "--- trace ---\n{}\nfailed at step {i}: {op:?}",
                h.log.join("\n")
            );
        }
        r?;
    }
    h.restart(false, false)?;
    h.check()
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: std::env::var("PROPTEST_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(128),
        ..ProptestConfig::default()
    })]

    #[test]
    fn members_caps_and_events_match_the_model(ops in proptest::collection::vec(op(), 1..160)) {
        run(&ops)?;
    }
}

// ---------------------------------------------------------------------------
// Sharp edges, by hand (each step is also checked against the model)

fn grant(h: &mut Harness, a: usize, amount: u64, ttl: Option<u64>) -> Reply {
    let id = h.fresh_id("g");
    h.run(a, Cmd::Grant { id, amount, ttl })
}

fn reserve(h: &mut Harness, id: &str, amount: u64, member: usize) -> Reply {
    let (id, ttl, member) = (id.to_string(), Some(2 * HOUR_MS), Some(member));
    h.run(
        0,
        Cmd::Reserve {
            id,
            amount,
            ttl,
            member,
        },
    )
}

fn debit(h: &mut Harness, a: usize, amount: u64, member: usize) -> Reply {
    let (id, member) = (h.fresh_id("d"), Some(member));
    h.run(a, Cmd::Debit { id, amount, member })
}

fn limit(h: &mut Harness, member: usize, cap: Option<(u64, Per)>) -> Reply {
    h.run(0, Cmd::Limit { member, cap })
}

fn limited(need: u64, remaining: u64) -> Reply {
    Err(Ok(MErr::Limited { need, remaining }))
}

fn insufficient(need: u64, available: u64) -> Reply {
    Err(Ok(MErr::Insufficient { need, available }))
}

fn capped(m: &str, limit: u64, per: Per, used: u64, held: u64, end: u64) -> MemberRow {
    (m.to_string(), Some(limit), per, used, held, end)
}

#[test]
fn held_credits_cross_midnight_and_count_in_the_day_of_the_commit() {
    let midnight = START_MS - START_MS % DAY_MS + DAY_MS;
    let mut h = Harness::new(midnight - HOUR_MS);
    grant(&mut h, 0, 1_000, None).unwrap();
    assert_eq!(limit(&mut h, 0, Some((100, Per::Day))), Ok((100, true)));
    assert_eq!(reserve(&mut h, "job", 60, 0), Ok((60, true)));
    assert_eq!(debit(&mut h, 0, 30, 0), Ok((30, true)));
    assert_eq!(debit(&mut h, 0, 11, 0), limited(11, 10));
    h.clock.advance(90 * 60_000);
    // A new day: nothing used yet, the hold still held.
    let day = |used, held| [capped("m0", 100, Per::Day, used, held, midnight + DAY_MS)];
    assert_eq!(h.members(0), day(0, 60));
    // Committed with 20 over the hold: 0 used + 60 held + 20 <= 100.
    let commit = Cmd::Commit {
        id: "job".into(),
        total: Some(80),
    };
    assert_eq!(h.run(0, commit), Ok((80, true)));
    assert_eq!(h.members(0), day(80, 0));
    assert_eq!(debit(&mut h, 0, 21, 0), limited(21, 20));
    assert_eq!(debit(&mut h, 0, 20, 0), Ok((20, true)));
}

#[test]
fn a_cycle_cap_starts_again_at_a_renewal_and_at_an_upgrade() {
    let mut h = Harness::new(START_MS);
    assert_eq!(h.run(0, Harness::plan("pro")), Ok((500, true)));
    assert_eq!(limit(&mut h, 1, Some((100, Per::Cycle))), Ok((100, true)));
    assert_eq!(debit(&mut h, 0, 100, 1), Ok((100, true)));
    let end = h.members(0)[0].5;
    assert_eq!(end, START_MS + 30 * DAY_MS, "Nov 14 to Dec 14");
    h.clock.set(end - 1).unwrap();
    assert_eq!(debit(&mut h, 0, 1, 1), limited(1, 0));
    // The renewal: the unused 400 expire, 500 arrive, the cap starts again.
    h.clock.set(end).unwrap();
    let cycle = |used, end| [capped("m1", 100, Per::Cycle, used, 0, end)];
    assert_eq!(h.members(0), cycle(0, START_MS + 61 * DAY_MS));
    assert_eq!(debit(&mut h, 0, 100, 1), Ok((100, true)));
    assert_eq!(debit(&mut h, 0, 1, 1), limited(1, 0));
    // An upgrade a day later starts a new cycle now, with a new allowance.
    h.clock.advance(DAY_MS);
    assert_eq!(h.run(0, Harness::plan("business")), Ok((1_000, true)));
    assert_eq!(h.members(0), cycle(0, h.now() + 31 * DAY_MS));
    assert_eq!(debit(&mut h, 0, 100, 1), Ok((100, true)));
    // Every period kind counted all along: December has seen 200.
    assert_eq!(limit(&mut h, 1, Some((300, Per::Month))), Ok((100, true)));
}

#[test]
fn a_capture_over_the_cap_is_limited_and_changes_nothing() {
    let mut h = Harness::new(START_MS);
    grant(&mut h, 0, 1_000, None).unwrap();
    limit(&mut h, 2, Some((100, Per::Day))).unwrap();
    assert_eq!(reserve(&mut h, "job", 80, 2), Ok((80, true)));
    let capture = |total| Cmd::Capture {
        id: "job".into(),
        total,
    };
    assert_eq!(h.run(0, capture(50)), Ok((50, true)));
    let id = ACCOUNTS[0].as_bytes();
    let (account, members) = (h.engine.account(id), h.members(0));
    // 80 more: 30 from the hold, 50 over it; 50 used + 30 held + 50 > 100.
    assert_eq!(h.run(0, capture(130)), limited(50, 20));
    assert_eq!(h.engine.account(id), account);
    assert_eq!(h.members(0), members);
    let event = (1, START_MS, "limited", "acct-a".into(), "m2".into(), 50, 0);
    assert_eq!(h.events(), [event]);
    // 20 over the hold fits exactly.
    let commit = Cmd::Commit {
        id: "job".into(),
        total: Some(100),
    };
    assert_eq!(h.run(0, commit), Ok((100, true)));
    assert_eq!(h.members(0)[0].3, 100);
}

#[test]
fn a_low_event_fires_once_rearms_after_a_grant_and_fires_after_expiry() {
    let mut h = Harness::new(START_MS);
    let alert = Cmd::Alert {
        at: 100,
        remove: false,
    };
    assert_eq!(h.run(0, alert), Ok((1, true)));
    grant(&mut h, 0, 150, None).unwrap();
    debit(&mut h, 0, 60, 0).unwrap();
    let low = |seq, at, value| (seq, at, "low", "acct-a".into(), String::new(), value, 100);
    assert_eq!(h.events(), [low(1, START_MS, 90)]);
    debit(&mut h, 0, 10, 0).unwrap();
    assert_eq!(h.events().len(), 1, "once, until back at or above 100");
    assert_eq!(grant(&mut h, 0, 100, Some(HOUR_MS)), Ok((180, true)));
    h.clock.advance(2 * HOUR_MS);
    assert_eq!(h.engine.balance(ACCOUNTS[0].as_bytes()).available, 80);
    assert_eq!(h.events().len(), 1, "time alone raises nothing");
    debit(&mut h, 0, 1, 0).unwrap();
    assert_eq!(h.events(), [low(1, START_MS, 90), low(2, h.now(), 79)]);
}

#[test]
fn refusal_events_come_once_a_minute_and_only_for_accounts_that_exist() {
    let mut h = Harness::new(START_MS);
    assert_eq!(debit(&mut h, 2, 5, 0), insufficient(5, 0));
    assert_eq!(h.events(), [], "no such account");
    grant(&mut h, 0, 100, None).unwrap();
    assert_eq!(limit(&mut h, 3, Some((0, Per::Day))), Ok((0, true)));
    assert_eq!(reserve(&mut h, "job", 5, 3), limited(5, 0));
    // Removing the cap forgets an idle member, but not its event's stamp.
    assert_eq!(limit(&mut h, 3, None), Ok((0, true)));
    limit(&mut h, 3, Some((0, Per::Day))).unwrap();
    assert_eq!(debit(&mut h, 0, 5, 3), limited(5, 0));
    assert_eq!(h.events().len(), 1);
    h.clock.advance(60_000);
    assert_eq!(debit(&mut h, 0, 5, 3), limited(5, 0));
    assert_eq!(debit(&mut h, 0, 500, 3), insufficient(500, 100));
    assert_eq!(debit(&mut h, 0, 600, 1), insufficient(600, 100));
    let events = h.events();
    let seen: Vec<_> = events
        .iter()
        .map(|e| (e.0, e.2, e.4.as_str(), e.5))
        .collect();
    let limited = |seq| (seq, "limited", "m3", 5);
    assert_eq!(
        seen,
        [limited(1), limited(2), (3, "insufficient", "m3", 500)]
    );
}

#[test]
fn an_open_hold_keeps_its_member_even_when_it_holds_nothing() {
    let mut h = Harness::new(START_MS);
    assert_eq!(reserve(&mut h, "free", 0, 0), Ok((0, true)));
    limit(&mut h, 1, Some((5, Per::Day))).unwrap();
    // m1 is idle again: idle members are forgotten, m0 is not (its hold names it).
    assert_eq!(limit(&mut h, 1, None), Ok((0, true)));
    let release = Cmd::Release { id: "free".into() };
    assert_eq!(h.run(0, release), Ok((0, true)));
}
