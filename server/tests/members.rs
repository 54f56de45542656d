//! Members' caps over real TCP against the real binary: LIMIT, MEMBERS and
//! the MEMBER option of RESERVE and DEBIT as the contract words them
//! (section 9), in RESP2 and RESP3, with their syntax errors and bounds.

mod common;
mod members_support;

use common::{refused_start, Creditd};
use members_support::*;
use redis::Value;
use std::io::{BufRead, BufReader, Write};

/// The `expires_at` of each open hold of `account`, by hold id.
fn hold_expiries(c: &mut redis::Connection, account: &str) -> Vec<(String, i64)> {
    let acct = pairs(call(c, &["ACCOUNT", account]).unwrap());
    let Some((_, Value::Array(holds))) = acct.into_iter().find(|(k, _)| k == "holds") else {
        panic!("ACCOUNT {account} has no holds array");
    };
    holds
        .into_iter()
        .map(|h| {
            let f = pairs(h);
            let expires = f.iter().find(|(k, _)| k == "expires_at").unwrap();
            let Value::Int(at) = expires.1 else {
                panic!("expires_at: {:?}", expires.1)
            };
            (bulk(&f[0].1), at)
        })
        .collect()
}

#[test]
fn caps_charge_members_with_the_pool_and_refuse_with_limited() {
    let (_srv, mut c) = start_mid_january(&[]);
    let c = &mut c;
    assert_eq!(int(c, &["GRANT", "acme", "g1", "10000"]), 10000);
    assert_eq!(
        int(c, &["LIMIT", "acme", "alice", "100", "PER", "day"]),
        100
    );
    assert_eq!(int(c, &["LIMIT", "acme", "bob", "50"]), 50, "PER cycle");
    assert_eq!(
        members(c, "acme"),
        [
            Member::new("alice", 100, "day", 0, 0, END_OF_DAY as i64),
            // Without a plan, the cycle is the UTC calendar month.
            Member::new("bob", 50, "cycle", 0, 0, END_OF_MONTH as i64),
        ]
    );
    assert_eq!(members(c, "nobody"), [], "an unknown account has none");

    // MEMBER after TTL, MEMBER before TTL, DEBIT with MEMBER.
    let r1 = [
        "RESERVE", "acme", "h1", "60", "TTL", "60000", "MEMBER", "alice",
    ];
    assert_eq!(int(c, &r1), 60);
    let r2 = [
        "RESERVE", "acme", "h2", "30", "MEMBER", "alice", "TTL", "70000",
    ];
    assert_eq!(int(c, &r2), 30);
    assert_eq!(int(c, &["DEBIT", "acme", "d1", "5", "MEMBER", "alice"]), 5);
    let now = MID_JAN_2030 as i64;
    assert_eq!(
        hold_expiries(c, "acme"),
        [
            ("h1".to_string(), now + 60000),
            ("h2".to_string(), now + 70000)
        ],
        "both TTLs were read whatever the order"
    );
    assert_eq!(
        members(c, "acme")[0],
        Member::new("alice", 100, "day", 5, 90, END_OF_DAY as i64)
    );
    assert_eq!(balance(c, "acme"), [9905, 90, 5, 0, 10000]);

    // Over the cap: LIMITED with the exact text, nothing changes.
    let limited = err(c, &["RESERVE", "acme", "h3", "10", "MEMBER", "alice"]);
    assert_eq!(limited, "LIMITED need 10 remaining 5");
    let limited = err(c, &["DEBIT", "acme", "d2", "6", "MEMBER", "alice"]);
    assert_eq!(limited, "LIMITED need 6 remaining 5");
    // The pool is checked first: INSUFFICIENT wins over LIMITED.
    let refused = err(c, &["RESERVE", "acme", "h3", "20000", "MEMBER", "alice"]);
    assert_eq!(refused, "INSUFFICIENT need 20000 available 9905");
    let refused = err(c, &["DEBIT", "acme", "d2", "20000", "MEMBER", "alice"]);
    assert_eq!(refused, "INSUFFICIENT need 20000 available 9905");
    assert_eq!(balance(c, "acme"), [9905, 90, 5, 0, 10000]);
    // A refusal leaves no idempotency record: the same ids work afresh.
    assert_eq!(
        int(c, &["RESERVE", "acme", "h3", "5", "MEMBER", "alice"]),
        5
    );
    let limited = err(c, &["DEBIT", "acme", "d2", "1", "MEMBER", "alice"]);
    assert_eq!(limited, "LIMITED need 1 remaining 0", "exactly at the cap");
    // Alice's cap binds neither the pool nor another member.
    assert_eq!(int(c, &["DEBIT", "acme", "d3", "1000"]), 1000);
    assert_eq!(
        int(c, &["RESERVE", "acme", "h5", "50", "MEMBER", "bob"]),
        50
    );
    let limited = err(c, &["RESERVE", "acme", "h6", "1", "MEMBER", "bob"]);
    assert_eq!(limited, "LIMITED need 1 remaining 0");
    let before = balance(c, "acme");
    assert_eq!(before, [8850, 145, 1005, 0, 10000]);

    // Idempotency: the member is one of the arguments.
    assert_eq!(int(c, &r1), 60, "same arguments: the first reply");
    let swapped = [
        "RESERVE", "acme", "h1", "60", "MEMBER", "alice", "TTL", "60000",
    ];
    assert_eq!(int(c, &swapped), 60, "the same options in another order");
    for conflict in [
        &[
            "RESERVE", "acme", "h1", "60", "TTL", "60000", "MEMBER", "bob",
        ][..],
        &["RESERVE", "acme", "h1", "60", "TTL", "60000"],
        &["DEBIT", "acme", "d1", "5", "MEMBER", "bob"],
        &["DEBIT", "acme", "d1", "5"],
        &["DEBIT", "acme", "d3", "1000", "MEMBER", "alice"],
    ] {
        let e = err(c, conflict);
        assert!(e.starts_with("CONFLICT "), "{conflict:?}: {e}");
    }
    assert_eq!(int(c, &["DEBIT", "acme", "d1", "5", "MEMBER", "alice"]), 5);
    assert_eq!(balance(c, "acme"), before, "retries applied nothing");
    assert_eq!(
        members(c, "acme")[0],
        Member::new("alice", 100, "day", 5, 95, END_OF_DAY as i64)
    );

    // CAPTURE and COMMIT beyond the held amount need the excess within the cap.
    let limited = err(c, &["COMMIT", "acme", "h1", "61"]);
    assert_eq!(limited, "LIMITED need 1 remaining 0");
    let limited = err(c, &["CAPTURE", "acme", "h1", "70"]);
    assert_eq!(limited, "LIMITED need 10 remaining 0");
    assert_eq!(int(c, &["COMMIT", "acme", "h1", "40"]), 40);
    assert_eq!(int(c, &["RELEASE", "acme", "h2"]), 30);
    // used 45, held 5 (h3): 50 left; h3 captures 25, 20 beyond its hold.
    assert_eq!(int(c, &["CAPTURE", "acme", "h3", "25"]), 25);
    assert_eq!(int(c, &["COMMIT", "acme", "h3"]), 25);
    assert_eq!(
        members(c, "acme")[0],
        Member::new("alice", 100, "day", 70, 0, END_OF_DAY as i64)
    );

    // NONE removes the cap (reply 0); usage is still counted.
    assert_eq!(int(c, &["LIMIT", "acme", "alice", "NONE"]), 0);
    assert_eq!(
        int(c, &["DEBIT", "acme", "d4", "500", "MEMBER", "alice"]),
        500
    );
    assert_eq!(
        members(c, "acme")[0],
        Member::new("alice", -1, "cycle", 570, 0, END_OF_MONTH as i64)
    );
    assert_eq!(
        int(c, &["LIMIT", "acme", "alice", "1000", "PER", "month"]),
        430
    );
    assert_eq!(int(c, &["LIMIT", "acme", "alice", "100", "PER", "day"]), 0);
    let limited = err(c, &["DEBIT", "acme", "d5", "1", "MEMBER", "alice"]);
    assert_eq!(limited, "LIMITED need 1 remaining 0", "remaining saturates");

    // A new UTC day: the day's usage starts again; the month's does not.
    int(c, &["CLOCK", "ADVANCE", "43200000"]);
    assert_eq!(int(c, &["DEBIT", "acme", "d5", "1", "MEMBER", "alice"]), 1);
    let next_day = END_OF_DAY as i64 + 86_400_000;
    assert_eq!(
        members(c, "acme")[0],
        Member::new("alice", 100, "day", 1, 0, next_day)
    );
    assert_eq!(
        int(c, &["LIMIT", "acme", "alice", "600", "PER", "month"]),
        29
    );

    // A member with no cap and no usage is not listed; a cap of 0 allows 0.
    assert_eq!(int(c, &["LIMIT", "acme", "carol", "NONE"]), 0);
    assert_eq!(int(c, &["LIMIT", "acme", "erin", "0"]), 0);
    assert_eq!(int(c, &["RESERVE", "acme", "h7", "0", "MEMBER", "erin"]), 0);
    let limited = err(c, &["RESERVE", "acme", "h8", "1", "MEMBER", "erin"]);
    assert_eq!(limited, "LIMITED need 1 remaining 0");
    let names: Vec<String> = members(c, "acme").into_iter().map(|m| m.member).collect();
    assert_eq!(names, ["alice", "bob", "erin"]);
}

