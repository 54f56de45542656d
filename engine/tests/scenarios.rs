//! Focused tests of the contract's rules (PROTOCOL.md §1, §3, §4, §5), one
//! rule or scenario per test, with exact numbers.
//!
//! Every test also checks, when its harness is dropped, that all invariants
//! hold and that replaying its journal into a fresh engine reproduces every
//! account it touched (ACCOUNT, BALANCE and HISTORY).

use creditd_engine::bucket::BucketKind;
use creditd_engine::clock::{Clock, TestClock};
use creditd_engine::config::Config;
use creditd_engine::id::Bytes;
use creditd_engine::{
    AccountView, Charge, Engine, EngineError, Expiry, MemoryJournal, Mutation, Outcome, Usage,
};
use std::cell::RefCell;
use std::collections::BTreeSet;
use std::sync::Arc;

const T0: u64 = 1_700_000_000_000;
const DAY: u64 = 86_400_000;

// UTC instants (checked with `date -u -d ... +%s`).
const JAN31: u64 = 1_769_853_600_000; // 2026-01-31T10:00:00Z
const FEB10: u64 = 1_770_717_600_000; // 2026-02-10T10:00:00Z
const FEB28: u64 = 1_772_272_800_000; // 2026-02-28T10:00:00Z
const MAR10: u64 = 1_773_136_800_000; // 2026-03-10T10:00:00Z
const MAR15: u64 = 1_773_532_800_000; // 2026-03-15T00:00:00Z
const MAR31: u64 = 1_774_951_200_000; // 2026-03-31T10:00:00Z
const APR30: u64 = 1_777_543_200_000; // 2026-04-30T10:00:00Z
const MAY31: u64 = 1_780_221_600_000; // 2026-05-31T10:00:00Z
const JAN31_2027: u64 = 1_801_389_600_000; // 2027-01-31T10:00:00Z

// ---------------------------------------------------------------------------
// Commands

fn grant(id: &str, amount: u64) -> Mutation<'_> {
    grant_with(id, amount, BucketKind::Prepaid, Expiry::Never, 50)
}

fn grant_with(
    id: &str,
    amount: u64,
    kind: BucketKind,
    expiry: Expiry,
    priority: u8,
) -> Mutation<'_> {
    Mutation::Grant {
        grant_id: Bytes(id.as_bytes()),
        amount,
        kind,
        expiry,
        priority,
    }
}

fn reserve(id: &str, amount: u64, ttl_ms: Option<u64>) -> Mutation<'_> {
    Mutation::Reserve {
        hold_id: Bytes(id.as_bytes()),
        charge: Charge::Amount(amount),
        ttl_ms,
        member: None,
    }
}

fn reserve_sku<'a>(id: &'a str, sku: &'a str, qty: u64) -> Mutation<'a> {
    Mutation::Reserve {
        hold_id: Bytes(id.as_bytes()),
        charge: Charge::Sku { sku, qty },
        ttl_ms: None,
        member: None,
    }
}

fn capture(id: &str, total: u64) -> Mutation<'_> {
    Mutation::Capture {
        hold_id: Bytes(id.as_bytes()),
        usage: Usage::Total(total),
    }
}

fn capture_qty(id: &str, qty: u64) -> Mutation<'_> {
    Mutation::Capture {
        hold_id: Bytes(id.as_bytes()),
        usage: Usage::Qty(qty),
    }
}

fn commit(id: &str, total: Option<u64>) -> Mutation<'_> {
    Mutation::Commit {
        hold_id: Bytes(id.as_bytes()),
        usage: total.map(Usage::Total),
    }
}

fn commit_qty(id: &str, qty: u64) -> Mutation<'_> {
    Mutation::Commit {
        hold_id: Bytes(id.as_bytes()),
        usage: Some(Usage::Qty(qty)),
    }
}

fn release(id: &str) -> Mutation<'_> {
    Mutation::Release {
        hold_id: Bytes(id.as_bytes()),
    }
}

fn extend(id: &str, ttl_ms: u64) -> Mutation<'_> {
    Mutation::Extend {
        hold_id: Bytes(id.as_bytes()),
        ttl_ms,
    }
}

fn debit(id: &str, amount: u64) -> Mutation<'_> {
    Mutation::Debit {
        debit_id: Bytes(id.as_bytes()),
        charge: Charge::Amount(amount),
        member: None,
    }
}

fn debit_sku<'a>(id: &'a str, sku: &'a str, qty: u64) -> Mutation<'a> {
    Mutation::Debit {
        debit_id: Bytes(id.as_bytes()),
        charge: Charge::Sku { sku, qty },
        member: None,
    }
}

fn subscribe(plan: &str, seats: Option<u32>, anchor_ms: Option<u64>) -> Mutation<'_> {
    Mutation::Subscribe {
        plan,
        seats,
        anchor_ms,
    }
}

// ---------------------------------------------------------------------------
// Harness

struct T {
    engine: Engine,
    clock: Arc<TestClock>,
    journal: Arc<MemoryJournal>,
    config: Config,
    touched: RefCell<BTreeSet<String>>,
}

/// BALANCE as `[available, held, spent, expired, granted]`.
type Bal = [u64; 5];

impl T {
    fn new(start_ms: u64) -> T {
        T::with_config(Config::builtin(), start_ms)
    }

    fn with_config(config: Config, start_ms: u64) -> T {
        let clock = Arc::new(TestClock::new(start_ms));
        let journal = Arc::new(MemoryJournal::keeping());
        T {
            engine: Engine::new(
                config.clone(),
                clock.clone() as Arc<dyn Clock>,
                journal.clone(),
            ),
            clock,
            journal,
            config,
            touched: RefCell::default(),
        }
    }

    fn now(&self) -> u64 {
        self.clock.now_ms()
    }

    fn set(&self, at_ms: u64) {
        self.clock
            .set(at_ms)
            .expect("the test clock only moves forward");
    }

    fn advance(&self, ms: u64) {
        self.clock.advance(ms);
    }

    fn run(&self, acct: &str, m: Mutation) -> Result<Outcome, EngineError> {
        self.touched.borrow_mut().insert(acct.to_string());
        self.engine.execute(acct.as_bytes(), &m)
    }

    /// A command that must succeed and change something: its reply.
    fn ok(&self, acct: &str, m: Mutation) -> u64 {
        match self.run(acct, m) {
            Ok(o) => {
                assert!(
                    o.changed,
                    "{m:?} on {acct} changed nothing (reply {})",
                    o.reply
                );
                o.reply
            }
            Err(e) => panic!("{m:?} on {acct}: {e}"),
        }
    }

    /// A command that must succeed as a repeat (nothing applied): its reply.
    fn again(&self, acct: &str, m: Mutation) -> u64 {
        match self.run(acct, m) {
            Ok(o) => {
                assert!(!o.changed, "{m:?} on {acct} was applied again");
                o.reply
            }
            Err(e) => panic!("{m:?} on {acct}: {e}"),
        }
    }

    /// A command that must fail: the rendered error (code first). Checks
    /// that it changed nothing and left no record.
    fn fails(&self, acct: &str, m: Mutation) -> String {
        let before = (
            self.view(acct),
            self.engine.history(acct.as_bytes(), 10_000),
        );
        let accounts = self.engine.stats().accounts;
        let e = match self.run(acct, m) {
            Ok(o) => panic!("{m:?} on {acct} succeeded with {o:?}"),
            Err(e) => e,
        };
        let after = (
            self.view(acct),
            self.engine.history(acct.as_bytes(), 10_000),
        );
        assert_eq!(before, after, "failed {m:?} changed {acct}");
        assert_eq!(
            self.engine.stats().accounts,
            accounts,
            "failed {m:?} made an account"
        );
        let s = e.to_string();
        assert!(s.starts_with(e.code.as_str()), "{s}");
        s
    }

