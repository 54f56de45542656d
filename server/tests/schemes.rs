//! Complete credit schemes of real AI generation platforms, end to end over
//! TCP against the real binary: plans, seats, add-ons, upgrades, top-ups,
//! the rate card, renewals and expiries on time.
//!
//! Every expected number is worked out by hand in the comments. BALANCE is
//! shown as `[available, held, spent, expired, granted]` and checked (with
//! conservation, `granted = available + held + spent + expired`) after every
//! step. Times are fixed UTC dates set with the test clock (`--test-clock`);
//! they are all after 2027-01-01 because the clock starts at wall time and
//! never goes backwards.

mod common;

use common::*;
use redis::Value;

// ---------------------------------------------------------------------------
// Helpers

/// Unix milliseconds of a UTC date and time (proleptic Gregorian calendar).
fn ms(y: i64, mo: i64, d: i64, h: i64, mi: i64) -> i64 {
    // Days from civil (H. Hinnant), March-based years.
    let y = if mo <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (mo + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    days * 86_400_000 + h * 3_600_000 + mi * 60_000
}

const DAY: i64 = 86_400_000;

/// Starts creditd with the test clock at `at` (and the built-in config).
fn start_at(at: i64) -> (Creditd, redis::Connection) {
    let srv = Creditd::start(&["--test-clock"]);
    let mut c = srv.client();
    clock_set(&mut c, at);
    (srv, c)
}

/// The built-in config plus `extra` TOML, written to a temp file.
fn config_file(extra: &str) -> std::path::PathBuf {
    let dir = temp_dir("cfg");
    let path = dir.join("creditd.toml");
    write_config(&path, extra);
    path
}

fn write_config(path: &std::path::Path, extra: &str) {
    let text = format!(
        "{}\n{}",
        include_str!("../../docs/examples/creditd.toml"),
        extra
    );
    std::fs::write(path, text).expect("write config");
}

/// Starts creditd with the test clock at `at` and the given config file.
fn start_with_config(path: &std::path::Path, at: i64) -> (Creditd, redis::Connection) {
    let srv = Creditd::start(&["--test-clock", "--config", path.to_str().unwrap()]);
    let mut c = srv.client();
    clock_set(&mut c, at);
    (srv, c)
}

/// Runs a command written as one line (words split on spaces) and expects an integer.
#[track_caller]
fn run(c: &mut redis::Connection, line: &str) -> i64 {
    let args: Vec<&str> = line.split_whitespace().collect();
    int(c, &args)
}

/// Runs a command written as one line and expects an error; returns its text.
#[track_caller]
fn fail(c: &mut redis::Connection, line: &str) -> String {
    let args: Vec<&str> = line.split_whitespace().collect();
    err(c, &args)
}

fn clock_set(c: &mut redis::Connection, at: i64) {
    assert_eq!(int(c, &["CLOCK", "SET", &at.to_string()]), at);
}

/// Checks BALANCE against `[available, held, spent, expired, granted]`, and conservation.
#[track_caller]
fn check(c: &mut redis::Connection, account: &str, expected: [i64; 5]) {
    let b = balance(c, account);
    assert_eq!(
        b, expected,
        "{account}: [available, held, spent, expired, granted]"
    );
    assert_conserved(b);
}

fn num(v: &Value) -> i64 {
    match v {
        Value::Int(n) => *n,
        other => panic!("expected an integer, got {other:?}"),
    }
}

/// A *fields* value (flat array in RESP2, map in RESP3) as pairs.
fn pairs(v: &Value) -> Vec<(String, Value)> {
    match v {
        Value::Array(items) => items
            .chunks(2)
            .map(|kv| (as_string(&kv[0]), kv[1].clone()))
            .collect(),
        Value::Map(kv) => kv.iter().map(|(k, v)| (as_string(k), v.clone())).collect(),
        other => panic!("expected fields, got {other:?}"),
    }
}

fn get<'a>(fields: &'a [(String, Value)], key: &str) -> &'a Value {
    fields
        .iter()
        .find(|(k, _)| k == key)
        .map(|(_, v)| v)
        .unwrap_or_else(|| panic!("field {key} missing in {fields:?}"))
}

/// One bucket as ACCOUNT shows it: (id, kind, remaining, expires_at, priority).
type B = (String, String, i64, i64, i64);

/// A bucket with the default priority 50.
fn b(id: &str, kind: &str, remaining: i64, expires_at: i64) -> B {
    (id.to_string(), kind.to_string(), remaining, expires_at, 50)
}

/// ACCOUNT, decoded.
#[derive(Debug, PartialEq)]
struct Acct {
    plan: String,
    seats: i64,
    cycle_start: i64,
    cycle_end: i64,
    buckets: Vec<B>,
    /// (id, amount, captured, expires_at)
    holds: Vec<(String, i64, i64, i64)>,
}

fn account(c: &mut redis::Connection, account: &str) -> Acct {
    let f = fields(c, &["ACCOUNT", account]);
    let list = |key: &str| match get(&f, key) {
        Value::Array(items) => items.iter().map(pairs).collect::<Vec<_>>(),
        other => panic!("{key}: expected an array, got {other:?}"),
    };
    Acct {
        plan: as_string(get(&f, "plan")),
        seats: num(get(&f, "seats")),
        cycle_start: num(get(&f, "cycle_start")),
        cycle_end: num(get(&f, "cycle_end")),
        buckets: list("buckets")
            .iter()
            .map(|p| {
                (
                    as_string(get(p, "id")),
                    as_string(get(p, "kind")),
                    num(get(p, "remaining")),
                    num(get(p, "expires_at")),
                    num(get(p, "priority")),
                )
            })
            .collect(),
        holds: list("holds")
            .iter()
            .map(|p| {
                (
                    as_string(get(p, "id")),
                    num(get(p, "amount")),
                    num(get(p, "captured")),
                    num(get(p, "expires_at")),
                )
            })
            .collect(),
    }
}

/// Plan, seats and cycle bounds.
#[track_caller]
fn check_plan(
    c: &mut redis::Connection,
    acct: &str,
    plan: &str,
    seats: i64,
    cycle_start: i64,
    cycle_end: i64,
) {
    let a = account(c, acct);
    assert_eq!(
        (a.plan.as_str(), a.seats, a.cycle_start, a.cycle_end),
        (plan, seats, cycle_start, cycle_end),
        "{acct}: (plan, seats, cycle_start, cycle_end)"
    );
}

#[track_caller]
fn check_buckets(c: &mut redis::Connection, acct: &str, expected: &[B]) {
    assert_eq!(account(c, acct).buckets, expected, "{acct}: buckets");
}

/// One HISTORY entry: (at, op, id, amount).
type H = (i64, String, String, i64);

fn h(at: i64, op: &str, id: &str, amount: i64) -> H {
    (at, op.to_string(), id.to_string(), amount)
}

/// The whole HISTORY, oldest first, with its `seq` checked to count 1, 2, 3...
fn history(c: &mut redis::Connection, account: &str) -> Vec<H> {
    let entries = match cmd(c, &["HISTORY", account, "COUNT", "1000"]) {
        Ok(Value::Array(items)) => items,
        other => panic!("HISTORY {account}: {other:?}"),
    };
    let mut out: Vec<(i64, H)> = entries
        .iter()
        .map(|e| {
            let p = pairs(e);
            (
                num(get(&p, "seq")),
                (
                    num(get(&p, "at")),
                    as_string(get(&p, "op")),
                    as_string(get(&p, "id")),
                    num(get(&p, "amount")),
                ),
            )
        })
        .collect();
    out.reverse();
    for (i, (seq, _)) in out.iter().enumerate() {
        assert_eq!(*seq, i as i64 + 1, "HISTORY seq counts up from 1");
    }
    out.into_iter().map(|(_, e)| e).collect()
}

#[track_caller]
fn check_history(c: &mut redis::Connection, acct: &str, expected: &[H]) {
    assert_eq!(history(c, acct), expected, "{acct}: history, oldest first");
}