#[test]
fn limit_and_member_options_refuse_bad_syntax_and_change_nothing() {
    let (_srv, mut c) = start_mid_january(&[]);
    let c = &mut c;
    assert_eq!(int(c, &["GRANT", "acme", "g1", "1000"]), 1000);
    assert_eq!(
        int(c, &["LIMIT", "acme", "alice", "100", "per", "DAY"]),
        100
    );
    assert_eq!(
        int(c, &["limit", "acme", "bob", "7", "PER", "Month"]),
        7,
        "keywords are case-insensitive"
    );
    let before = members(c, "acme");
    assert_eq!(before[0].per, "day");
    assert_eq!(before[1].per, "month");
    let long = "m".repeat(129);
    let cases: &[(&[&str], &str)] = &[
        (
            &["LIMIT", "acme", "alice", "10", "PER", "week"],
            "ERR PER must be day, month or cycle",
        ),
        (&["LIMIT", "acme", "alice", "10", "PER"], "ERR syntax error"),
        (&["LIMIT", "acme", "alice", "10", "day"], "ERR syntax error"),
        (
            &["LIMIT", "acme", "alice", "10", "PER", "day", "PER", "month"],
            "ERR syntax error",
        ),
        (
            &["LIMIT", "acme", "alice", "NONE", "PER", "day"],
            "ERR syntax error",
        ),
        (
            &["LIMIT", "acme", "alice", "-1"],
            "ERR amount is not an integer or out of range",
        ),
        (
            &["LIMIT", "acme", "alice", "1000000000000001"],
            "ERR amount out of range (0 to 10^15)",
        ),
        (
            &["LIMIT", "acme", "alice"],
            "ERR wrong number of arguments for 'limit' command",
        ),
        (
            &["RESERVE", "acme", "h1", "1", "MEMBER"],
            "ERR syntax error",
        ),
        (
            &["RESERVE", "acme", "h1", "1", "MEMBER", "a", "MEMBER", "b"],
            "ERR syntax error",
        ),
        (
            &["RESERVE", "acme", "h1", "1", "TTL", "5", "TTL", "6"],
            "ERR syntax error",
        ),
        (&["DEBIT", "acme", "d1", "1", "MEMBER"], "ERR syntax error"),
        (
            &["DEBIT", "acme", "d1", "1", "MEMBER", "a", "TTL", "5"],
            "ERR syntax error",
        ),
    ];
    for (args, want) in cases {
        assert_eq!(&err(c, args), want, "{args:?}");
    }
    for args in [
        &["LIMIT", "acme", &long, "10"][..],
        &["RESERVE", "acme", "h1", "1", "MEMBER", &long],
        &["DEBIT", "acme", "d1", "1", "MEMBER", ""],
    ] {
        let e = err(c, args);
        assert!(e.starts_with("ERR "), "{}: {e}", args[0]);
    }
    assert_eq!(members(c, "acme"), before, "nothing changed");
    assert_eq!(balance(c, "acme"), [1000, 0, 0, 0, 1000]);
    // The refused ids were never used.
    assert_eq!(
        int(c, &["RESERVE", "acme", "h1", "1", "MEMBER", "alice"]),
        1
    );
    assert_eq!(int(c, &["DEBIT", "acme", "d1", "1"]), 1);
}

