//! Helpers for the members and events tests: MEMBERS and EVENTS replies read
//! into structs, field names and types checked on the way, and INFO fields.
#![allow(dead_code)]

use crate::common::{temp_dir, Creditd};
use redis::Value;
use std::path::PathBuf;

/// Runs a command with redis-rs; errors as "CODE message", as the server sent them.
pub fn call(conn: &mut redis::Connection, args: &[&str]) -> Result<Value, String> {
    let mut c = redis::cmd(args[0]);
    for a in &args[1..] {
        c.arg(*a);
    }
    c.query::<Value>(conn)
        .map_err(|e| match (e.code(), e.detail()) {
            (Some(code), Some(detail)) => format!("{code} {detail}"),
            (Some(code), None) => code.to_string(),
            _ => e.to_string(),
        })
}

/// Runs a command expected to reply with an integer.
pub fn int(conn: &mut redis::Connection, args: &[&str]) -> i64 {
    match call(conn, args) {
        Ok(Value::Int(n)) => n,
        other => panic!("{args:?}: expected an integer, got {other:?}"),
    }
}

/// Runs a command expected to fail; its error text.
pub fn err(conn: &mut redis::Connection, args: &[&str]) -> String {
    match call(conn, args) {
        Err(e) => e,
        Ok(v) => panic!("{args:?}: expected an error, got {v:?}"),
    }
}

/// The first word of a reply: the error code, or "ok".
pub fn code(r: Result<Value, String>) -> String {
    match r {
        Ok(_) => "ok".into(),
        Err(e) => e.split(' ').next().unwrap_or("").to_string(),
    }
}

/// A *fields* reply (flat array in RESP2, map in RESP3) as pairs, names in order.
pub fn pairs(v: Value) -> Vec<(String, Value)> {
    match v {
        Value::Array(items) => {
            assert!(items.len() % 2 == 0, "odd fields array: {items:?}");
            items
                .chunks(2)
                .map(|kv| (bulk(&kv[0]), kv[1].clone()))
                .collect()
        }
        Value::Map(kv) => kv.into_iter().map(|(k, v)| (bulk(&k), v)).collect(),
        other => panic!("expected fields, got {other:?}"),
    }
}

/// A bulk string reply as text (and nothing else: an integer is a mistake here).
pub fn bulk(v: &Value) -> String {
    match v {
        Value::BulkString(b) => String::from_utf8(b.clone()).expect("utf-8"),
        other => panic!("expected a bulk string, got {other:?}"),
    }
}

fn integer(v: &Value) -> i64 {
    match v {
        Value::Int(n) => *n,
        other => panic!("expected an integer, got {other:?}"),
    }
}

/// Checks that `fields` are named `names`, in that order.
fn check_names(fields: &[(String, Value)], names: &[&str]) {
    let got: Vec<&str> = fields.iter().map(|(k, _)| k.as_str()).collect();
    assert_eq!(got, names, "field names");
}

/// One event as EVENTS lists it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Event {
    pub seq: u64,
    pub at: u64,
    pub kind: String,
    pub account: String,
    pub member: String,
    pub value: u64,
    pub threshold: u64,
}

pub const EVENT_FIELDS: [&str; 7] = [
    "seq",
    "at",
    "type",
    "account",
    "member",
    "value",
    "threshold",
];

impl Event {
    pub fn from_reply(v: Value) -> Event {
        let f = pairs(v);
        check_names(&f, &EVENT_FIELDS);
        let n = |i: usize| {
            let n = integer(&f[i].1);
            assert!(n >= 0, "{}: {n}", f[i].0);
            n as u64
        };
        Event {
            seq: n(0),
            at: n(1),
            kind: bulk(&f[2].1),
            account: bulk(&f[3].1),
            member: bulk(&f[4].1),
            value: n(5),
            threshold: n(6),
        }
    }

    /// The event without its instant, for comparisons: (type, account, member, value, threshold).
    pub fn what(&self) -> (&str, &str, &str, u64, u64) {
        (
            &self.kind,
            &self.account,
            &self.member,
            self.value,
            self.threshold,
        )
    }
}

/// `EVENTS args...` read into events.
pub fn events(conn: &mut redis::Connection, args: &[&str]) -> Vec<Event> {
    let mut full = vec!["EVENTS"];
    full.extend_from_slice(args);
    match call(conn, &full).unwrap_or_else(|e| panic!("{full:?}: {e}")) {
        Value::Array(items) => items.into_iter().map(Event::from_reply).collect(),
        other => panic!("{full:?}: expected an array, got {other:?}"),
    }
}