#[test]
fn the_date_helper_is_right() {
    // Checked against Python: datetime(2027, 1, 31, 10, tzinfo=timezone.utc).timestamp().
    assert_eq!(ms(2027, 1, 31, 10, 0), 1_801_389_600_000);
    assert_eq!(ms(2027, 3, 1, 0, 0), 1_803_859_200_000);
    assert_eq!(ms(2028, 3, 1, 0, 0), 1_835_481_600_000);
    assert_eq!(ms(1970, 1, 1, 0, 0), 0);
}

// ---------------------------------------------------------------------------
// 1. Pikto: per-seat pooled monthly credits plus non-expiring prepaid packs.

#[test]
fn pikto_pooled_seats_and_prepaid_packs() {
    // Pro: 500 credits per member per month, pooled across the workspace;
    // packs (Starter 2000, Booster 5500) never expire and outlive the plan.
    let t0 = ms(2027, 3, 15, 9, 0);
    let e1 = ms(2027, 4, 15, 9, 0); // cycles renew on the subscription date
    let e2 = ms(2027, 5, 15, 9, 0);
    let e3 = ms(2027, 6, 15, 9, 0);
    let (_srv, mut c) = start_at(t0);
    let c = &mut c;
    let sub0 = format!("pro@{t0}");
    let sub1 = format!("pro@{e1}");
    let sub2 = format!("pro@{e2}");

    // 3 seats x 500 = 1500, one pool.
    assert_eq!(run(c, "SUBSCRIBE pikto pro SEATS 3"), 1500);
    check(c, "pikto", [1500, 0, 0, 0, 1500]);
    check_plan(c, "pikto", "pro", 3, t0, e1);

    // A Starter pack: 1500 + 2000 = 3500, no expiry.
    assert_eq!(run(c, "GRANT pikto pack-starter 2000"), 3500);
    check(c, "pikto", [3500, 0, 0, 0, 3500]);
    // Subscription credits (expiring) before the pack (never expiring, last).
    check_buckets(
        c,
        "pikto",
        &[
            b(&sub0, "subscription", 1500, e1),
            b("pack-starter", "prepaid", 2000, 0),
        ],
    );

    // Three members spend from the one pool, all from the subscription:
    // 10 text-to-image x 6 = 60; a summary 3; a video clip 250 (per use).
    assert_eq!(
        run(c, "DEBIT pikto alice-1 SKU image/text-to-image QTY 10"),
        60
    );
    check(c, "pikto", [3440, 0, 60, 0, 3500]);
    assert_eq!(run(c, "DEBIT pikto bob-1 SKU tool/summarizer QTY 1"), 3);
    check(c, "pikto", [3437, 0, 63, 0, 3500]);
    assert_eq!(run(c, "RESERVE pikto carol-1 SKU video/clip QTY 1"), 250);
    check(c, "pikto", [3187, 250, 63, 0, 3500]);
    assert_eq!(run(c, "COMMIT pikto carol-1"), 250);
    check(c, "pikto", [3187, 0, 313, 0, 3500]);
    // 1500 - 313 = 1187 left of the subscription; the pack untouched.
    check_buckets(
        c,
        "pikto",
        &[
            b(&sub0, "subscription", 1187, e1),
            b("pack-starter", "prepaid", 2000, 0),
        ],
    );

    // Live while now < cycle_end: nothing happens 1 ms before.
    clock_set(c, e1 - 1);
    check(c, "pikto", [3187, 0, 313, 0, 3500]);
    check_plan(c, "pikto", "pro", 3, t0, e1);

    // At cycle_end exactly: the 1187 left expire (no rollover), 1500 are
    // granted again; the pack survives.
    // available 1500 + 2000 = 3500; expired 1187; granted 3500 + 1500 = 5000.
    clock_set(c, e1);
    check(c, "pikto", [3500, 0, 313, 1187, 5000]);
    check_plan(c, "pikto", "pro", 3, e1, e2);
    check_buckets(
        c,
        "pikto",
        &[
            b(&sub1, "subscription", 1500, e2),
            b("pack-starter", "prepaid", 2000, 0),
        ],
    );
    check_history(
        c,
        "pikto",
        &[
            h(t0, "subscribe", "pro", 1500),
            h(t0, "grant", "pack-starter", 2000),
            h(t0, "debit", "alice-1", 60),
            h(t0, "debit", "bob-1", 3),
            h(t0, "reserve", "carol-1", 250),
            h(t0, "commit", "carol-1", 250),
            h(e1, "expire_credits", &sub0, 1187),
            h(e1, "renew", "pro", 1500),
        ],
    );

    // A job bigger than the monthly pool: 7 clips = 1750, 1500 from the
    // subscription first, then 250 from the pack.
    let t1 = e1 + DAY;
    clock_set(c, t1);
    assert_eq!(run(c, "RESERVE pikto render SKU video/clip QTY 7"), 1750);
    check(c, "pikto", [1750, 1750, 313, 1187, 5000]);
    check_buckets(c, "pikto", &[b("pack-starter", "prepaid", 1750, 0)]);
    // Only 6 clips came out: 1500, taken from what the hold took first (the
    // subscription); the pack's 250 go back to the pack.
    assert_eq!(run(c, "COMMIT pikto render QTY 6"), 1500);
    check(c, "pikto", [2000, 0, 1813, 1187, 5000]);
    check_buckets(c, "pikto", &[b("pack-starter", "prepaid", 2000, 0)]);

    // A Booster pack: never expiring too; oldest pack first.
    assert_eq!(run(c, "GRANT pikto pack-booster 5500"), 7500);
    check(c, "pikto", [7500, 0, 1813, 1187, 10500]);

    // Renewal at e2: the subscription bucket was empty, so nothing expires.
    clock_set(c, e2);
    check(c, "pikto", [9000, 0, 1813, 1187, 12000]);
    check_buckets(
        c,
        "pikto",
        &[
            b(&sub2, "subscription", 1500, e3),
            b("pack-starter", "prepaid", 2000, 0),
            b("pack-booster", "prepaid", 5500, 0),
        ],
    );
    // 100 images = 600 from the subscription.
    assert_eq!(
        run(c, "DEBIT pikto dave-1 SKU image/text-to-image QTY 100"),
        600
    );
    check(c, "pikto", [8400, 0, 2413, 1187, 12000]);

    // The workspace cancels: no more cycles, granted credits stay until e3.
    let t2 = e2 + 3 * DAY;
    clock_set(c, t2);
    assert_eq!(
        cmd(c, &["UNSUBSCRIBE", "pikto"]),
        Ok(Value::Okay),
        "UNSUBSCRIBE replies +OK"
    );
    check(c, "pikto", [8400, 0, 2413, 1187, 12000]);
    check_plan(c, "pikto", "", 0, 0, 0);
    // At e3 the last 900 subscription credits expire; there is no renewal.
    clock_set(c, e3);
    check(c, "pikto", [7500, 0, 2413, 2087, 12000]);
    clock_set(c, e3 + 90 * DAY);
    check(c, "pikto", [7500, 0, 2413, 2087, 12000]);
    check_buckets(
        c,
        "pikto",
        &[
            b("pack-starter", "prepaid", 2000, 0),
            b("pack-booster", "prepaid", 5500, 0),
        ],
    );
    check_history(
        c,
        "pikto",
        &[
            h(t0, "subscribe", "pro", 1500),
            h(t0, "grant", "pack-starter", 2000),
            h(t0, "debit", "alice-1", 60),
            h(t0, "debit", "bob-1", 3),
            h(t0, "reserve", "carol-1", 250),
            h(t0, "commit", "carol-1", 250),
            h(e1, "expire_credits", &sub0, 1187),
            h(e1, "renew", "pro", 1500),
            h(t1, "reserve", "render", 1750),
            h(t1, "commit", "render", 1500),
            h(t1, "grant", "pack-booster", 5500),
            // The empty subscription bucket left nothing to expire at e2.
            h(e2, "renew", "pro", 1500),
            h(e2, "debit", "dave-1", 600),
            h(t2, "unsubscribe", "pro", 0),
            h(e3, "expire_credits", &sub2, 900),
            // ... and no renewal at e3 or after.
        ],
    );

    // Packs are spent after the subscription ends: 3000 = Starter's 2000
    // (older) + 1000 of the Booster.
    assert_eq!(run(c, "DEBIT pikto eve-1 3000"), 3000);
    check(c, "pikto", [4500, 0, 5413, 2087, 12000]);
    check_buckets(c, "pikto", &[b("pack-booster", "prepaid", 4500, 0)]);
}

