//! Alerts and events over real TCP against the real binary: ALERT and
//! EVENTS as the contract words them (section 10), their bounds and paging,
//! and which roles may run LIMIT, ALERT, MEMBERS, EVENTS and MEMBER charges.

mod common;
mod members_support;

use common::Creditd;
use members_support::*;
use redis::Value;

#[test]
fn alerts_raise_low_events_and_events_pages_in_order() {
    let (_srv, mut c) = start_mid_january(&[]);
    let c = &mut c;
    assert_eq!(int(c, &["GRANT", "a", "g1", "1000"]), 1000);
    assert_eq!(int(c, &["ALERT", "a", "500"]), 1);
    assert_eq!(int(c, &["ALERT", "a", "500"]), 1, "adding it again: no-op");
    assert_eq!(int(c, &["ALERT", "a", "800"]), 2);
    assert_eq!(int(c, &["ALERT", "a", "200"]), 3);
    assert_eq!(int(c, &["ALERT", "a", "200", "DEL"]), 2);
    assert_eq!(
        int(c, &["alert", "a", "200", "del"]),
        2,
        "deleting it again"
    );
    for bad in [
        &["ALERT", "a", "0"][..],
        &["ALERT", "a", "1000000000000001"],
        &["ALERT", "a", "-5"],
        &["ALERT", "a", "5", "DELETE"],
        &["ALERT", "a", "5", "DEL", "x"],
        &["ALERT", "a"],
    ] {
        let e = err(c, bad);
        assert!(e.starts_with("ERR "), "{bad:?}: {e}");
    }
    assert_eq!(err(c, &["ALERT", "a", "5", "DELETE"]), "ERR syntax error");
    assert_eq!(
        err(c, &["ALERT", "a", "0"]),
        "ERR threshold out of range (1 to 10^15)"
    );
    assert_eq!(events(c, &[]), [], "thresholds alone raise nothing");

    let at = MID_JAN_2030;
    let low = |seq, value, threshold| Event {
        seq,
        at,
        kind: "low".into(),
        account: "a".into(),
        member: String::new(),
        value,
        threshold,
    };
    assert_eq!(int(c, &["DEBIT", "a", "d1", "300"]), 300);
    assert_eq!(
        int(c, &["DEBIT", "a", "d2", "100"]),
        100,
        "800 fired already"
    );
    assert_eq!(int(c, &["DEBIT", "a", "d3", "150"]), 150);
    balance(c, "a");
    assert_eq!(events(c, &[]), [low(1, 700, 800), low(2, 450, 500)]);
    // Back above both: armed again; one change below both fires both, in
    // threshold order, and a member's charge makes a low event without member.
    assert_eq!(int(c, &["GRANT", "a", "g2", "400"]), 850);
    assert_eq!(int(c, &["DEBIT", "a", "d4", "500", "MEMBER", "m"]), 500);
    // Refusals: insufficient (an account that does not exist raises nothing),
    // limited per member.
    let e = err(c, &["RESERVE", "a", "h1", "10000"]);
    assert_eq!(e, "INSUFFICIENT need 10000 available 350");
    let e = err(c, &["RESERVE", "ghost", "h1", "1"]);
    assert_eq!(e, "INSUFFICIENT need 1 available 0");
    assert_eq!(int(c, &["LIMIT", "a", "m", "600"]), 100);
    let e = err(c, &["DEBIT", "a", "d5", "200", "MEMBER", "m"]);
    assert_eq!(e, "LIMITED need 200 remaining 100");
    let e = err(c, &["DEBIT", "a", "d6", "300", "MEMBER", "m"]);
    assert_eq!(e, "LIMITED need 300 remaining 100");
    assert_eq!(int(c, &["LIMIT", "a", "m2", "10"]), 10);
    let e = err(c, &["DEBIT", "a", "d7", "20", "MEMBER", "m2"]);
    assert_eq!(e, "LIMITED need 20 remaining 10");
    let refusal = |seq, kind: &str, member: &str, value| Event {
        seq,
        at,
        kind: kind.into(),
        account: "a".into(),
        member: member.into(),
        value,
        threshold: 0,
    };
    let all = vec![
        low(1, 700, 800),
        low(2, 450, 500),
        low(3, 350, 500),
        low(4, 350, 800),
        refusal(5, "insufficient", "", 10000),
        refusal(6, "limited", "m", 200),
        refusal(7, "limited", "m2", 20),
    ];
    assert_eq!(events(c, &[]), all);

    // Paging.
    assert_eq!(events(c, &["COUNT", "3"]), all[0..3]);
    assert_eq!(events(c, &["AFTER", "3", "COUNT", "3"]), all[3..6]);
    assert_eq!(events(c, &["COUNT", "3", "AFTER", "6"]), all[6..]);
    assert_eq!(events(c, &["AFTER", "7"]), []);
    assert_eq!(events(c, &["after", "1000"]), []);
    assert_eq!(events(c, &["AFTER", "0", "COUNT", "10000"]), all);
    assert_eq!(events(c, &["AFTER", "2"]), all[2..]);
    for (bad, want) in [
        (&["COUNT", "0"][..], "ERR COUNT out of range (1 to 10000)"),
        (&["COUNT", "10001"], "ERR COUNT out of range (1 to 10000)"),
        (
            &["COUNT", "-1"],
            "ERR COUNT is not an integer or out of range",
        ),
        (
            &["AFTER", "-1"],
            "ERR AFTER is not an integer or out of range",
        ),
        (
            &["AFTER", "x"],
            "ERR AFTER is not an integer or out of range",
        ),
        (&["AFTER"], "ERR syntax error"),
        (&["COUNT", "1", "COUNT", "2"], "ERR syntax error"),
        (&["AFTER", "1", "AFTER", "2"], "ERR syntax error"),
        (&["SINCE", "1"], "ERR syntax error"),
    ] {
        let mut args = vec!["EVENTS"];
        args.extend_from_slice(bad);
        assert_eq!(err(c, &args), want, "{args:?}");
    }

    // The default COUNT is 100: 101 more accounts, one refusal event each.
    for i in 0..101 {
        let account = format!("r{i:03}");
        assert_eq!(int(c, &["GRANT", &account, "g", "1"]), 1);
        let e = err(c, &["DEBIT", &account, "d", "2"]);
        assert_eq!(e, "INSUFFICIENT need 2 available 1");
    }
    let first_page = events(c, &[]);
    assert_eq!(first_page.len(), 100);
    assert_eq!(first_page[..7], all[..]);
    assert_eq!(first_page[99].account, "r092");
    let rest = events(c, &["AFTER", "100"]);
    let seqs: Vec<u64> = rest.iter().map(|e| e.seq).collect();
    assert_eq!(seqs, (101..=108).collect::<Vec<u64>>());
    assert_eq!(rest[7].account, "r100");
    assert_eq!(info(c, "accounts", "events_kept"), 108);
    assert_eq!(info(c, "accounts", "events_last_seq"), 108);
    assert_eq!(info(c, "accounts", "events_dropped"), 0);
}