/// Every event the server keeps (the tests keep far fewer than 10000).
pub fn all_events(conn: &mut redis::Connection) -> Vec<Event> {
    let all = events(conn, &["COUNT", "10000"]);
    assert!(all.len() < 10_000, "more events than one page");
    all
}

/// Checks the numbering: 1, 2, 3, ... in order, none twice.
pub fn assert_numbered_from_one(events: &[Event]) {
    let seqs: Vec<u64> = events.iter().map(|e| e.seq).collect();
    let expect: Vec<u64> = (1..=events.len() as u64).collect();
    assert_eq!(seqs, expect, "event numbers: {events:#?}");
}

/// One member as MEMBERS lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Member {
    pub member: String,
    pub limit: i64,
    pub per: String,
    pub used: i64,
    pub held: i64,
    pub period_end: i64,
}

pub const MEMBER_FIELDS: [&str; 6] = ["member", "limit", "per", "used", "held", "period_end"];

impl Member {
    pub fn from_reply(v: Value) -> Member {
        let f = pairs(v);
        check_names(&f, &MEMBER_FIELDS);
        Member {
            member: bulk(&f[0].1),
            limit: integer(&f[1].1),
            per: bulk(&f[2].1),
            used: integer(&f[3].1),
            held: integer(&f[4].1),
            period_end: integer(&f[5].1),
        }
    }

    pub fn new(member: &str, limit: i64, per: &str, used: i64, held: i64, end: i64) -> Member {
        Member {
            member: member.into(),
            limit,
            per: per.into(),
            used,
            held,
            period_end: end,
        }
    }
}

/// `MEMBERS account` read into members.
pub fn members(conn: &mut redis::Connection, account: &str) -> Vec<Member> {
    match call(conn, &["MEMBERS", account]).unwrap_or_else(|e| panic!("MEMBERS {account}: {e}")) {
        Value::Array(items) => items.into_iter().map(Member::from_reply).collect(),
        other => panic!("MEMBERS {account}: expected an array, got {other:?}"),
    }
}

/// BALANCE as [available, held, spent, expired, granted].
pub fn balance(conn: &mut redis::Connection, account: &str) -> [i64; 5] {
    let f = pairs(call(conn, &["BALANCE", account]).expect("BALANCE"));
    check_names(&f, &["available", "held", "spent", "expired", "granted"]);
    let b = [0, 1, 2, 3, 4].map(|i| integer(&f[i].1));
    assert_eq!(b[4], b[0] + b[1] + b[2] + b[3], "conservation: {b:?}");
    b
}

/// A numeric field of `INFO section`.
pub fn info(conn: &mut redis::Connection, section: &str, field: &str) -> u64 {
    let text: String = redis::cmd("INFO").arg(section).query(conn).expect("INFO");
    text.lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .unwrap_or_else(|| panic!("no {field} in INFO {section}:\n{text}"))
        .trim()
        .parse()
        .unwrap_or_else(|_| panic!("{field} is not a number"))
}

/// A small deterministic generator (xorshift64*), so a failing run can be replayed.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }

    pub fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// Uniform-ish in `lo..=hi`.
    pub fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.next() % (hi - lo + 1)
    }
}

/// 2030-01-15 12:00:00 UTC: a known instant for the test clock, mid-day and
/// mid-month so no period ends while a test runs.
pub const MID_JAN_2030: u64 = 1_894_708_800_000;
/// 2030-01-16 00:00:00 UTC: the end of that day.
pub const END_OF_DAY: u64 = 1_894_752_000_000;
/// 2030-02-01 00:00:00 UTC: the end of that month.
pub const END_OF_MONTH: u64 = 1_896_134_400_000;

/// A server on the test clock, set to mid-January 2030 (no period ends
/// while a test runs), and a connection to it.
pub fn start_mid_january(extra: &[&str]) -> (Creditd, redis::Connection) {
    let mut args = vec!["--test-clock"];
    args.extend_from_slice(extra);
    let srv = Creditd::start(&args);
    let mut c = srv.client();
    let now = MID_JAN_2030.to_string();
    assert_eq!(int(&mut c, &["CLOCK", "SET", &now]), MID_JAN_2030 as i64);
    (srv, c)
}

/// A config file beside a fresh data dir.
pub fn with_config(settings: &str) -> (PathBuf, PathBuf) {
    let dir = temp_dir("members-config");
    let config = dir.join("creditd.toml");
    std::fs::write(&config, settings).unwrap();
    (dir.join("data"), config)
}