// ---------------------------------------------------------------------------
// 2. AI Studios: an annual team plan granted upfront, add-on units, per-second video.

#[test]
fn ai_studios_annual_plan_addons_and_per_second_video() {
    // team-annual: 1800 credits per seat per year, upfront; an add-on unit
    // is 2400 credits a year (12 x 200), shared by the workspace.
    let t0 = ms(2027, 2, 10, 12, 0);
    let y1 = ms(2028, 2, 10, 12, 0);
    let y2 = ms(2029, 2, 10, 12, 0);
    let (_srv, mut c) = start_at(t0);
    let c = &mut c;
    let sub0 = format!("team-annual@{t0}");
    let add0 = format!("addon:team-annual@{t0}");
    let sub1 = format!("team-annual@{y1}");
    let add1 = format!("addon:team-annual@{y1}");

    // 2 seats x 1800 = 3600 for the whole year, at once.
    assert_eq!(run(c, "SUBSCRIBE studio team-annual SEATS 2"), 3600);
    check(c, "studio", [3600, 0, 0, 0, 3600]);
    check_plan(c, "studio", "team-annual", 2, t0, y1);

    // 1 add-on unit: 2400 at once (3600 + 2400 = 6000).
    assert_eq!(run(c, "ADDON studio 1"), 6000);
    check(c, "studio", [6000, 0, 0, 0, 6000]);
    // Raised to 3 units: the 2 added units' 4800 at once (10800).
    assert_eq!(run(c, "ADDON studio 3"), 10800);
    check(c, "studio", [10800, 0, 0, 0, 10800]);
    // Same priority and expiry: the subscription (older grant) first.
    check_buckets(
        c,
        "studio",
        &[
            b(&sub0, "subscription", 3600, y1),
            b(&add0, "addon", 7200, y1),
        ],
    );

    // Per-second video: kling-1.6 at 720p costs 60 a second.
    assert_eq!(run(c, "QUOTE video/kling-1.6/720 10"), 600);
    // Reserve a 10-second clip: 600.
    assert_eq!(
        run(c, "RESERVE studio clip-1 SKU video/kling-1.6/720 QTY 10"),
        600
    );
    check(c, "studio", [10200, 600, 0, 0, 10800]);
    // Cumulative captures while it renders: 3 s = 180.
    assert_eq!(run(c, "CAPTURE studio clip-1 QTY 3"), 180);
    check(c, "studio", [10200, 420, 180, 0, 10800]);
    // A late, lower report changes nothing.
    assert_eq!(run(c, "CAPTURE studio clip-1 QTY 2"), 180);
    check(c, "studio", [10200, 420, 180, 0, 10800]);
    // 5 s = 300 in all: 120 more.
    assert_eq!(run(c, "CAPTURE studio clip-1 QTY 5"), 300);
    check(c, "studio", [10200, 300, 300, 0, 10800]);
    let a = account(c, "studio");
    assert_eq!(
        a.holds,
        [("clip-1".to_string(), 600, 300, t0 + 900_000)],
        "default hold TTL 15 minutes"
    );
    // The clip came out 7 s long: 420 in all, 120 more debited, the other
    // 180 go back to the subscription bucket (3600 - 600 + 180 = 3180).
    assert_eq!(run(c, "COMMIT studio clip-1 QTY 7"), 420);
    check(c, "studio", [10380, 0, 420, 0, 10800]);
    assert_eq!(
        run(c, "COMMIT studio clip-1 QTY 7"),
        420,
        "a retry repeats the reply"
    );
    check(c, "studio", [10380, 0, 420, 0, 10800]);
    check_buckets(
        c,
        "studio",
        &[
            b(&sub0, "subscription", 3180, y1),
            b(&add0, "addon", 7200, y1),
        ],
    );
    // The basic model is free: 0 credits, allowed.
    assert_eq!(run(c, "RESERVE studio draft-1 SKU image/basic QTY 3"), 0);
    assert_eq!(run(c, "COMMIT studio draft-1"), 0);
    check(c, "studio", [10380, 0, 420, 0, 10800]);

    // Cancel the add-on: from the next cycle; the 7200 stay until y1.
    let t1 = t0 + 40 * DAY;
    clock_set(c, t1);
    assert_eq!(run(c, "ADDON studio 0"), 10380);
    check(c, "studio", [10380, 0, 420, 0, 10800]);

    // An annual plan grants nothing monthly: a month and more later, the same.
    clock_set(c, ms(2027, 6, 10, 12, 0));
    check(c, "studio", [10380, 0, 420, 0, 10800]);
    check_plan(c, "studio", "team-annual", 2, t0, y1);
    clock_set(c, y1 - 1);
    check(c, "studio", [10380, 0, 420, 0, 10800]);

    // At y1: 3180 + 7200 = 10380 expire; 2 x 1800 = 3600 again, no add-on.
    clock_set(c, y1);
    check(c, "studio", [3600, 0, 420, 10380, 14400]);
    check_plan(c, "studio", "team-annual", 2, y1, y2);
    check_buckets(c, "studio", &[b(&sub1, "subscription", 3600, y2)]);
    check_history(
        c,
        "studio",
        &[
            h(t0, "subscribe", "team-annual", 3600),
            h(t0, "addon", "team-annual", 2400),
            h(t0, "addon", "team-annual", 4800),
            h(t0, "reserve", "clip-1", 600),
            h(t0, "capture", "clip-1", 180),
            h(t0, "capture", "clip-1", 120),
            h(t0, "commit", "clip-1", 420),
            h(t0, "reserve", "draft-1", 0),
            h(t0, "commit", "draft-1", 0),
            h(t1, "addon", "team-annual", 0),
            h(y1, "expire_credits", &sub0, 3180),
            h(y1, "expire_credits", &add0, 7200),
            h(y1, "renew", "team-annual", 3600),
        ],
    );

    // Add-ons again in the new year: 2 units, 4800 at once, renewed at y2.
    let t2 = y1 + DAY;
    clock_set(c, t2);
    assert_eq!(run(c, "ADDON studio 2"), 8400);
    check(c, "studio", [8400, 0, 420, 10380, 19200]);
    check_buckets(
        c,
        "studio",
        &[
            b(&sub1, "subscription", 3600, y2),
            b(&add1, "addon", 4800, y2),
        ],
    );
    // At y2: 3600 + 4800 expire, 3600 + 4800 granted again (the renewal
    // logs the add-on grant after the plan's).
    clock_set(c, y2);
    check(c, "studio", [8400, 0, 420, 18780, 27600]);
    let hist = history(c, "studio");
    assert_eq!(
        hist[hist.len() - 5..],
        [
            h(t2, "addon", "team-annual", 4800),
            h(y2, "expire_credits", &sub1, 3600),
            h(y2, "expire_credits", &add1, 4800),
            h(y2, "renew", "team-annual", 3600),
            h(y2, "addon", "team-annual", 4800),
        ]
    );
    // A plan without add-ons refuses ADDON.
    assert_eq!(run(c, "SUBSCRIBE biz business"), 1000);
    assert!(fail(c, "ADDON biz 1").starts_with("ERR"));
    check(c, "biz", [1000, 0, 0, 0, 1000]);
}

// ---------------------------------------------------------------------------
// 3. Picsart: model tiers, batch discounts (rounded up), monthly reset.

/// Extra rate card and plans for the Picsart and AI Pictures schemes.
const EXTRA: &str = r#"
# Picsart-like model tiers: budget, standard, premium; small batch discounts.
[skus."picsart/nano-banana-2"]
unit = "image"
credits = 1
batch = [ { min_qty = 4, discount_pct = 10 } ]

[skus."picsart/flux-2-pro"]
unit = "image"
credits = 5
batch = [ { min_qty = 4, discount_pct = 10 }, { min_qty = 10, discount_pct = 15 } ]

[skus."picsart/imagen-4-ultra"]
unit = "image"
credits = 12

[plans.picsart-pro]
period = "month"
credits_per_seat = 1000

# AI Pictures-like resolution pricing.
[skus."aipictures/512"]
unit = "image"
credits = 2