    fn code(&self, acct: &str, m: Mutation) -> &'static str {
        let s = self.fails(acct, m);
        for code in [
            "ERR",
            "INSUFFICIENT",
            "NOTFOUND",
            "CONFLICT",
            "EXPIRED",
            "NOTENTITLED",
        ] {
            if s.split(' ').next() == Some(code) {
                return code;
            }
        }
        panic!("unknown error code in {s}");
    }

    fn view(&self, acct: &str) -> AccountView {
        self.engine.account(acct.as_bytes())
    }

    fn bal(&self, acct: &str) -> Bal {
        let b = self.engine.balance(acct.as_bytes());
        assert_eq!(
            b.granted,
            b.available + b.held + b.spent + b.expired,
            "conservation on {acct}: {b:?}"
        );
        [b.available, b.held, b.spent, b.expired, b.granted]
    }

    /// Live buckets in spending order: (id, kind, remaining, expires_at (0 = never), priority).
    fn buckets(&self, acct: &str) -> Vec<(String, &'static str, u64, u64, u8)> {
        self.view(acct)
            .buckets
            .iter()
            .map(|b| {
                (
                    String::from_utf8_lossy(&b.id).into_owned(),
                    b.kind.as_str(),
                    b.remaining,
                    b.shown_expires_at(),
                    b.priority,
                )
            })
            .collect()
    }

    fn bucket_ids(&self, acct: &str) -> Vec<String> {
        self.buckets(acct).into_iter().map(|b| b.0).collect()
    }

    fn remaining(&self, acct: &str, id: &str) -> u64 {
        self.buckets(acct)
            .into_iter()
            .find(|b| b.0 == id)
            .map_or(0, |b| b.2)
    }

    /// Open holds: (id, amount, captured, expires_at).
    fn holds(&self, acct: &str) -> Vec<(String, u64, u64, u64)> {
        self.view(acct)
            .holds
            .iter()
            .map(|h| {
                (
                    String::from_utf8_lossy(&h.id).into_owned(),
                    h.amount,
                    h.captured,
                    h.expires_at_ms,
                )
            })
            .collect()
    }

    /// HISTORY, newest first: (at, op, id, amount); checks seq runs down by one.
    fn hist(&self, acct: &str, count: usize) -> Vec<(u64, &'static str, String, u64)> {
        let h = self.engine.history(acct.as_bytes(), count);
        for w in h.windows(2) {
            assert_eq!(w[0].seq, w[1].seq + 1, "history seq");
            assert!(w[0].at_ms >= w[1].at_ms, "history instants run backwards");
        }
        h.iter()
            .map(|e| {
                (
                    e.at_ms,
                    e.op.as_str(),
                    String::from_utf8_lossy(&e.id).into_owned(),
                    e.amount,
                )
            })
            .collect()
    }

    fn ops(&self, acct: &str) -> Vec<&'static str> {
        self.hist(acct, 10_000).into_iter().map(|e| e.1).collect()
    }
}

impl Drop for T {
    /// Every scenario must also hold its invariants and recover exactly.
    fn drop(&mut self) {
        if std::thread::panicking() {
            return;
        }
        self.engine.check_all().expect("invariants");
        let clock = Arc::new(TestClock::new(self.now()));
        let fresh = Engine::new(
            self.config.clone(),
            clock as Arc<dyn Clock>,
            Arc::new(MemoryJournal::discarding()),
        );
        for (seq, payload) in self.journal.records() {
            fresh.replay(seq, &payload).expect("replay");
        }
        fresh.check_all().expect("invariants after replay");
        for acct in self.touched.borrow().iter() {
            let id = acct.as_bytes();
            assert_eq!(
                fresh.account(id),
                self.engine.account(id),
                "replayed ACCOUNT {acct}"
            );
            assert_eq!(
                fresh.history(id, 10_000),
                self.engine.history(id, 10_000),
                "replayed HISTORY {acct}"
            );
        }
        assert_eq!(fresh.stats().accounts, self.engine.stats().accounts);
    }
}

// ---------------------------------------------------------------------------
// Spending order

#[test]
fn spending_order_priority_then_soonest_expiry_never_last_then_oldest() {
    let t = T::new(T0);
    let a = "acct";
    let p = BucketKind::Prepaid;
    t.ok(a, grant_with("never-50-a", 10, p, Expiry::Never, 50));
    t.ok(a, grant_with("late-50", 10, p, Expiry::Ttl(20_000), 50));
    t.ok(a, grant_with("soon-50-a", 10, p, Expiry::Ttl(10_000), 50));
    t.ok(a, grant_with("never-50-b", 10, p, Expiry::Never, 50));
    t.ok(a, grant_with("never-10", 10, p, Expiry::Never, 10));
    t.ok(a, grant_with("soon-90", 10, p, Expiry::Ttl(1_000), 90));
    t.ok(
        a,
        grant_with("soon-50-b", 10, p, Expiry::At(T0 + 10_000), 50),
    );
    t.ok(
        a,
        grant_with("promo-0", 10, BucketKind::Promo, Expiry::Ttl(50_000), 0),
    );
    assert_eq!(
        t.bucket_ids(a),
        [
            "promo-0",
            "never-10",
            "soon-50-a",
            "soon-50-b",
            "late-50",
            "never-50-a",
            "never-50-b",
            "soon-90"
        ]
    );
    assert_eq!(
        t.buckets(a)[0],
        ("promo-0".into(), "promo", 10, T0 + 50_000, 0)
    );
    assert_eq!(t.buckets(a)[5], ("never-50-a".into(), "prepaid", 10, 0, 50));

    // A debit and a reservation both take from the front.
    assert_eq!(t.ok(a, debit("d1", 15)), 15);
    assert_eq!(t.remaining(a, "promo-0"), 0);
    assert_eq!(t.remaining(a, "never-10"), 5);
    assert_eq!(t.ok(a, reserve("h1", 20, None)), 20);
    assert_eq!(t.remaining(a, "never-10"), 0);
    assert_eq!(t.remaining(a, "soon-50-a"), 0);
    assert_eq!(t.remaining(a, "soon-50-b"), 5);
    assert_eq!(t.ok(a, debit("d2", 30)), 30);
    assert_eq!(t.bucket_ids(a), ["never-50-b", "soon-90"]);
    assert_eq!(t.remaining(a, "never-50-b"), 5);
    assert_eq!(t.bal(a), [15, 20, 45, 0, 80]);

    // Releasing gives the credits back to the buckets they came from.
    assert_eq!(t.ok(a, release("h1")), 20);
    assert_eq!(t.remaining(a, "never-10"), 5);
    assert_eq!(t.remaining(a, "soon-50-a"), 10);
    assert_eq!(t.remaining(a, "soon-50-b"), 5);
    assert_eq!(t.bucket_ids(a)[0], "never-10");
}

#[test]
fn plan_buckets_have_the_default_priority() {
    let t = T::new(JAN31);
    let a = "acct";
    t.ok(a, subscribe("pro", None, None));
    t.ok(a, Mutation::Addon { units: 1 });
    t.ok(
        a,
        grant_with("cheap", 5, BucketKind::Promo, Expiry::Never, 49),
    );
    t.ok(
        a,
        grant_with("dear", 5, BucketKind::Promo, Expiry::Ttl(1), 51),
    );
    let b = t.buckets(a);
    assert_eq!(b.len(), 4);
    assert_eq!(b[0].0, "cheap");
    assert_eq!((b[1].1, b[1].4), ("subscription", 50));
    assert_eq!((b[2].1, b[2].4), ("addon", 50));
    assert_eq!(b[3].0, "dear");
}