#[test]
fn resp3_replies_are_maps_with_the_same_fields() {
    let (srv, mut c2) = start_mid_january(&[]);
    let c2 = &mut c2;
    assert_eq!(int(c2, &["GRANT", "acme", "g1", "1000"]), 1000);
    assert_eq!(
        int(c2, &["LIMIT", "acme", "alice", "100", "PER", "day"]),
        100
    );
    assert_eq!(
        int(c2, &["DEBIT", "acme", "d1", "30", "MEMBER", "alice"]),
        30
    );
    assert_eq!(
        int(c2, &["RESERVE", "acme", "h1", "20", "MEMBER", "bob"]),
        20
    );
    assert_eq!(int(c2, &["ALERT", "acme", "900"]), 1);
    assert_eq!(int(c2, &["DEBIT", "acme", "d2", "100"]), 100);

    let client = redis::Client::open(format!("{}?protocol=resp3", srv.url())).unwrap();
    let mut c3 = client.get_connection().unwrap();
    let c3 = &mut c3;
    let Ok(Value::Array(rows)) = call(c3, &["MEMBERS", "acme"]) else {
        panic!("MEMBERS is an array")
    };
    assert_eq!(rows.len(), 2);
    assert!(
        rows.iter()
            .all(|r| matches!(r, Value::Map(m) if m.len() == 6)),
        "{rows:?}"
    );
    let resp3: Vec<Member> = rows.into_iter().map(Member::from_reply).collect();
    assert_eq!(resp3, members(c2, "acme"));
    assert_eq!(
        resp3,
        [
            Member::new("alice", 100, "day", 30, 0, END_OF_DAY as i64),
            Member::new("bob", -1, "cycle", 0, 20, END_OF_MONTH as i64),
        ]
    );
    let Ok(Value::Array(rows)) = call(c3, &["EVENTS"]) else {
        panic!("EVENTS is an array")
    };
    assert!(
        rows.iter()
            .all(|r| matches!(r, Value::Map(m) if m.len() == 7)),
        "{rows:?}"
    );
    let resp3: Vec<Event> = rows.into_iter().map(Event::from_reply).collect();
    assert_eq!(resp3, events(c2, &[]));
    assert_eq!(resp3[0].what(), ("low", "acme", "", 850, 900), "{resp3:?}");
    assert_eq!(int(c3, &["LIMIT", "acme", "bob", "25"]), 5);
    assert_eq!(int(c3, &["ALERT", "acme", "100"]), 2);
    assert_eq!(
        err(c3, &["RESERVE", "acme", "h2", "6", "MEMBER", "bob"]),
        "LIMITED need 6 remaining 5"
    );
    assert_eq!(
        call(c3, &["EVENTS", "AFTER", "99"]),
        Ok(Value::Array(vec![]))
    );

    // The bytes: flat arrays of 12 before HELLO 3, maps of 6 (and 7) after.
    let mut s = srv.raw();
    let mut r = BufReader::new(s.try_clone().unwrap());
    s.write_all(b"MEMBERS acme\r\nHELLO 3\r\nMEMBERS acme\r\nEVENTS COUNT 1\r\n")
        .unwrap();
    let resp2 = raw_reply(&mut r);
    assert_eq!(resp2[..4], ["*2", "*12", "$6", "member"], "{resp2:?}");
    assert_eq!(resp2.iter().filter(|l| *l == "*12").count(), 2);
    let hello = raw_reply(&mut r);
    assert!(hello[0].starts_with('%'), "{hello:?}");
    let resp3 = raw_reply(&mut r);
    assert_eq!(resp3[..4], ["*2", "%6", "$6", "member"], "{resp3:?}");
    assert_eq!(resp3.iter().filter(|l| *l == "%6").count(), 2);
    let as_maps: Vec<String> = resp2
        .iter()
        .map(|l| if l == "*12" { "%6".into() } else { l.clone() })
        .collect();
    assert_eq!(resp3, as_maps, "the same fields and values");
    let event = raw_reply(&mut r);
    assert_eq!(event[..4], ["*1", "%7", "$3", "seq"], "{event:?}");
}