[skus."aipictures/1024"]
unit = "image"
credits = 5

[skus."aipictures/2048"]
unit = "image"
credits = 12

[plans.aipictures-pro]
period = "month"
credits_per_seat = 1000
"#;

#[test]
fn picsart_model_tiers_batch_discounts_and_reset_without_rollover() {
    let t0 = ms(2027, 5, 1, 0, 0);
    let e1 = ms(2027, 6, 1, 0, 0);
    let e2 = ms(2027, 7, 1, 0, 0);
    let cfg = config_file(EXTRA);
    let (_srv, mut c) = start_with_config(&cfg, t0);
    let c = &mut c;
    let sub0 = format!("picsart-pro@{t0}");
    let sub1 = format!("picsart-pro@{e1}");

    // Cost = ceil(credits x qty x (100 - discount) / 100).
    let quotes = [
        ("picsart/nano-banana-2", 3, 3),   // no tier below 4
        ("picsart/nano-banana-2", 4, 4),   // 3.6 -> 4
        ("picsart/nano-banana-2", 5, 5),   // 4.5 -> 5
        ("picsart/nano-banana-2", 10, 9),  // 9.0
        ("picsart/flux-2-pro", 3, 15),     // 15
        ("picsart/flux-2-pro", 4, 18),     // 20 x 0.90 = 18
        ("picsart/flux-2-pro", 7, 32),     // 35 x 0.90 = 31.5 -> 32
        ("picsart/flux-2-pro", 10, 43),    // 50 x 0.85 = 42.5 -> 43 (highest tier)
        ("picsart/imagen-4-ultra", 2, 24), // premium, no discount
        ("picsart/flux-2-pro", 0, 0),
    ];
    for (sku, qty, cost) in quotes {
        assert_eq!(
            int(c, &["QUOTE", sku, &qty.to_string()]),
            cost,
            "QUOTE {sku} {qty}"
        );
    }
    assert!(fail(c, "QUOTE picsart/nope 1").starts_with("NOTFOUND"));

    // Pro: 1000 credits a month from the sign-up date.
    assert_eq!(run(c, "SUBSCRIBE ps picsart-pro"), 1000);
    check(c, "ps", [1000, 0, 0, 0, 1000]);
    check_plan(c, "ps", "picsart-pro", 1, t0, e1);

    // 7 flux images at once: 32.
    assert_eq!(run(c, "DEBIT ps d1 SKU picsart/flux-2-pro QTY 7"), 32);
    check(c, "ps", [968, 0, 32, 0, 1000]);
    // Reserve 10 (43); only 4 came out: 18 (the 4-image tier), 25 back.
    assert_eq!(run(c, "RESERVE ps h1 SKU picsart/flux-2-pro QTY 10"), 43);
    check(c, "ps", [925, 43, 32, 0, 1000]);
    assert_eq!(run(c, "COMMIT ps h1 QTY 4"), 18);
    check(c, "ps", [950, 0, 50, 0, 1000]);
    // 5 budget drafts, committed whole: 5.
    assert_eq!(run(c, "RESERVE ps h2 SKU picsart/nano-banana-2 QTY 5"), 5);
    assert_eq!(run(c, "COMMIT ps h2"), 5);
    check(c, "ps", [945, 0, 55, 0, 1000]);
    // 2 premium finals: 24.
    assert_eq!(run(c, "DEBIT ps d2 SKU picsart/imagen-4-ultra QTY 2"), 24);
    check(c, "ps", [921, 0, 79, 0, 1000]);
    // A retried debit (same id, same arguments) is not applied twice;
    // other arguments under the same id are a conflict.
    assert_eq!(run(c, "DEBIT ps d2 SKU picsart/imagen-4-ultra QTY 2"), 24);
    assert!(fail(c, "DEBIT ps d2 SKU picsart/imagen-4-ultra QTY 3").starts_with("CONFLICT"));
    check(c, "ps", [921, 0, 79, 0, 1000]);
    // Up to 600 used in the month (521 more).
    assert_eq!(run(c, "DEBIT ps d3 521"), 521);
    check(c, "ps", [400, 0, 600, 0, 1000]);

    // Ten minutes before the reset a job starts: 4 flux images, 18 held,
    // from this cycle's credits (382 left free).
    let t1 = e1 - 600_000;
    clock_set(c, t1);
    assert_eq!(
        run(
            c,
            "RESERVE ps late SKU picsart/flux-2-pro QTY 4 TTL 3600000"
        ),
        18
    );
    check(c, "ps", [382, 18, 600, 0, 1000]);

    // The reset: the 382 left disappear, 1000 fresh; the hold keeps its 18.
    clock_set(c, e1);
    check(c, "ps", [1000, 18, 600, 382, 2000]);
    check_plan(c, "ps", "picsart-pro", 1, e1, e2);
    check_buckets(c, "ps", &[b(&sub1, "subscription", 1000, e2)]);
    // The job made 3 images: 15 spent from the held old credits; the other
    // 3 belonged to a bucket that has expired, so they expire now.
    let t2 = e1 + 60_000;
    clock_set(c, t2);
    assert_eq!(run(c, "COMMIT ps late QTY 3"), 15);
    check(c, "ps", [1000, 0, 615, 385, 2000]);
    check_buckets(c, "ps", &[b(&sub1, "subscription", 1000, e2)]);
    check_history(
        c,
        "ps",
        &[
            h(t0, "subscribe", "picsart-pro", 1000),
            h(t0, "debit", "d1", 32),
            h(t0, "reserve", "h1", 43),
            h(t0, "commit", "h1", 18),
            h(t0, "reserve", "h2", 5),
            h(t0, "commit", "h2", 5),
            h(t0, "debit", "d2", 24),
            h(t0, "debit", "d3", 521),
            h(t1, "reserve", "late", 18),
            h(e1, "expire_credits", &sub0, 382),
            h(e1, "renew", "picsart-pro", 1000),
            h(t2, "expire_credits", &sub0, 3),
            h(t2, "commit", "late", 15),
        ],
    );

    // The new month starts fresh: 100 premium images (1200) don't fit.
    assert_eq!(
        fail(c, "DEBIT ps d4 SKU picsart/imagen-4-ultra QTY 100"),
        "INSUFFICIENT need 1200 available 1000"
    );
    check(c, "ps", [1000, 0, 615, 385, 2000]);
    // At e2 the untouched 1000 expire too and 1000 come again.
    clock_set(c, e2);
    check(c, "ps", [1000, 0, 615, 1385, 3000]);
}

// ---------------------------------------------------------------------------
// 4. Artlist: model x resolution x audio, feature gating, upgrade rollover.