// ---------------------------------------------------------------------------
// Buckets expiring under holds

#[test]
fn credits_held_from_an_expired_bucket_are_spent_on_commit() {
    let t = T::new(T0);
    let a = "acct";
    t.ok(
        a,
        grant_with("short", 100, BucketKind::Promo, Expiry::Ttl(1_000), 10),
    );
    t.ok(a, grant("long", 100));
    assert_eq!(t.ok(a, reserve("h", 150, Some(10_000))), 150);
    t.set(T0 + 1_000);
    // All of `short` is held: nothing of it expires yet, and it is not listed.
    assert_eq!(t.bal(a), [50, 150, 0, 0, 200]);
    assert_eq!(t.bucket_ids(a), ["long"]);
    // Commit 120: the hold's portions in order (100 from short, 20 from long), rest back.
    assert_eq!(t.ok(a, commit("h", Some(120))), 120);
    assert_eq!(t.bal(a), [80, 0, 120, 0, 200]);
    assert_eq!(t.buckets(a), [("long".into(), "prepaid", 80, 0, 50)]);
}

#[test]
fn credits_held_from_an_expired_bucket_expire_on_release() {
    let t = T::new(T0);
    let a = "acct";
    t.ok(
        a,
        grant_with("short", 100, BucketKind::Promo, Expiry::Ttl(1_000), 10),
    );
    t.ok(a, grant("long", 100));
    t.ok(a, reserve("h", 150, Some(10_000)));
    t.set(T0 + 5_000);
    // RELEASE replies only what went back to available.
    assert_eq!(t.ok(a, release("h")), 50);
    assert_eq!(t.bal(a), [100, 0, 0, 100, 200]);
    assert_eq!(
        t.hist(a, 2),
        [
            (T0 + 5_000, "release", "h".into(), 50),
            (T0 + 5_000, "expire_credits", "short".into(), 100),
        ]
    );
    assert_eq!(t.again(a, release("h")), 50);
}

#[test]
fn partly_held_bucket_expires_its_free_part_at_once_and_the_rest_later() {
    let t = T::new(T0);
    let a = "acct";
    t.ok(
        a,
        grant_with("short", 100, BucketKind::Promo, Expiry::Ttl(1_000), 50),
    );
    t.ok(a, reserve("h", 60, Some(10_000)));
    t.set(T0 + 999);
    assert_eq!(t.bal(a), [40, 60, 0, 0, 100]);
    t.set(T0 + 1_000);
    assert_eq!(t.bal(a), [0, 60, 0, 40, 100]);
    t.set(T0 + 2_000);
    assert_eq!(t.ok(a, commit("h", Some(30))), 30);
    assert_eq!(t.bal(a), [0, 0, 30, 70, 100]);
    let h = t.hist(a, 10);
    assert_eq!(h[0], (T0 + 2_000, "commit", "h".into(), 30));
    assert_eq!(h[1], (T0 + 2_000, "expire_credits", "short".into(), 30));
    assert_eq!(h[2], (T0 + 1_000, "expire_credits", "short".into(), 40));
}

#[test]
fn hold_expiring_after_its_bucket_expires_the_credits() {
    let t = T::new(T0);
    let a = "acct";
    t.ok(
        a,
        grant_with("short", 100, BucketKind::Promo, Expiry::Ttl(1_000), 50),
    );
    t.ok(a, grant("long", 10));
    t.ok(a, reserve("h", 105, Some(3_000)));
    t.set(T0 + 3_000);
    assert_eq!(t.bal(a), [10, 0, 0, 100, 110]);
    assert_eq!(t.again(a, release("h")), 0);
}

/// Regression: credits given back to a bucket that the hold had emptied must
/// still expire at the bucket's `expires_at` (engine fix in account/ledger.rs).
#[test]
fn released_credits_still_expire_on_time() {
    let t = T::new(T0);
    let a = "acct";
    t.ok(
        a,
        grant_with("b", 100, BucketKind::Prepaid, Expiry::Ttl(10_000), 50),
    );
    t.ok(
        a,
        grant_with("c", 50, BucketKind::Prepaid, Expiry::Ttl(5), 100),
    );
    t.ok(a, reserve("h", 100, Some(100_000)));
    t.set(T0 + 6); // `c` expires: the account's next event is computed while `b` is empty
    assert_eq!(t.bal(a), [0, 100, 0, 50, 150]);
    t.set(T0 + 7);
    assert_eq!(t.ok(a, release("h")), 100);
    t.set(T0 + 10_000);
    assert_eq!(t.bal(a), [0, 0, 0, 150, 150]);
    assert!(t.buckets(a).is_empty());

    // The same through a partial COMMIT.
    let a = "acct2";
    t.ok(
        a,
        grant_with("b", 100, BucketKind::Prepaid, Expiry::Ttl(10_000), 50),
    );
    t.ok(
        a,
        grant_with("c", 50, BucketKind::Prepaid, Expiry::Ttl(5), 100),
    );
    t.ok(a, reserve("h", 100, Some(100_000)));
    t.advance(6);
    t.ok(a, commit("h", Some(40)));
    t.set(T0 + 10_000 + 10_000);
    assert_eq!(t.bal(a), [0, 0, 40, 110, 150]);
}

// ---------------------------------------------------------------------------
// Hold lifecycle

#[test]
fn hold_is_live_until_expires_at_and_expired_from_it() {
    let t = T::new(T0);
    let a = "acct";
    t.ok(a, grant("g", 100));
    assert_eq!(t.ok(a, reserve("h", 40, Some(1_000))), 40);
    t.set(T0 + 999);
    assert_eq!(t.holds(a), [("h".into(), 40, 0, T0 + 1_000)]);
    assert_eq!(t.bal(a), [60, 40, 0, 0, 100]);
    t.set(T0 + 1_000);
    assert!(t.holds(a).is_empty());
    assert_eq!(t.bal(a), [100, 0, 0, 0, 100]);
    assert_eq!(t.hist(a, 1), [(T0 + 1_000, "expire_hold", "h".into(), 40)]);

    assert_eq!(t.code(a, commit("h", None)), "EXPIRED");
    assert_eq!(t.code(a, commit("h", Some(10))), "EXPIRED");
    assert_eq!(t.code(a, capture("h", 10)), "EXPIRED");
    assert_eq!(t.code(a, extend("h", 1_000)), "EXPIRED");
    assert_eq!(t.again(a, release("h")), 0);
    // RESERVE with the same id: the first reply, no new hold; other args: CONFLICT.
    assert_eq!(t.again(a, reserve("h", 40, Some(1_000))), 40);
    assert!(t.holds(a).is_empty());
    assert_eq!(t.code(a, reserve("h", 41, Some(1_000))), "CONFLICT");
    assert_eq!(t.code(a, reserve("h", 40, None)), "CONFLICT");
}

#[test]
fn bucket_is_live_until_expires_at() {
    let t = T::new(T0);
    let a = "acct";
    t.ok(
        a,
        grant_with("g", 10, BucketKind::Promo, Expiry::At(T0 + 500), 50),
    );
    t.set(T0 + 499);
    assert_eq!(t.bal(a), [10, 0, 0, 0, 10]);
    t.set(T0 + 500);
    assert_eq!(t.bal(a), [0, 0, 0, 10, 10]);
    assert_eq!(t.hist(a, 1), [(T0 + 500, "expire_credits", "g".into(), 10)]);
    // A grant that would expire at once is refused.
    assert_eq!(
        t.code(
            a,
            grant_with("x", 1, BucketKind::Promo, Expiry::At(T0 + 500), 50)
        ),
        "ERR"
    );
}