/// One raw reply, line by line: headers, bulk bodies and simple lines.
fn raw_reply(r: &mut impl BufRead) -> Vec<String> {
    let mut lines = Vec::new();
    raw_into(r, &mut lines);
    lines
}

fn raw_into(r: &mut impl BufRead, lines: &mut Vec<String>) {
    let mut line = String::new();
    r.read_line(&mut line).unwrap();
    let line = line.trim_end_matches("\r\n").to_string();
    assert!(!line.is_empty(), "connection closed");
    let n: i64 = line[1..].parse().unwrap_or(0);
    let kind = line.as_bytes()[0];
    lines.push(line);
    match kind {
        b'$' if n >= 0 => {
            let mut body = vec![0u8; n as usize + 2];
            r.read_exact(&mut body).unwrap();
            lines.push(String::from_utf8_lossy(&body[..n as usize]).into_owned());
        }
        b'*' => (0..n).for_each(|_| raw_into(r, lines)),
        b'%' => (0..2 * n).for_each(|_| raw_into(r, lines)),
        _ => {}
    }
}

#[test]
fn max_members_per_account_bounds_each_account() {
    let (data, config) = with_config("max_members_per_account = 2\n");
    let srv = Creditd::start_in(&data, &["--config", config.to_str().unwrap()]);
    let mut c = srv.client();
    let c = &mut c;
    assert_eq!(int(c, &["GRANT", "a", "g", "1000"]), 1000);
    assert_eq!(int(c, &["LIMIT", "a", "m1", "10"]), 10);
    assert_eq!(int(c, &["LIMIT", "a", "m2", "10"]), 10);
    let too_many = "ERR too many members on this account (limit 2)";
    assert_eq!(err(c, &["LIMIT", "a", "m3", "10"]), too_many);
    assert_eq!(
        err(c, &["RESERVE", "a", "h", "1", "MEMBER", "m3"]),
        too_many
    );
    assert_eq!(err(c, &["DEBIT", "a", "d", "1", "MEMBER", "m3"]), too_many);
    // Known members still charge; the bound is per account.
    assert_eq!(int(c, &["DEBIT", "a", "d1", "1", "MEMBER", "m1"]), 1);
    assert_eq!(int(c, &["LIMIT", "b", "m3", "10"]), 10);
    assert_eq!(balance(c, "a"), [999, 0, 1, 0, 1000]);
    // An idle member (no cap, nothing held or used) makes room.
    assert_eq!(int(c, &["LIMIT", "a", "m2", "NONE"]), 0);
    assert_eq!(int(c, &["DEBIT", "a", "d", "1", "MEMBER", "m3"]), 1);
    // A member with usage but no cap still counts.
    assert_eq!(err(c, &["LIMIT", "a", "m4", "10"]), too_many);
    let names: Vec<String> = members(c, "a").into_iter().map(|m| m.member).collect();
    assert_eq!(names, ["m1", "m3"]);
}