#[test]
fn artlist_feature_gating_audio_pricing_and_upgrade_rollover() {
    // voiceover-starter: 7500 a month, voiceover only. ai-suite: 16500 a
    // month, voiceover + image + video, upgrade_rollover = true.
    let t0 = ms(2027, 1, 20, 8, 0);
    let t1 = ms(2027, 1, 30, 8, 0); // the upgrade
    let e1 = ms(2027, 2, 28, 8, 0); // Jan 30 + 1 month, clamped to Feb 28
    let e2 = ms(2027, 3, 30, 8, 0); // Jan 30 + 2 months: back on the 30th
    let (mut srv, mut c) = start_at(t0);
    let c = &mut c;
    let old = format!("voiceover-starter@{t0}");
    let roll = format!("rollover:voiceover-starter@{t1}");
    let sub1 = format!("ai-suite@{t1}");
    let sub2 = format!("ai-suite@{e1}");

    assert_eq!(run(c, "SUBSCRIBE art voiceover-starter"), 7500);
    check(c, "art", [7500, 0, 0, 0, 7500]);
    check_plan(c, "art", "voiceover-starter", 1, t0, ms(2027, 2, 20, 8, 0));

    // Video, image and tool skus are outside the plan.
    for args in [
        &[
            "RESERVE",
            "art",
            "v1",
            "SKU",
            "video/veo-3.1/720",
            "QTY",
            "8",
        ][..],
        &["DEBIT", "art", "i1", "SKU", "image/flux-2-pro", "QTY", "1"][..],
        &["DEBIT", "art", "t1", "SKU", "tool/summarizer", "QTY", "1"][..],
    ] {
        assert!(
            err(c, args).starts_with("NOTENTITLED"),
            "{args:?} is not entitled"
        );
    }
    check(c, "art", [7500, 0, 0, 0, 7500]);
    // Voiceover is: premium 5 a second, standard 2 a second.
    assert_eq!(run(c, "DEBIT art vo1 SKU voiceover/premium QTY 120"), 600);
    check(c, "art", [6900, 0, 600, 0, 7500]);
    assert_eq!(
        run(c, "RESERVE art vo2 SKU voiceover/standard QTY 300"),
        600
    );
    check(c, "art", [6300, 600, 600, 0, 7500]);
    assert_eq!(run(c, "COMMIT art vo2 QTY 250"), 500);
    check(c, "art", [6400, 0, 1100, 0, 7500]);
    // An hour before the upgrade a voiceover job starts (100 s premium, 500
    // held for up to a day): it is still running at the upgrade.
    let tv = t1 - 3_600_000;
    clock_set(c, tv);
    assert_eq!(
        run(
            c,
            "RESERVE art vo3 SKU voiceover/premium QTY 100 TTL 86400000"
        ),
        500
    );
    check(c, "art", [5900, 500, 1100, 0, 7500]);

    // Upgrade ten days in: a new cycle starts now (t1 .. Feb 28), 16500
    // granted at once, the 5900 left move to a rollover bucket that
    // expires with this first new cycle. Moving is not granting:
    // available 5900 + 16500 = 22400, granted 7500 + 16500 = 24000.
    clock_set(c, t1);
    assert_eq!(run(c, "SUBSCRIBE art ai-suite"), 22400);
    check(c, "art", [22400, 500, 1100, 0, 24000]);
    check_plan(c, "art", "ai-suite", 1, t1, e1);
    // Same expiry and priority: the rollover (granted first) goes first.
    check_buckets(
        c,
        "art",
        &[
            b(&roll, "rollover", 5900, e1),
            b(&sub1, "subscription", 16500, e1),
        ],
    );
    assert_eq!(account(c, "art").holds[0].0, "vo3");
    // The held job finishes with 60 s: 300 spent; the other 200 were taken
    // from the old plan's credits, which ended at the upgrade: they expire.
    assert_eq!(run(c, "COMMIT art vo3 QTY 60"), 300);
    check(c, "art", [22400, 0, 1400, 200, 24000]);

    // Video now allowed; audio is its own, dearer sku.
    assert_eq!(run(c, "QUOTE video/veo-3.1/720 8"), 2400); // 300/s
    assert_eq!(run(c, "QUOTE video/veo-3.1/720/audio 8"), 4000); // 500/s
    assert_eq!(run(c, "QUOTE video/veo-3.1-fast/720 4"), 700); // 175/s
    assert_eq!(run(c, "QUOTE video/veo-3.1-fast/720/audio 4"), 1120); // 280/s
    assert_eq!(
        run(c, "RESERVE art v2 SKU video/veo-3.1/720/audio QTY 8"),
        4000
    );
    check(c, "art", [18400, 4000, 1400, 200, 24000]);
    assert_eq!(run(c, "COMMIT art v2"), 4000);
    check(c, "art", [18400, 0, 5400, 200, 24000]);
    // One 4K image: 700.
    assert_eq!(
        run(c, "DEBIT art i2 SKU image/nano-banana-pro/4k QTY 1"),
        700
    );
    check(c, "art", [17700, 0, 6100, 200, 24000]);
    // 4 s of silent veo-fast: 700.
    assert_eq!(run(c, "DEBIT art v3 SKU video/veo-3.1-fast/720 QTY 4"), 700);
    check(c, "art", [17000, 0, 6800, 200, 24000]);
    // All of it came from the rollover: 5900 - 4000 - 700 - 700 = 500.
    check_buckets(
        c,
        "art",
        &[
            b(&roll, "rollover", 500, e1),
            b(&sub1, "subscription", 16500, e1),
        ],
    );
    // Tools are still outside ai-suite.
    assert!(fail(c, "DEBIT art t2 SKU tool/summarizer QTY 1").starts_with("NOTENTITLED"));

    // End of the first new cycle: the rollover's 500 and the 16500 expire
    // (rollover lives one cycle only), 16500 granted again.
    clock_set(c, e1 - 1);
    check(c, "art", [17000, 0, 6800, 200, 24000]);
    clock_set(c, e1);
    check(c, "art", [16500, 0, 6800, 17200, 40500]);
    check_plan(c, "art", "ai-suite", 1, e1, e2);
    check_buckets(c, "art", &[b(&sub2, "subscription", 16500, e2)]);
    check_history(
        c,
        "art",
        &[
            h(t0, "subscribe", "voiceover-starter", 7500),
            h(t0, "debit", "vo1", 600),
            h(t0, "reserve", "vo2", 600),
            h(t0, "commit", "vo2", 500),
            h(tv, "reserve", "vo3", 500),
            // The move to the rollover bucket is not an expiry.
            h(t1, "subscribe", "ai-suite", 16500),
            h(t1, "expire_credits", &old, 200),
            h(t1, "commit", "vo3", 300),
            h(t1, "reserve", "v2", 4000),
            h(t1, "commit", "v2", 4000),
            h(t1, "debit", "i2", 700),
            h(t1, "debit", "v3", 700),
            h(e1, "expire_credits", &roll, 500),
            h(e1, "expire_credits", &sub1, 16500),
            h(e1, "renew", "ai-suite", 16500),
        ],
    );
    // Renewals stay on the 30th: Mar 30, then Apr 30.
    clock_set(c, e2);
    check(c, "art", [16500, 0, 6800, 33700, 57000]);
    check_plan(c, "art", "ai-suite", 1, e2, ms(2027, 4, 30, 8, 0));

    // A plan change does not turn a retry into a refusal. Under ai-suite:
    // a 4K image (700) and a 2-second silent veo clip held (600).
    assert_eq!(
        run(c, "DEBIT art i3 SKU image/nano-banana-pro/4k QTY 1"),
        700
    );
    check(c, "art", [15800, 0, 7500, 33700, 57000]);
    assert_eq!(run(c, "RESERVE art v4 SKU video/veo-3.1/720 QTY 2"), 600);
    check(c, "art", [15200, 600, 7500, 33700, 57000]);
    // Back to voiceover only (no rollover: the 15200 left expire; the
    // hold keeps its 600): 7500 granted.
    assert_eq!(run(c, "SUBSCRIBE art voiceover-starter"), 7500);
    check(c, "art", [7500, 600, 7500, 48900, 64500]);
    // Retries repeat their first replies; new image work is refused.
    assert_eq!(
        run(c, "DEBIT art i3 SKU image/nano-banana-pro/4k QTY 1"),
        700
    );
    assert_eq!(run(c, "RESERVE art v4 SKU video/veo-3.1/720 QTY 2"), 600);
    assert!(fail(c, "DEBIT art i4 SKU image/nano-banana-pro/4k QTY 1").starts_with("NOTENTITLED"));
    check(c, "art", [7500, 600, 7500, 48900, 64500]);
    // The held clip finishes: 600 spent from the credits it holds.
    assert_eq!(run(c, "COMMIT art v4"), 600);
    check(c, "art", [7500, 0, 8100, 48900, 64500]);

    // Without upgrade_rollover the leftovers expire at the upgrade:
    // pro (500) -> business (1000, no rollover).
    assert_eq!(run(c, "SUBSCRIBE shop pro"), 500);
    assert_eq!(run(c, "DEBIT shop d1 100"), 100);
    check(c, "shop", [400, 0, 100, 0, 500]);
    assert_eq!(run(c, "SUBSCRIBE shop business"), 1000);
    check(c, "shop", [1000, 0, 100, 400, 1500]);
    check_plan(c, "shop", "business", 1, e2, ms(2027, 4, 30, 8, 0));
    let hist = history(c, "shop");
    assert_eq!(
        hist[2..],
        [
            h(e2, "expire_credits", &format!("pro@{e2}"), 400),
            h(e2, "subscribe", "business", 1000),
        ]
    );

    // All of it survives kill -9: recovery replays plan changes, the
    // rollover and holds on ended buckets to the same state.
    let state = |c: &mut redis::Connection| {
        ["art", "shop"].map(|a| (balance(c, a), account(c, a), history(c, a)))
    };
    let before = state(c);
    srv.kill9();
    srv.restart();
    let mut c2 = srv.client();
    assert_eq!(int(&mut c2, &["CLOCK", "GET"]), e2, "the clock is restored");
    assert_eq!(state(&mut c2), before);
    check(&mut c2, "art", [7500, 0, 8100, 48900, 64500]);
}