#[test]
fn extend_moves_the_expiry_from_now() {
    let t = T::new(T0);
    let a = "acct";
    t.ok(a, grant("g", 100));
    t.ok(a, reserve("h", 40, Some(1_000)));
    t.set(T0 + 900);
    assert_eq!(t.ok(a, extend("h", 5_000)), T0 + 5_900);
    t.set(T0 + 5_899);
    assert_eq!(t.bal(a)[1], 40);
    t.set(T0 + 5_900);
    assert_eq!(t.bal(a)[1], 0);
    assert_eq!(t.code(a, extend("nope", 5_000)), "NOTFOUND");
    assert_eq!(t.code(a, extend("h", 0)), "ERR");
    t.ok(a, reserve("h2", 1, None));
    assert_eq!(t.code(a, extend("h2", 86_400_001)), "ERR");
    assert_eq!(t.ok(a, extend("h2", 86_400_000)), t.now() + 86_400_000);
}

#[test]
fn commit_and_release_conflicts_and_retries() {
    let t = T::new(T0);
    let a = "acct";
    t.ok(a, grant("g", 100));
    t.ok(a, reserve("h", 50, None));
    assert_eq!(t.ok(a, commit("h", Some(30))), 30);
    assert_eq!(t.bal(a), [70, 0, 30, 0, 100]);
    assert_eq!(t.again(a, commit("h", Some(30))), 30);
    assert_eq!(t.code(a, commit("h", Some(31))), "CONFLICT");
    assert_eq!(t.code(a, commit("h", None)), "CONFLICT");
    assert_eq!(t.code(a, release("h")), "CONFLICT");
    assert_eq!(t.code(a, capture("h", 40)), "CONFLICT");
    assert_eq!(t.code(a, extend("h", 1_000)), "CONFLICT");
    assert_eq!(t.again(a, reserve("h", 50, None)), 50);
    assert_eq!(t.bal(a), [70, 0, 30, 0, 100]);

    // Without a total: the whole held amount.
    t.ok(a, reserve("h2", 20, None));
    assert_eq!(t.ok(a, commit("h2", None)), 20);
    assert_eq!(t.again(a, commit("h2", None)), 20);
    assert_eq!(t.code(a, commit("h2", Some(20))), "CONFLICT");

    // Released: a repeat replies the same, COMMIT is a CONFLICT.
    t.ok(a, reserve("h3", 10, None));
    assert_eq!(t.ok(a, release("h3")), 10);
    assert_eq!(t.again(a, release("h3")), 10);
    assert_eq!(t.code(a, commit("h3", None)), "CONFLICT");
    assert_eq!(t.code(a, capture("h3", 1)), "CONFLICT");
    assert_eq!(t.bal(a), [50, 0, 50, 0, 100]);

    // Unknown holds.
    assert_eq!(t.code(a, commit("nope", None)), "NOTFOUND");
    assert_eq!(t.code(a, release("nope")), "NOTFOUND");
    assert_eq!(t.code(a, capture("nope", 1)), "NOTFOUND");

    // An open hold: RESERVE again with the same args is a repeat, other args CONFLICT.
    t.ok(a, reserve("h4", 5, Some(60_000)));
    assert_eq!(t.again(a, reserve("h4", 5, Some(60_000))), 5);
    assert_eq!(t.code(a, reserve("h4", 6, Some(60_000))), "CONFLICT");
    assert_eq!(t.code(a, reserve("h4", 5, Some(60_001))), "CONFLICT");
    assert_eq!(t.bal(a), [45, 5, 50, 0, 100]);
}

#[test]
fn commit_below_the_hold_returns_the_rest_and_above_takes_from_available() {
    let t = T::new(T0);
    let a = "acct";
    t.ok(a, grant("g", 100));
    t.ok(a, reserve("h", 40, None));
    assert_eq!(t.ok(a, commit("h", Some(0))), 0);
    assert_eq!(t.bal(a), [100, 0, 0, 0, 100]);
    t.ok(a, reserve("h2", 40, None));
    assert_eq!(t.ok(a, commit("h2", Some(70))), 70);
    assert_eq!(t.bal(a), [30, 0, 70, 0, 100]);
    t.ok(a, reserve("h3", 10, None));
    assert_eq!(
        t.fails(a, commit("h3", Some(50))),
        "INSUFFICIENT need 40 available 20"
    );
    // The refused commit left the hold as it was.
    assert_eq!(t.holds(a)[0].0, "h3");
    assert_eq!(t.ok(a, commit("h3", Some(30))), 30);
    assert_eq!(t.bal(a), [0, 0, 100, 0, 100]);
}

// ---------------------------------------------------------------------------
// CAPTURE

#[test]
fn capture_is_cumulative_and_overage_comes_from_available() {
    let t = T::new(T0);
    let a = "acct";
    t.ok(a, grant("g", 110));
    assert_eq!(t.ok(a, reserve("h", 100, None)), 100);
    assert_eq!(t.ok(a, capture("h", 30)), 30);
    assert_eq!(t.bal(a), [10, 70, 30, 0, 110]);
    // At or below what is captured: nothing changes.
    assert_eq!(t.again(a, capture("h", 20)), 30);
    assert_eq!(t.again(a, capture("h", 30)), 30);
    assert_eq!(t.again(a, capture("h", 0)), 30);
    assert_eq!(t.bal(a), [10, 70, 30, 0, 110]);
    // 100 more: 70 from the hold, 30 from available, which has 10.
    assert_eq!(
        t.fails(a, capture("h", 130)),
        "INSUFFICIENT need 30 available 10"
    );
    assert_eq!(t.ok(a, capture("h", 110)), 110);
    assert_eq!(t.bal(a), [0, 0, 110, 0, 110]);
    assert_eq!(t.holds(a), [("h".into(), 100, 110, T0 + 900_000)]);
    // COMMIT without a total: at least what was captured.
    assert_eq!(t.ok(a, commit("h", None)), 110);
    assert_eq!(t.bal(a), [0, 0, 110, 0, 110]);
    let h = t.hist(a, 3);
    assert_eq!(h[0].1, "commit");
    assert_eq!((h[1].1, h[1].3), ("capture", 80));
    assert_eq!((h[2].1, h[2].3), ("capture", 30));
}

#[test]
fn commit_after_capture_debits_total_less_captures() {
    let t = T::new(T0);
    let a = "acct";
    t.ok(a, grant("g", 100));
    t.ok(a, reserve("h", 50, None));
    t.ok(a, capture("h", 20));
    assert_eq!(t.ok(a, commit("h", Some(35))), 35);
    assert_eq!(t.bal(a), [65, 0, 35, 0, 100]);
    // A final total below the captures: the captures stand.
    t.ok(a, reserve("h2", 50, None));
    t.ok(a, capture("h2", 20));
    assert_eq!(t.ok(a, commit("h2", Some(5))), 20);
    assert_eq!(t.bal(a), [45, 0, 55, 0, 100]);
    // Captured credits stay spent when the hold is released or expires.
    t.ok(a, reserve("h3", 10, Some(1_000)));
    t.ok(a, capture("h3", 4));
    assert_eq!(t.ok(a, release("h3")), 6);
    t.ok(a, reserve("h4", 10, Some(1_000)));
    t.ok(a, capture("h4", 3));
    t.advance(1_000);
    assert_eq!(t.bal(a), [38, 0, 62, 0, 100]);
    assert_eq!(t.hist(a, 1), [(T0 + 1_000, "expire_hold", "h4".into(), 7)]);
}