#[test]
fn bad_values_of_the_member_and_event_keys_are_refused_by_name() {
    let (data, config) = with_config("max_alerts_per_account = 3\n");
    let srv = Creditd::start_in(&data, &["--config", config.to_str().unwrap()]);
    let mut c = srv.client();
    let c = &mut c;
    for i in 1..=3 {
        assert_eq!(int(c, &["ALERT", "a", &i.to_string()]), i);
    }
    let limit_3 = "ERR too many alerts on this account (limit 3)";
    assert_eq!(err(c, &["ALERT", "a", "4"]), limit_3);

    // CONFIG RELOAD names the key and why, and keeps the old config.
    for (setting, why) in [
        (
            "max_members_per_account = 0",
            "0 is less than the minimum 1",
        ),
        ("max_members_per_account = -3", "-3 is negative"),
        ("max_alerts_per_account = 0", "0 is less than the minimum 1"),
        ("max_alerts_per_account = 9", "9 is more than the maximum 8"),
        ("max_events = 0", "0 is less than the minimum 1"),
        ("max_events = \"many\"", "expected an integer"),
        ("event_retention_ms = 0", "0 is less than the minimum 1"),
        ("event_retention_ms = 1.5", "expected an integer"),
    ] {
        std::fs::write(&config, format!("{setting}\n")).unwrap();
        let e = err(c, &["CONFIG", "RELOAD"]);
        let key = setting.split(' ').next().unwrap();
        assert!(
            e.starts_with("ERR ") && e.contains(&format!("{key}: {why}")),
            "{setting}: {e}"
        );
    }
    assert_eq!(
        err(c, &["ALERT", "a", "4"]),
        limit_3,
        "the old config stays"
    );
    // A good reload applies the new bounds; an account over a lowered
    // bound keeps what it has.
    let settings = "max_members_per_account = 1\nmax_alerts_per_account = 2\n\
                    max_events = 1000\nevent_retention_ms = 86400000\n";
    std::fs::write(&config, settings).unwrap();
    assert_eq!(call(c, &["CONFIG", "RELOAD"]), Ok(Value::Okay));
    assert_eq!(int(c, &["LIMIT", "a", "m1", "10"]), 10);
    assert_eq!(
        err(c, &["LIMIT", "a", "m2", "10"]),
        "ERR too many members on this account (limit 1)"
    );
    assert_eq!(int(c, &["ALERT", "a", "1"]), 3, "an existing one: no-op");
    assert_eq!(int(c, &["ALERT", "a", "1", "DEL"]), 2);
    assert_eq!(
        err(c, &["ALERT", "a", "1"]),
        "ERR too many alerts on this account (limit 2)"
    );

    // At start-up a bad value refuses to start and names the key.
    let (bad_data, bad_config) = with_config("max_alerts_per_account = 9\n");
    let output = refused_start(&[
        "--config".as_ref(),
        bad_config.as_os_str(),
        "--data-dir".as_ref(),
        bad_data.as_os_str(),
    ]);
    assert!(
        output.contains("max_alerts_per_account: 9 is more than the maximum 8"),
        "{output}"
    );
}