#[test]
fn alerts_are_bounded_at_eight_and_the_ninth_names_the_limit() {
    let srv = Creditd::start(&[]);
    let mut c = srv.client();
    let c = &mut c;
    assert_eq!(int(c, &["GRANT", "a", "g", "1000"]), 1000);
    for i in 1..=8 {
        assert_eq!(int(c, &["ALERT", "a", &(i * 100).to_string()]), i);
    }
    let too_many = "ERR too many alerts on this account (limit 8)";
    assert_eq!(err(c, &["ALERT", "a", "900"]), too_many);
    assert_eq!(int(c, &["ALERT", "a", "800"]), 8, "an existing one: no-op");
    assert_eq!(int(c, &["ALERT", "a", "800", "DEL"]), 7);
    assert_eq!(int(c, &["ALERT", "a", "900"]), 8);
    assert_eq!(err(c, &["ALERT", "a", "1000"]), too_many);
    // The bound is per account.
    assert_eq!(int(c, &["ALERT", "b", "1000"]), 1);
    // The refused ones were never set: a drop below 1000 fires nothing.
    assert_eq!(int(c, &["DEBIT", "a", "d", "1"]), 1);
    assert_eq!(events(c, &[]), []);
}

const TOKENS: &str = r#"
[[tokens]]
token = "admin-secret"
role = "admin"