// ---------------------------------------------------------------------------
// Idempotency

#[test]
fn ids_are_remembered_for_the_window_then_forgotten() {
    let t = T::new(T0);
    let a = "acct";
    assert_eq!(t.ok(a, grant("g", 100)), 100);
    t.ok(a, reserve("h", 10, None));
    assert_eq!(t.ok(a, commit("h", None)), 10);
    assert_eq!(t.ok(a, debit("d", 5)), 5);
    assert_eq!(t.bal(a), [85, 0, 15, 0, 100]);

    t.set(T0 + DAY - 1);
    assert_eq!(t.again(a, grant("g", 100)), 100);
    assert_eq!(t.code(a, grant("g", 101)), "CONFLICT");
    assert_eq!(t.again(a, commit("h", None)), 10);
    assert_eq!(t.again(a, reserve("h", 10, None)), 10);
    assert_eq!(t.again(a, debit("d", 5)), 5);
    assert_eq!(t.code(a, debit("d", 6)), "CONFLICT");
    assert_eq!(t.bal(a), [85, 0, 15, 0, 100]);

    t.set(T0 + DAY + 1);
    // Forgotten: the same commands are new again.
    assert_eq!(t.code(a, commit("h", None)), "NOTFOUND");
    assert_eq!(t.code(a, release("h")), "NOTFOUND");
    assert_eq!(t.ok(a, grant("g", 100)), 185);
    assert_eq!(t.ok(a, debit("d", 6)), 6);
    assert_eq!(t.ok(a, reserve("h", 10, None)), 10);
    assert_eq!(t.bal(a), [169, 10, 21, 0, 200]);
}

#[test]
fn the_window_comes_from_the_config_and_counts_from_the_finish() {
    let config = Config::parse(
        "idempotency_window_ms = 1000\nhold_ttl_ms = 5000\n",
        "t.toml",
    )
    .unwrap();
    let t = T::with_config(config, T0);
    let a = "acct";
    t.ok(a, grant("g", 100));
    t.ok(a, reserve("h", 10, None)); // expires at T0 + 5000
    t.set(T0 + 4_000);
    // The hold is open: its id is in use however old the RESERVE is.
    assert_eq!(t.code(a, reserve("h", 11, None)), "CONFLICT");
    assert_eq!(t.ok(a, grant("g", 100)), 190);
    t.set(T0 + 5_999);
    assert_eq!(t.again(a, release("h")), 0); // expired at T0 + 5000
    t.set(T0 + 6_001);
    assert_eq!(t.code(a, release("h")), "NOTFOUND");
}

#[test]
fn ids_of_different_commands_do_not_collide() {
    let t = T::new(T0);
    let a = "acct";
    t.ok(a, grant("x", 100));
    assert_eq!(t.ok(a, debit("x", 10)), 10);
    assert_eq!(t.ok(a, reserve("x", 10, None)), 10);
    assert_eq!(t.bal(a), [80, 10, 10, 0, 100]);
    // Accounts are separate too.
    assert_eq!(t.ok("other", grant("x", 7)), 7);
}

// ---------------------------------------------------------------------------
// Failed commands

#[test]
fn failed_commands_leave_no_account_behind() {
    let t = T::new(T0);
    let g = "ghost";
    assert_eq!(
        t.fails(g, reserve("h", 10, None)),
        "INSUFFICIENT need 10 available 0"
    );
    assert_eq!(t.fails(g, debit("d", 1)), "INSUFFICIENT need 1 available 0");
    assert_eq!(t.code(g, commit("h", None)), "NOTFOUND");
    assert_eq!(t.code(g, release("h")), "NOTFOUND");
    assert_eq!(t.code(g, capture("h", 1)), "NOTFOUND");
    assert_eq!(t.code(g, extend("h", 1)), "NOTFOUND");
    assert_eq!(t.code(g, reserve_sku("h", "image/nope", 1)), "NOTFOUND");
    assert_eq!(t.code(g, subscribe("nope", None, None)), "NOTFOUND");
    assert_eq!(t.code(g, subscribe("pro", None, Some(T0 + 1))), "ERR");
    assert_eq!(t.code(g, subscribe("pro", Some(0), None)), "ERR");
    assert_eq!(t.code(g, Mutation::Seats { seats: 2 }), "ERR");
    assert_eq!(t.code(g, Mutation::Addon { units: 2 }), "ERR");
    assert_eq!(
        t.code(g, grant_with("g", 1, BucketKind::Promo, Expiry::At(T0), 50)),
        "ERR"
    );
    assert_eq!(
        t.code(g, grant_with("g", 1, BucketKind::Promo, Expiry::Never, 101)),
        "ERR"
    );
    assert_eq!(t.code(g, grant("g", 1_000_000_000_000_001)), "ERR");
    assert_eq!(t.code(g, reserve("h", 1, Some(0))), "ERR");
    assert_eq!(t.code(g, reserve("h", 1, Some(86_400_001))), "ERR");
    assert_eq!(t.code("", grant("g", 1)), "ERR");
    // UNSUBSCRIBE without a plan is a no-op.
    assert_eq!(t.again(g, Mutation::Unsubscribe), 0);
    assert_eq!(t.engine.stats().accounts, 0);
    assert_eq!(t.bal(g), [0; 5]);
    assert_eq!(t.view(g), AccountView::default());
    assert!(t.hist(g, 100).is_empty());
    assert!(t.journal.records().is_empty());
}

#[test]
fn a_failed_command_is_evaluated_afresh_on_retry() {
    let t = T::new(T0);
    let a = "acct";
    t.ok(a, grant("g", 5));
    assert_eq!(
        t.fails(a, debit("d", 10)),
        "INSUFFICIENT need 10 available 5"
    );
    assert_eq!(
        t.fails(a, reserve("h", 10, None)),
        "INSUFFICIENT need 10 available 5"
    );
    assert_eq!(t.ops(a), ["grant"]);
    t.ok(a, grant("g2", 5));
    assert_eq!(t.ok(a, debit("d", 10)), 10);
    assert_eq!(t.ok(a, grant("g3", 10)), 10);
    assert_eq!(t.ok(a, reserve("h", 10, None)), 10);
    assert_eq!(t.engine.stats().accounts, 1);
}

// ---------------------------------------------------------------------------
// HISTORY

#[test]
fn history_is_newest_first_with_ops_ids_amounts_and_instants() {
    let t = T::new(T0);
    let a = "acct";
    t.ok(
        a,
        grant_with("g1", 100, BucketKind::Promo, Expiry::Ttl(60_000), 50),
    );
    t.set(T0 + 10);
    t.ok(a, reserve("h1", 30, Some(1_000)));
    t.set(T0 + 20);
    t.ok(a, capture("h1", 10));
    t.set(T0 + 30);
    t.ok(a, commit("h1", Some(20)));
    t.set(T0 + 40);
    t.ok(a, reserve("h2", 5, Some(100)));
    t.set(T0 + 50);
    t.ok(a, release("h2"));
    t.set(T0 + 60);
    t.ok(a, debit("d1", 7));
    t.set(T0 + 70);
    t.ok(a, reserve("h3", 4, Some(30)));
    t.set(T0 + 60_000);
    let h = t.hist(a, 100);
    let want: Vec<(u64, &str, String, u64)> = vec![
        (T0 + 60_000, "expire_credits", "g1".into(), 73),
        (T0 + 100, "expire_hold", "h3".into(), 4),
        (T0 + 70, "reserve", "h3".into(), 4),
        (T0 + 60, "debit", "d1".into(), 7),
        (T0 + 50, "release", "h2".into(), 5),
        (T0 + 40, "reserve", "h2".into(), 5),
        (T0 + 30, "commit", "h1".into(), 20),
        (T0 + 20, "capture", "h1".into(), 10),
        (T0 + 10, "reserve", "h1".into(), 30),
        (T0, "grant", "g1".into(), 100),
    ];
    assert_eq!(h, want);
    let seqs: Vec<u64> = t
        .engine
        .history(a.as_bytes(), 100)
        .iter()
        .map(|e| e.seq)
        .collect();
    assert_eq!(seqs, (1..=10).rev().collect::<Vec<_>>());
    assert_eq!(t.hist(a, 3), want[..3]);
    assert_eq!(t.bal(a), [0, 0, 27, 73, 100]);
    // The expiries were recorded when they happened, not when observed.
    assert!(t.hist("nobody", 10).is_empty());
}