// ---------------------------------------------------------------------------
// 5. AI Pictures: resolution pricing, 30-day top-ups after the sooner-expiring
//    subscription credits.

#[test]
fn ai_pictures_resolution_pricing_and_thirty_day_top_ups() {
    let t0 = ms(2027, 6, 10, 0, 0);
    let e1 = ms(2027, 7, 10, 0, 0);
    let e2 = ms(2027, 8, 10, 0, 0);
    let t1 = ms(2027, 6, 30, 0, 0); // the top-up
    let x = t1 + 2_592_000_000; // 30 days later: 2027-07-30
    assert_eq!(x, ms(2027, 7, 30, 0, 0));
    let cfg = config_file(EXTRA);
    let (_srv, mut c) = start_with_config(&cfg, t0);
    let c = &mut c;
    let sub0 = format!("aipictures-pro@{t0}");
    let sub1 = format!("aipictures-pro@{e1}");

    // Resolution pricing: 512 = 2, 1024 = 5, 2048 = 12 a picture; 4 at
    // once cost 4 times one (no batch discount).
    assert_eq!(run(c, "QUOTE aipictures/512 4"), 8);
    assert_eq!(run(c, "QUOTE aipictures/1024 4"), 20);
    assert_eq!(run(c, "QUOTE aipictures/2048 4"), 48);

    assert_eq!(run(c, "SUBSCRIBE pic aipictures-pro"), 1000);
    check(c, "pic", [1000, 0, 0, 0, 1000]);

    // Twenty days in, a Standard top-up: 200 credits for 30 days.
    clock_set(c, t1);
    assert_eq!(run(c, "GRANT pic topup-standard 200 TTL 2592000000"), 1200);
    check(c, "pic", [1200, 0, 0, 0, 1200]);
    // The subscription expires first (e1 < x), so it is spent first.
    check_buckets(
        c,
        "pic",
        &[
            b(&sub0, "subscription", 1000, e1),
            b("topup-standard", "prepaid", 200, x),
        ],
    );
    // 10 ultra-high-resolution pictures: 120, all from the subscription.
    assert_eq!(run(c, "RESERVE pic h1 SKU aipictures/2048 QTY 10"), 120);
    check(c, "pic", [1080, 120, 0, 0, 1200]);
    check_buckets(
        c,
        "pic",
        &[
            b(&sub0, "subscription", 880, e1),
            b("topup-standard", "prepaid", 200, x),
        ],
    );
    assert_eq!(run(c, "COMMIT pic h1"), 120);
    check(c, "pic", [1080, 0, 120, 0, 1200]);
    assert_eq!(run(c, "DEBIT pic d1 850"), 850);
    check(c, "pic", [230, 0, 970, 0, 1200]);
    check_buckets(
        c,
        "pic",
        &[
            b(&sub0, "subscription", 30, e1),
            b("topup-standard", "prepaid", 200, x),
        ],
    );
    // 10 high-resolution pictures (50): the subscription's last 30, then 20
    // of the top-up.
    assert_eq!(run(c, "RESERVE pic h2 SKU aipictures/1024 QTY 10"), 50);
    check(c, "pic", [180, 50, 970, 0, 1200]);
    check_buckets(c, "pic", &[b("topup-standard", "prepaid", 180, x)]);
    // Only 8 came out (40): the hold spends what it took first (the 30 of
    // the subscription, then 10 of the top-up); 10 go back to the top-up.
    assert_eq!(run(c, "COMMIT pic h2 QTY 8"), 40);
    check(c, "pic", [190, 0, 1010, 0, 1200]);
    check_buckets(c, "pic", &[b("topup-standard", "prepaid", 190, x)]);

    // Renewal at e1: 1000 expiring at e2, later than the top-up (x), so
    // now the top-up comes first.
    clock_set(c, e1);
    check(c, "pic", [1190, 0, 1010, 0, 2200]);
    check_buckets(
        c,
        "pic",
        &[
            b("topup-standard", "prepaid", 190, x),
            b(&sub1, "subscription", 1000, e2),
        ],
    );
    // 50 standard pictures: 100, from the top-up.
    let t2 = e1 + DAY;
    clock_set(c, t2);
    assert_eq!(run(c, "DEBIT pic d2 SKU aipictures/512 QTY 50"), 100);
    check(c, "pic", [1090, 0, 1110, 0, 2200]);
    check_buckets(
        c,
        "pic",
        &[
            b("topup-standard", "prepaid", 90, x),
            b(&sub1, "subscription", 1000, e2),
        ],
    );

    // The top-up lives while now < x: 30 days after its grant, to the ms.
    clock_set(c, x - 1);
    check(c, "pic", [1090, 0, 1110, 0, 2200]);
    clock_set(c, x);
    check(c, "pic", [1000, 0, 1110, 90, 2200]);
    check_buckets(c, "pic", &[b(&sub1, "subscription", 1000, e2)]);
    check_history(
        c,
        "pic",
        &[
            h(t0, "subscribe", "aipictures-pro", 1000),
            h(t1, "grant", "topup-standard", 200),
            h(t1, "reserve", "h1", 120),
            h(t1, "commit", "h1", 120),
            h(t1, "debit", "d1", 850),
            h(t1, "reserve", "h2", 50),
            h(t1, "commit", "h2", 40),
            // The empty subscription bucket left nothing to expire.
            h(e1, "renew", "aipictures-pro", 1000),
            h(t2, "debit", "d2", 100),
            h(x, "expire_credits", "topup-standard", 90),
        ],
    );
    // A top-up with an absolute expiry that is not in the future is refused.
    assert!(err(
        c,
        &["GRANT", "pic", "late", "100", "EXPIRES", &x.to_string()]
    )
    .starts_with("ERR"));
    check(c, "pic", [1000, 0, 1110, 90, 2200]);

    // Priority comes before expiry: a welcome promo at priority 10 (never
    // expiring) is spent before the subscription (priority 50).
    assert_eq!(run(c, "GRANT pic welcome 50 KIND promo PRIORITY 10"), 1050);
    check(c, "pic", [1050, 0, 1110, 90, 2250]);
    check_buckets(
        c,
        "pic",
        &[
            ("welcome".into(), "promo".into(), 50, 0, 10),
            b(&sub1, "subscription", 1000, e2),
        ],
    );
    // 12 high-resolution pictures (60): the promo's 50, then 10.
    assert_eq!(run(c, "DEBIT pic d3 SKU aipictures/1024 QTY 12"), 60);
    check(c, "pic", [990, 0, 1170, 90, 2250]);
    check_buckets(c, "pic", &[b(&sub1, "subscription", 990, e2)]);
}

// ---------------------------------------------------------------------------
// Cycles on time: dormant accounts, calendar anchors, seats, unsubscribe.