[[tokens]]
token = "gw-secret"
role = "gateway"

[[tokens]]
token = "probe-secret"
role = "probe"
"#;

fn authed(srv: &Creditd, token: &str) -> redis::Connection {
    let mut c = srv.client();
    assert_eq!(call(&mut c, &["AUTH", token]), Ok(Value::Okay), "{token}");
    c
}

#[test]
fn roles_gateway_charges_members_and_reads_admin_sets_caps_and_alerts() {
    let (data, config) = with_config(TOKENS);
    let srv = Creditd::start_in(&data, &["--config", config.to_str().unwrap()]);
    let admin = &mut authed(&srv, "admin-secret");
    let gateway = &mut authed(&srv, "gw-secret");
    let probe = &mut authed(&srv, "probe-secret");
    let anon = &mut srv.client();

    assert_eq!(int(admin, &["GRANT", "acme", "g", "1000"]), 1000);
    assert_eq!(int(admin, &["LIMIT", "acme", "alice", "100"]), 100);
    assert_eq!(int(admin, &["ALERT", "acme", "950"]), 1);

    // The gateway charges members and reads MEMBERS and EVENTS.
    let r = [
        "RESERVE", "acme", "h1", "40", "TTL", "60000", "MEMBER", "alice",
    ];
    assert_eq!(int(gateway, &r), 40);
    assert_eq!(
        int(gateway, &["DEBIT", "acme", "d1", "50", "MEMBER", "alice"]),
        50
    );
    assert_eq!(
        err(gateway, &["DEBIT", "acme", "d2", "11", "MEMBER", "alice"]),
        "LIMITED need 11 remaining 10",
        "the admin's cap binds the gateway"
    );
    assert_eq!(int(gateway, &["COMMIT", "acme", "h1", "30"]), 30);
    assert_eq!(
        members(gateway, "acme"),
        [Member::new(
            "alice",
            100,
            "cycle",
            80,
            0,
            members(admin, "acme")[0].period_end
        )]
    );
    let seen = events(gateway, &[]);
    assert_eq!(
        seen.iter().map(Event::what).collect::<Vec<_>>(),
        [
            ("low", "acme", "", 910, 950),
            ("limited", "acme", "alice", 11, 0)
        ]
    );
    assert_eq!(events(admin, &[]), seen);

    // The gateway may not set caps or alerts; the probe may do none of it.
    let admin_only: [&[&str]; 4] = [
        &["LIMIT", "acme", "alice", "100000"],
        &["LIMIT", "acme", "alice", "NONE"],
        &["ALERT", "acme", "10"],
        &["ALERT", "acme", "950", "DEL"],
    ];
    for args in admin_only {
        assert_eq!(code(call(gateway, args)), "NOPERM", "gateway {args:?}");
        assert_eq!(code(call(probe, args)), "NOPERM", "probe {args:?}");
        assert_eq!(code(call(anon, args)), "NOAUTH", "anonymous {args:?}");
    }
    let gateway_too: [&[&str]; 6] = [
        &["MEMBERS", "acme"],
        &["EVENTS"],
        &["EVENTS", "AFTER", "1", "COUNT", "5"],
        &["RESERVE", "acme", "h2", "1", "MEMBER", "alice"],
        &["DEBIT", "acme", "d3", "1", "MEMBER", "alice"],
        &["DEBIT", "acme", "d4", "1"],
    ];
    for args in gateway_too {
        assert_eq!(code(call(probe, args)), "NOPERM", "probe {args:?}");
        assert_eq!(code(call(anon, args)), "NOAUTH", "anonymous {args:?}");
    }
    // None of the refused commands changed anything.
    assert_eq!(balance(admin, "acme"), [920, 0, 80, 0, 1000]);
    assert_eq!(
        members(admin, "acme")[0],
        Member::new(
            "alice",
            100,
            "cycle",
            80,
            0,
            members(admin, "acme")[0].period_end
        )
    );
    assert_eq!(
        call(admin, &["ALERT", "acme", "950"]),
        Ok(Value::Int(1)),
        "the alert is still there, still alone"
    );
    assert_eq!(events(admin, &[]), seen);
}