// ---------------------------------------------------------------------------
// Plans (builtin config)

#[test]
fn subscribe_grants_credits_per_seat_times_seats_until_cycle_end() {
    let t = T::new(JAN31);
    let a = "ws";
    assert_eq!(t.ok(a, subscribe("pro", Some(3), None)), 1_500);
    let v = t.view(a);
    assert_eq!(v.plan.as_deref(), Some(&b"pro"[..]));
    assert_eq!(
        (v.seats, v.cycle_start_ms, v.cycle_end_ms),
        (3, JAN31, FEB28)
    );
    let b = t.buckets(a);
    assert_eq!(b.len(), 1);
    assert_eq!(
        (b[0].1, b[0].2, b[0].3, b[0].4),
        ("subscription", 1_500, FEB28, 50)
    );
    assert_eq!(t.hist(a, 10), [(JAN31, "subscribe", "pro".into(), 1_500)]);
    // SUBSCRIBE to the plan it has: only seats.
    assert_eq!(t.again(a, subscribe("pro", None, None)), 1_500);
    assert_eq!(t.ok(a, subscribe("pro", Some(4), None)), 2_000);
    assert_eq!(t.view(a).seats, 4);
    assert_eq!(t.code(a, subscribe("nope", None, None)), "NOTFOUND");
}

#[test]
fn cycles_renew_on_time_and_nothing_rolls_over() {
    let t = T::new(JAN31);
    let a = "ws";
    t.ok(a, subscribe("pro", Some(3), None));
    t.set(JAN31 + 1_000);
    t.ok(a, debit("d", 200));
    t.set(FEB28 - 1);
    assert_eq!(t.bal(a), [1_300, 0, 200, 0, 1_500]);
    assert_eq!(t.view(a).cycle_end_ms, FEB28);
    t.set(FEB28);
    assert_eq!(t.bal(a), [1_500, 0, 200, 1_300, 3_000]);
    t.set(FEB28 + 5 * DAY);
    let v = t.view(a);
    assert_eq!((v.cycle_start_ms, v.cycle_end_ms), (FEB28, MAR31));
    assert_eq!(t.buckets(a)[0].3, MAR31);
    let h = t.hist(a, 2);
    assert_eq!(h[0], (FEB28, "renew", "pro".into(), 1_500));
    assert_eq!((h[1].0, h[1].1, h[1].3), (FEB28, "expire_credits", 1_300));
    assert_eq!(t.engine.stats().renewals, 1);
}

#[test]
fn a_hold_keeps_old_cycle_credits_across_a_renewal() {
    let t = T::new(JAN31);
    let a = "ws";
    t.ok(a, subscribe("pro", None, None));
    t.set(FEB28 - 3_600_000);
    t.ok(a, reserve("h", 100, Some(DAY)));
    t.set(FEB28);
    // The old allowance's free 400 expire; the held 100 stay with the hold.
    assert_eq!(t.bal(a), [500, 100, 0, 400, 1_000]);
    t.set(FEB28 + 3_600_000);
    assert_eq!(t.ok(a, commit("h", Some(60))), 60);
    assert_eq!(t.bal(a), [500, 0, 60, 440, 1_000]);
    assert_eq!(t.buckets(a)[0].2, 500, "the new allowance is untouched");
}

#[test]
fn a_dormant_account_sees_every_missed_renewal_at_its_instant() {
    let t = T::new(JAN31);
    let a = "ws";
    t.ok(a, subscribe("pro", None, None));
    t.set(APR30 + DAY);
    let h = t.hist(a, 100);
    let got: Vec<(u64, &str, u64)> = h.iter().map(|e| (e.0, e.1, e.3)).collect();
    assert_eq!(
        got,
        [
            (APR30, "renew", 500),
            (APR30, "expire_credits", 500),
            (MAR31, "renew", 500),
            (MAR31, "expire_credits", 500),
            (FEB28, "renew", 500),
            (FEB28, "expire_credits", 500),
            (JAN31, "subscribe", 500),
        ]
    );
    let v = t.view(a);
    assert_eq!((v.cycle_start_ms, v.cycle_end_ms), (APR30, MAY31));
    assert_eq!(t.bal(a), [500, 0, 0, 1_500, 2_000]);
}

#[test]
fn the_sweeper_renews_and_expires_idle_accounts() {
    let t = T::new(JAN31);
    t.ok("ws1", subscribe("pro", None, None));
    t.ok("ws2", subscribe("team", Some(2), None));
    t.ok("ws3", grant("g", 10));
    t.ok("ws3", reserve("h", 10, Some(1_000)));
    t.set(APR30 + DAY);
    while t.engine.sweep(1) > 0 {}
    let s = t.engine.stats();
    assert_eq!((s.renewals, s.hold_expiries, s.open_holds), (6, 1, 0));
    assert_eq!(s.bucket_expiries, 6);
    assert_eq!(t.bal("ws2"), [300, 0, 0, 900, 1_200]);
}

#[test]
fn anchor_jan_31_gives_feb_28_then_mar_31() {
    let t = T::new(MAR15);
    let a = "ws";
    // An anchor in the past: the cycle that contains now.
    assert_eq!(t.ok(a, subscribe("pro", None, Some(JAN31))), 500);
    let v = t.view(a);
    assert_eq!((v.cycle_start_ms, v.cycle_end_ms), (FEB28, MAR31));
    t.set(MAR31);
    let v = t.view(a);
    assert_eq!((v.cycle_start_ms, v.cycle_end_ms), (MAR31, APR30));
    assert_eq!(t.hist(a, 1), [(MAR31, "renew", "pro".into(), 500)]);
    // An anchor in the future is an error.
    assert_eq!(
        t.code("ws2", subscribe("pro", None, Some(MAR31 + 1))),
        "ERR"
    );
}

#[test]
fn seats_up_grant_at_once_and_down_at_the_next_cycle() {
    let t = T::new(JAN31);
    let a = "ws";
    assert_eq!(t.ok(a, subscribe("pro", Some(2), None)), 1_000);
    assert_eq!(t.ok(a, Mutation::Seats { seats: 5 }), 2_500);
    assert_eq!(t.view(a).seats, 5);
    // One subscription bucket for the cycle.
    assert_eq!(t.buckets(a).len(), 1);
    assert_eq!(t.buckets(a)[0].2, 2_500);
    assert_eq!(t.ok(a, Mutation::Seats { seats: 3 }), 2_500);
    assert_eq!(t.view(a).seats, 5, "paid for 5 this cycle");
    // Back up to 4 this cycle: already paid for.
    assert_eq!(t.ok(a, Mutation::Seats { seats: 4 }), 2_500);
    let h = t.hist(a, 3);
    assert_eq!((h[0].1, h[0].3), ("seats", 0));
    assert_eq!((h[2].1, h[2].3), ("seats", 1_500));
    t.set(FEB28);
    assert_eq!(t.view(a).seats, 4);
    assert_eq!(t.bal(a), [2_000, 0, 0, 2_500, 4_500]);
    assert_eq!(t.code(a, Mutation::Seats { seats: 0 }), "ERR");
}