#[test]
fn dormant_account_shows_every_renewal_and_expiry_at_cycle_end() {
    let now = ms(2027, 2, 15, 0, 0);
    let jan31 = ms(2027, 1, 31, 10, 0);
    let feb28 = ms(2027, 2, 28, 10, 0);
    let mar31 = ms(2027, 3, 31, 10, 0);
    let apr30 = ms(2027, 4, 30, 10, 0);
    let may31 = ms(2027, 5, 31, 10, 0);
    let (_srv, mut c) = start_at(now);
    let c = &mut c;

    // An anchor in the future is refused.
    assert!(err(
        c,
        &["SUBSCRIBE", "x", "pro", "ANCHOR", &(now + 1).to_string()]
    )
    .starts_with("ERR"));
    check(c, "x", [0, 0, 0, 0, 0]);

    // Signed up Jan 31 10:00: now (Feb 15) is in cycle 0, Jan 31 .. Feb 28.
    assert_eq!(
        int(
            c,
            &["SUBSCRIBE", "dorm", "pro", "ANCHOR", &jan31.to_string()]
        ),
        500
    );
    check(c, "dorm", [500, 0, 0, 0, 500]);
    check_plan(c, "dorm", "pro", 1, jan31, feb28);
    check_buckets(
        c,
        "dorm",
        &[b(&format!("pro@{jan31}"), "subscription", 500, feb28)],
    );
    assert_eq!(run(c, "DEBIT dorm d1 120"), 120);
    check(c, "dorm", [380, 0, 120, 0, 500]);

    // Anchored Nov 30: Dec 30, Jan 30, Feb 28 (clamped), Mar 30 (from the
    // anchor again, not from Feb 28), Apr 30, May 30.
    let nov30 = ms(2026, 11, 30, 10, 0);
    let jan30 = ms(2027, 1, 30, 10, 0);
    assert_eq!(
        int(
            c,
            &["SUBSCRIBE", "dorm2", "pro", "ANCHOR", &nov30.to_string()]
        ),
        500
    );
    check_plan(c, "dorm2", "pro", 1, jan30, feb28);

    // A third one starts a job an hour before its cycle ends (200 held for
    // 2 hours), and the job is never heard of again.
    assert_eq!(
        int(
            c,
            &["SUBSCRIBE", "dorm3", "pro", "ANCHOR", &jan31.to_string()]
        ),
        500
    );
    let job = feb28 - 3_600_000;
    clock_set(c, job);
    assert_eq!(run(c, "RESERVE dorm3 job 200 TTL 7200000"), 200);
    check(c, "dorm3", [300, 200, 0, 0, 500]);

    // Nobody touches them for three months: Feb 28, Mar 31 and Apr 30 pass.
    let later = ms(2027, 5, 15, 0, 0);
    clock_set(c, later);
    // 380 + 500 + 500 expired; 4 x 500 granted.
    check(c, "dorm", [500, 0, 120, 1380, 2000]);
    check_plan(c, "dorm", "pro", 1, apr30, may31);
    check_history(
        c,
        "dorm",
        &[
            h(now, "subscribe", "pro", 500),
            h(now, "debit", "d1", 120),
            h(feb28, "expire_credits", &format!("pro@{jan31}"), 380),
            h(feb28, "renew", "pro", 500),
            h(mar31, "expire_credits", &format!("pro@{feb28}"), 500),
            h(mar31, "renew", "pro", 500),
            h(apr30, "expire_credits", &format!("pro@{mar31}"), 500),
            h(apr30, "renew", "pro", 500),
        ],
    );
    check_buckets(
        c,
        "dorm",
        &[b(&format!("pro@{apr30}"), "subscription", 500, may31)],
    );

    let mar30 = ms(2027, 3, 30, 10, 0);
    let may30 = ms(2027, 5, 30, 10, 0);
    check(c, "dorm2", [500, 0, 0, 1500, 2000]);
    check_plan(c, "dorm2", "pro", 1, apr30, may30);
    check_history(
        c,
        "dorm2",
        &[
            h(now, "subscribe", "pro", 500),
            h(feb28, "expire_credits", &format!("pro@{jan30}"), 500),
            h(feb28, "renew", "pro", 500),
            h(mar30, "expire_credits", &format!("pro@{feb28}"), 500),
            h(mar30, "renew", "pro", 500),
            h(apr30, "expire_credits", &format!("pro@{mar30}"), 500),
            h(apr30, "renew", "pro", 500),
        ],
    );

    // dorm3: at Feb 28 the free 300 expire and 500 come; at Feb 28 + 1 h
    // the hold expires and its 200, from the ended cycle, expire with it.
    check(c, "dorm3", [500, 0, 0, 1500, 2000]);
    check_history(
        c,
        "dorm3",
        &[
            h(now, "subscribe", "pro", 500),
            h(job, "reserve", "job", 200),
            h(feb28, "expire_credits", &format!("pro@{jan31}"), 300),
            h(feb28, "renew", "pro", 500),
            h(
                feb28 + 3_600_000,
                "expire_credits",
                &format!("pro@{jan31}"),
                200,
            ),
            h(feb28 + 3_600_000, "expire_hold", "job", 200),
            h(mar31, "expire_credits", &format!("pro@{feb28}"), 500),
            h(mar31, "renew", "pro", 500),
            h(apr30, "expire_credits", &format!("pro@{mar31}"), 500),
            h(apr30, "renew", "pro", 500),
        ],
    );
    // The hold expired months ago: past the idempotency window (24 h) its
    // id is forgotten, so the job is unknown now.
    assert!(fail(c, "COMMIT dorm3 job").starts_with("NOTFOUND"));
    assert!(fail(c, "RELEASE dorm3 job").starts_with("NOTFOUND"));
    check(c, "dorm3", [500, 0, 0, 1500, 2000]);

    // A leap year: anchored Jan 31 2028, the cycle ends Feb 29, then Mar 31.
    clock_set(c, ms(2028, 2, 10, 0, 0));
    let anchor = ms(2028, 1, 31, 10, 0);
    let feb29 = ms(2028, 2, 29, 10, 0);
    assert_eq!(
        int(
            c,
            &["SUBSCRIBE", "leap", "pro", "ANCHOR", &anchor.to_string()]
        ),
        500
    );
    check_plan(c, "leap", "pro", 1, anchor, feb29);
    clock_set(c, feb29);
    check(c, "leap", [500, 0, 0, 500, 1000]);
    check_plan(c, "leap", "pro", 1, feb29, ms(2028, 3, 31, 10, 0));
    // The first account renewed every month meanwhile: May 31 .. Jan 31
    // (9 renewals) plus Feb 29: 14 grants of 500 in all.
    check(c, "dorm", [500, 0, 120, 6380, 7000]);
}

#[test]
fn seats_up_at_once_and_down_at_the_next_cycle() {
    // team: 150 credits per seat per month.
    let t0 = ms(2027, 4, 5, 0, 0);
    let e1 = ms(2027, 5, 5, 0, 0);
    let e2 = ms(2027, 6, 5, 0, 0);
    let (_srv, mut c) = start_at(t0);
    let c = &mut c;

    assert_eq!(run(c, "SUBSCRIBE team1 team SEATS 5"), 750);
    check(c, "team1", [750, 0, 0, 0, 750]);
    // 3 more seats: 3 x 150 = 450 at once, into this cycle's bucket.
    assert_eq!(run(c, "SEATS team1 8"), 1200);
    check(c, "team1", [1200, 0, 0, 0, 1200]);
    check_plan(c, "team1", "team", 8, t0, e1);
    check_buckets(
        c,
        "team1",
        &[b(&format!("team@{t0}"), "subscription", 1200, e1)],
    );
    assert_eq!(run(c, "DEBIT team1 d1 200"), 200);
    check(c, "team1", [1000, 0, 200, 0, 1200]);
    // Down to 3: nothing taken back; 8 seats paid for this cycle.
    assert_eq!(run(c, "SEATS team1 3"), 1000);
    check(c, "team1", [1000, 0, 200, 0, 1200]);
    check_plan(c, "team1", "team", 8, t0, e1);
    // SUBSCRIBE to the same plan: without SEATS nothing changes; with
    // SEATS it is SEATS (4 < 8: from the next cycle).
    assert_eq!(run(c, "SUBSCRIBE team1 team"), 1000);
    assert_eq!(run(c, "SUBSCRIBE team1 team SEATS 4"), 1000);
    check(c, "team1", [1000, 0, 200, 0, 1200]);
    check_plan(c, "team1", "team", 8, t0, e1);
    // Errors change nothing.
    assert!(fail(c, "SEATS team1 0").starts_with("ERR"));
    assert!(fail(c, "SEATS nobody 3").starts_with("ERR"));
    check(c, "nobody", [0, 0, 0, 0, 0]);

    // Next cycle: 4 seats x 150 = 600; the 1000 left expire.
    clock_set(c, e1);
    check(c, "team1", [600, 0, 200, 1000, 1800]);
    check_plan(c, "team1", "team", 4, e1, e2);
    // Up to 6 mid-cycle: 2 x 150 = 300 at once.
    let t1 = e1 + 10 * DAY;
    clock_set(c, t1);
    assert_eq!(run(c, "SEATS team1 6"), 900);
    check(c, "team1", [900, 0, 200, 1000, 2100]);
    check_plan(c, "team1", "team", 6, e1, e2);
    check_buckets(
        c,
        "team1",
        &[b(&format!("team@{e1}"), "subscription", 900, e2)],
    );
    clock_set(c, e2);
    check(c, "team1", [900, 0, 200, 1900, 3000]);
    check_history(
        c,
        "team1",
        &[
            h(t0, "subscribe", "team", 750),
            h(t0, "seats", "team", 450),
            h(t0, "debit", "d1", 200),
            h(t0, "seats", "team", 0),
            h(t0, "seats", "team", 0),
            h(e1, "expire_credits", &format!("team@{t0}"), 1000),
            h(e1, "renew", "team", 600),
            h(t1, "seats", "team", 300),
            h(e2, "expire_credits", &format!("team@{e1}"), 900),
            h(e2, "renew", "team", 900),
        ],
    );
}