#[test]
fn addon_units_raise_at_once_and_cancel_from_the_next_cycle() {
    let t = T::new(JAN31);
    let a = "ws";
    t.ok(a, subscribe("pro", None, None));
    assert_eq!(t.ok(a, Mutation::Addon { units: 2 }), 620);
    let b = t.buckets(a);
    assert_eq!((b[1].1, b[1].2, b[1].3, b[1].4), ("addon", 120, FEB28, 50));
    assert_eq!(t.ok(a, Mutation::Addon { units: 3 }), 680);
    assert_eq!(t.ok(a, Mutation::Addon { units: 1 }), 680);
    // Renewal: the units in force for the next cycle.
    t.set(FEB28);
    assert_eq!(t.bal(a), [560, 0, 0, 680, 1_240]);
    assert_eq!(t.hist(a, 1), [(FEB28, "addon", "pro".into(), 60)]);
    // Cancel: credits granted stay until the cycle ends.
    assert_eq!(t.ok(a, Mutation::Addon { units: 0 }), 560);
    t.set(MAR31 - 1);
    assert_eq!(t.bal(a)[0], 560);
    t.set(MAR31);
    assert_eq!(t.bal(a)[0], 500);
    assert_eq!(t.buckets(a).len(), 1);
    // Plans without add-ons refuse them.
    t.ok("free", subscribe("free", None, None));
    assert_eq!(t.code("free", Mutation::Addon { units: 1 }), "ERR");
}

#[test]
fn upgrade_without_rollover_expires_the_old_allowance() {
    let t = T::new(JAN31);
    let a = "ws";
    t.ok(a, subscribe("pro", None, None));
    t.ok(a, grant("pack", 100));
    // Subscription credits expire before never-expiring prepaid: spent first.
    t.ok(a, debit("d", 100));
    t.set(FEB10);
    assert_eq!(t.ok(a, subscribe("business", None, None)), 1_100);
    let v = t.view(a);
    assert_eq!(v.plan.as_deref(), Some(&b"business"[..]));
    assert_eq!((v.cycle_start_ms, v.cycle_end_ms), (FEB10, MAR10));
    assert_eq!(t.bal(a), [1_100, 0, 100, 400, 1_600]);
    let h = t.hist(a, 2);
    assert_eq!(h[0], (FEB10, "subscribe", "business".into(), 1_000));
    assert_eq!((h[1].1, h[1].3), ("expire_credits", 400));
    t.set(MAR10);
    assert_eq!(t.hist(a, 1)[0], (MAR10, "renew", "business".into(), 1_000));
}

#[test]
fn upgrade_with_rollover_keeps_the_leftover_for_the_first_new_cycle() {
    let t = T::new(JAN31);
    let a = "ws";
    t.ok(a, subscribe("pro", None, None));
    t.ok(a, debit("d", 100));
    t.set(FEB10 - 1_000);
    t.ok(a, reserve("h", 50, Some(DAY)));
    t.set(FEB10);
    assert_eq!(t.ok(a, subscribe("ultra", None, None)), 5_350);
    let b = t.buckets(a);
    assert_eq!(b.len(), 2);
    assert_eq!((b[0].1, b[0].2, b[0].3), ("rollover", 350, MAR10));
    assert_eq!((b[1].1, b[1].2, b[1].3), ("subscription", 5_000, MAR10));
    assert_eq!(t.bal(a), [5_350, 50, 100, 0, 5_500]);
    // The held credits came from the old allowance, which ended at the upgrade.
    assert_eq!(t.ok(a, release("h")), 0);
    assert_eq!(t.bal(a), [5_350, 0, 100, 50, 5_500]);
    t.set(MAR10);
    assert_eq!(t.bal(a), [5_000, 0, 100, 5_400, 10_500]);
}

#[test]
fn unsubscribe_stops_renewals_and_keeps_granted_credits_until_they_expire() {
    let t = T::new(JAN31);
    let a = "ws";
    t.ok(a, subscribe("pro", None, None));
    t.ok(a, grant("pack", 100));
    assert_eq!(t.ok(a, Mutation::Unsubscribe), 0);
    let v = t.view(a);
    assert_eq!(
        (v.plan.clone(), v.seats, v.cycle_start_ms, v.cycle_end_ms),
        (None, 0, 0, 0)
    );
    assert_eq!(t.bal(a), [600, 0, 0, 0, 600]);
    t.set(MAR31 + DAY);
    assert_eq!(t.bal(a), [100, 0, 0, 500, 600]);
    assert_eq!(
        t.ops(a),
        ["expire_credits", "unsubscribe", "grant", "subscribe"]
    );
    assert_eq!(t.code(a, Mutation::Seats { seats: 2 }), "ERR");
    assert_eq!(t.again(a, Mutation::Unsubscribe), 0);
}

#[test]
fn skus_outside_the_plans_features_are_not_entitled() {
    let t = T::new(JAN31);
    let a = "free";
    t.ok(a, subscribe("free", None, None));
    assert_eq!(
        t.code(a, reserve_sku("h", "video/kling-1.6/720", 1)),
        "NOTENTITLED"
    );
    assert_eq!(
        t.code(a, debit_sku("d", "voiceover/standard", 1)),
        "NOTENTITLED"
    );
    assert_eq!(t.code(a, debit_sku("d", "video/clip", 1)), "NOTENTITLED");
    assert_eq!(t.ok(a, reserve_sku("h", "image/flux-2", 1)), 50);
    assert_eq!(t.ok(a, debit_sku("d", "tool/summarizer", 2)), 6);

    let v = "voice";
    t.ok(v, subscribe("voiceover-starter", None, None));
    assert_eq!(t.code(v, debit_sku("d", "image/flux-2", 1)), "NOTENTITLED");
    assert_eq!(t.ok(v, debit_sku("d", "voiceover/premium", 10)), 50);

    // Without a plan every sku is allowed.
    let p = "prepaid";
    t.ok(p, grant("g", 1_000));
    assert_eq!(t.ok(p, debit_sku("d", "video/kling-1.6/720", 2)), 120);
}

#[test]
fn an_annual_plan_grants_the_year_upfront() {
    let t = T::new(JAN31);
    let a = "ws";
    assert_eq!(t.ok(a, subscribe("pro-annual", Some(2), None)), 12_000);
    let v = t.view(a);
    assert_eq!((v.cycle_start_ms, v.cycle_end_ms), (JAN31, JAN31_2027));
    assert_eq!(t.buckets(a)[0].3, JAN31_2027);
    assert_eq!(t.ok(a, Mutation::Addon { units: 1 }), 12_720);
    t.set(JAN31_2027 - 1);
    assert_eq!(t.bal(a)[0], 12_720);
    t.set(JAN31_2027);
    assert_eq!(t.bal(a), [12_720, 0, 0, 12_720, 25_440]);
}

// ---------------------------------------------------------------------------
// Pricing

#[test]
fn quote_applies_the_batch_discount_and_rounds_up() {
    let t = T::new(T0);
    let e = &t.engine;
    assert_eq!(e.quote("image/flux-2-pro", 1), Ok(80));
    assert_eq!(e.quote("image/flux-2-pro", 3), Ok(240));
    assert_eq!(e.quote("image/flux-2-pro", 4), Ok(288));
    assert_eq!(e.quote("image/z-image-turbo/1k", 15), Ok(135));
    assert_eq!(e.quote("image/z-image-turbo/1k", 16), Ok(128));
    assert_eq!(e.quote("image/basic", 1_000), Ok(0));
    assert_eq!(e.quote("nope", 1).unwrap_err().code.as_str(), "NOTFOUND");

    let config = Config::parse(
        r#"
[skus."odd"]
unit = "image"
credits = 7
batch = [ { min_qty = 2, discount_pct = 10 } ]

[skus."thirds"]
unit = "use"
credits = 10
batch = [ { min_qty = 2, discount_pct = 33 } ]
"#,
        "t.toml",
    )
    .unwrap();
    let t = T::with_config(config, T0);
    assert_eq!(t.engine.quote("odd", 1), Ok(7));
    assert_eq!(t.engine.quote("odd", 3), Ok(19)); // 18.9
    assert_eq!(t.engine.quote("thirds", 3), Ok(21)); // 20.1
    assert_eq!(t.engine.quote("thirds", 10), Ok(67)); // exact
                                                      // RESERVE, CAPTURE and COMMIT with QTY use the same price.
    let a = "acct";
    t.ok(a, grant("g", 100));
    assert_eq!(t.ok(a, reserve_sku("h", "odd", 3)), 19);
    assert_eq!(t.ok(a, capture_qty("h", 1)), 7);
    assert_eq!(t.ok(a, commit_qty("h", 2)), 13); // 12.6
    assert_eq!(t.bal(a), [87, 0, 13, 0, 100]);
    assert_eq!(t.again(a, commit_qty("h", 2)), 13);
    assert_eq!(t.code(a, commit("h", Some(13))), "CONFLICT");
    // QTY on a hold made with an amount is refused.
    t.ok(a, reserve("h2", 5, None));
    assert_eq!(t.code(a, commit_qty("h2", 1)), "ERR");
}

#[test]
fn a_hold_keeps_its_price_across_config_reload() {
    let t = T::new(T0);
    let a = "acct";
    t.ok(a, grant("g", 1_000));
    assert_eq!(t.ok(a, reserve_sku("h", "image/flux-2", 2)), 100);
    let mut text = creditd_engine::config::BUILTIN_TOML.replace(
        "[skus.\"image/flux-2\"]\nunit = \"image\"\ncredits = 50",
        "[skus.\"image/flux-2\"]\nunit = \"image\"\ncredits = 70",
    );
    assert_ne!(text, creditd_engine::config::BUILTIN_TOML);
    text.push('\n');
    // The example is a whole config file: the engine reads its part of it.
    let top: toml::Table = text.parse().unwrap();
    t.engine
        .set_config(Config::from_table(&top, "reload.toml").unwrap());
    assert_eq!(t.engine.quote("image/flux-2", 3), Ok(210));
    assert_eq!(t.ok(a, commit_qty("h", 3)), 150);
    assert_eq!(t.ok(a, debit_sku("d", "image/flux-2", 1)), 70);
    assert_eq!(t.bal(a), [780, 0, 220, 0, 1_000]);
}

// ---------------------------------------------------------------------------
// The sweeper

#[test]
fn the_sweeper_expires_holds_on_idle_accounts() {
    let t = T::new(T0);
    for a in ["a1", "a2", "a3"] {
        t.ok(a, grant("g", 100));
        t.ok(a, reserve("h", 10, Some(1_000)));
    }
    assert_eq!(t.engine.stats().open_holds, 3);
    t.set(T0 + 999);
    t.engine.sweep(100);
    assert_eq!(t.engine.stats().open_holds, 3);
    t.set(T0 + 1_000);
    assert_eq!(t.engine.sweep(1), 1);
    assert_eq!(t.engine.stats().open_holds, 2);
    t.engine.sweep(100);
    let s = t.engine.stats();
    assert_eq!((s.open_holds, s.hold_expiries), (0, 3));
    assert_eq!(
        t.hist("a2", 1),
        [(T0 + 1_000, "expire_hold", "h".into(), 10)]
    );
}

/// Regression: an account whose next event moved later (here: an expired
/// hold) and then earlier again (a new hold) stayed queued only under its
/// old, stale instant, which the sweeper dropped (engine fix in engine.rs).
#[test]
fn sweeper_keeps_accounts_whose_due_moved() {
    let t = T::new(T0);
    let a = "acct";
    t.ok(a, grant("g", 100));
    t.ok(a, reserve("h1", 10, Some(1_000)));
    t.set(T0 + 2_000);
    t.ok(a, reserve("h2", 10, Some(5_000))); // h1 expires first
    t.engine.sweep(100); // finds the stale T0 + 1000 entry
    assert_eq!(t.engine.stats().open_holds, 1);
    t.set(T0 + 7_000);
    t.engine.sweep(100);
    let s = t.engine.stats();
    assert_eq!((s.open_holds, s.hold_expiries), (0, 2));
}

// ---------------------------------------------------------------------------
// Persistence back-pressure

/// A journal that can be told it is full.
#[derive(Default)]
struct FullJournal {
    full: std::sync::atomic::AtomicBool,
    inner: MemoryJournal,
}

impl creditd_engine::JournalSink for FullJournal {
    fn has_capacity(&self) -> bool {
        !self.full.load(std::sync::atomic::Ordering::Relaxed)
    }
    fn append(&self, write: &mut dyn FnMut(&mut Vec<u8>)) -> u64 {
        self.inner.append(write)
    }
}

#[test]
fn busy_applies_nothing() {
    let clock = Arc::new(TestClock::new(T0));
    let journal = Arc::new(FullJournal::default());
    let engine = Engine::new(Config::builtin(), clock as Arc<dyn Clock>, journal.clone());
    journal
        .full
        .store(true, std::sync::atomic::Ordering::Relaxed);
    let e = engine.execute(b"acct", &grant("g", 10)).unwrap_err();
    assert_eq!(e.code.as_str(), "BUSY");
    assert_eq!(engine.stats().accounts, 0);
    journal
        .full
        .store(false, std::sync::atomic::Ordering::Relaxed);
    // Nothing was remembered: the retry is applied.
    let o = engine.execute(b"acct", &grant("g", 10)).unwrap();
    assert_eq!((o.reply, o.changed, o.wait_seq), (10, true, 1));
    let o = engine.execute(b"acct", &grant("g", 10)).unwrap();
    assert_eq!((o.reply, o.changed, o.wait_seq), (10, false, 1));
}

#[test]
fn renewals_stop_at_the_account_bound_instead_of_wrapping() {
    const E15: u64 = 1_000_000_000_000_000;
    let config = Config::parse(
        "[plans.huge]\nperiod = \"month\"\ncredits_per_seat = 1000000000000000\n",
        "bound.toml",
    )
    .unwrap();
    let t = T::with_config(config, JAN31);
    let a = "ws";
    // 998 x 10^15 granted and spent: the account is 2 x 10^15 from the bound.
    for i in 0..998 {
        let (g, d) = (format!("g{i}"), format!("d{i}"));
        t.ok(a, grant(&g, E15));
        t.ok(a, debit(&d, E15));
    }
    t.ok(a, subscribe("huge", None, None));
    assert_eq!(t.bal(a)[4], 999 * E15);
    // The next renewal reaches the bound exactly; those after grant nothing.
    for months in 1..=3 {
        t.advance(32 * 86_400_000);
        let [available, held, spent, expired, granted] = t.bal(a);
        assert_eq!(available + held + spent + expired, granted);
        assert_eq!(granted, 1_000 * E15, "after {months} renewals");
    }
}