#[test]
fn unsubscribe_stops_renewals_and_keeps_what_was_granted() {
    let t0 = ms(2027, 8, 1, 0, 0);
    let e1 = ms(2027, 9, 1, 0, 0);
    let (_srv, mut c) = start_at(t0);
    let c = &mut c;

    assert_eq!(run(c, "SUBSCRIBE u pro"), 500);
    assert_eq!(run(c, "ADDON u 2"), 620); // 2 x 60
    assert_eq!(run(c, "GRANT u pack 1000"), 1620);
    check(c, "u", [1620, 0, 0, 0, 1620]);
    let t1 = t0 + 5 * DAY;
    clock_set(c, t1);
    assert_eq!(cmd(c, &["UNSUBSCRIBE", "u"]), Ok(Value::Okay));
    check(c, "u", [1620, 0, 0, 0, 1620]);
    check_plan(c, "u", "", 0, 0, 0);
    check_buckets(
        c,
        "u",
        &[
            b(&format!("pro@{t0}"), "subscription", 500, e1),
            b(&format!("addon:pro@{t0}"), "addon", 120, e1),
            b("pack", "prepaid", 1000, 0),
        ],
    );
    // Add-ons need a subscription; a second UNSUBSCRIBE is harmless.
    assert!(fail(c, "ADDON u 1").starts_with("ERR"));
    assert_eq!(cmd(c, &["UNSUBSCRIBE", "u"]), Ok(Value::Okay));
    // Without a plan every feature may be used.
    assert_eq!(run(c, "DEBIT u d1 SKU video/kling-1.6/720 QTY 1"), 60);
    check(c, "u", [1560, 0, 60, 0, 1620]);

    // At e1 the plan's credits expire and nothing is granted.
    clock_set(c, e1);
    check(c, "u", [1000, 0, 60, 560, 1620]);
    clock_set(c, e1 + 100 * DAY);
    check(c, "u", [1000, 0, 60, 560, 1620]);
    check_history(
        c,
        "u",
        &[
            h(t0, "subscribe", "pro", 500),
            h(t0, "addon", "pro", 120),
            h(t0, "grant", "pack", 1000),
            h(t1, "unsubscribe", "pro", 0),
            h(t1, "debit", "d1", 60),
            h(e1, "expire_credits", &format!("pro@{t0}"), 440),
            h(e1, "expire_credits", &format!("addon:pro@{t0}"), 120),
        ],
    );
    // Subscribing again starts a new cycle now.
    let t2 = e1 + 100 * DAY;
    assert_eq!(t2, ms(2027, 12, 10, 0, 0));
    assert_eq!(run(c, "SUBSCRIBE u pro"), 1500);
    check(c, "u", [1500, 0, 60, 560, 2120]);
    check_plan(c, "u", "pro", 1, t2, ms(2028, 1, 10, 0, 0));
}

// ---------------------------------------------------------------------------
// CONFIG RELOAD: holds keep their price, subscriptions their plan terms.

const RELOAD_A: &str = r#"
[skus."reload/image"]
unit = "image"
credits = 10

[skus."reload/video"]
unit = "second"
credits = 100

[plans.reload-plan]
period = "month"
credits_per_seat = 100
features = ["video"]
"#;

const RELOAD_B: &str = r#"
[skus."reload/video"]
unit = "second"
credits = 150

[plans.reload-plan]
period = "month"
credits_per_seat = 200
features = ["image"]
"#;

#[test]
fn config_reload_keeps_hold_prices_and_subscription_terms() {
    let t0 = ms(2027, 9, 1, 0, 0);
    let e1 = ms(2027, 10, 1, 0, 0);
    let cfg = config_file(RELOAD_A);
    let (_srv, mut c) = start_with_config(&cfg, t0);
    let c = &mut c;

    assert_eq!(run(c, "QUOTE reload/video 10"), 1000);
    assert_eq!(run(c, "GRANT r g1 100000"), 100000);
    // 3 images of a model the next config drops: 30.
    assert_eq!(run(c, "DEBIT r img-1 SKU reload/image QTY 3"), 30);
    check(c, "r", [99970, 0, 30, 0, 100000]);
    // A 10-second job at 100 a second: 1000 held; 2 s captured (200).
    assert_eq!(run(c, "RESERVE r h1 SKU reload/video QTY 10"), 1000);
    assert_eq!(run(c, "CAPTURE r h1 QTY 2"), 200);
    check(c, "r", [98970, 800, 230, 0, 100000]);
    assert_eq!(run(c, "SUBSCRIBE rp1 reload-plan"), 100);

    // The price goes up to 150 a second; the plan to 200, images only.
    write_config(&cfg, RELOAD_B);
    assert_eq!(cmd(c, &["CONFIG", "RELOAD"]), Ok(Value::Okay));
    assert_eq!(run(c, "QUOTE reload/video 10"), 1500);
    // The running job keeps its price: 4 s = 400, 7 s = 700 (not 1050).
    assert_eq!(run(c, "CAPTURE r h1 QTY 4"), 400);
    check(c, "r", [98970, 600, 430, 0, 100000]);
    assert_eq!(run(c, "COMMIT r h1 QTY 7"), 700);
    check(c, "r", [99270, 0, 730, 0, 100000]);
    // A retried RESERVE of the finished hold repeats its first reply.
    assert_eq!(run(c, "RESERVE r h1 SKU reload/video QTY 10"), 1000);
    check(c, "r", [99270, 0, 730, 0, 100000]);
    // A new job pays the new price.
    assert_eq!(run(c, "RESERVE r h2 SKU reload/video QTY 10"), 1500);
    check(c, "r", [97770, 1500, 730, 0, 100000]);
    assert_eq!(run(c, "RELEASE r h2"), 1500);
    check(c, "r", [99270, 0, 730, 0, 100000]);

    // The dropped model: a retry of the earlier debit repeats its reply;
    // anything new is NOTFOUND.
    assert_eq!(run(c, "DEBIT r img-1 SKU reload/image QTY 3"), 30);
    assert!(fail(c, "QUOTE reload/image 1").starts_with("NOTFOUND"));
    assert!(fail(c, "DEBIT r img-2 SKU reload/image QTY 1").starts_with("NOTFOUND"));
    check(c, "r", [99270, 0, 730, 0, 100000]);

    // rp1 keeps the terms it subscribed with (100, video); rp2 gets the new.
    assert_eq!(run(c, "SUBSCRIBE rp2 reload-plan"), 200);
    assert_eq!(run(c, "DEBIT rp1 v1 SKU reload/video QTY 0"), 0);
    assert!(fail(c, "DEBIT rp2 v1 SKU reload/video QTY 0").starts_with("NOTENTITLED"));
    clock_set(c, e1);
    check(c, "rp1", [100, 0, 0, 100, 200]);
    check(c, "rp2", [200, 0, 0, 200, 400]);

    // A broken config is refused with the key and the reason; the old stays.
    write_config(
        &cfg,
        &RELOAD_B.replace("unit = \"second\"", "unit = \"minute\""),
    );
    let e = fail(c, "CONFIG RELOAD");
    assert!(
        e.starts_with("ERR") && e.contains("reload/video") && e.contains("minute"),
        "{e}"
    );
    assert_eq!(run(c, "QUOTE reload/video 10"), 1500);
}
