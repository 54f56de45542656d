//! Events across crashes and restarts, against the real binary: an event is
//! journaled with the change (or refusal) that raised it, so `kill -9` at any
//! moment neither loses nor repeats one, its number is never reused, and a
//! snapshot keeps the log and the alert states that raise the next ones.

mod common;
mod members_support;

use common::{temp_dir, Creditd};
use members_support::*;
use std::io::Write;
use std::path::Path;
use std::time::{Duration, Instant};

/// Sends, per round, a pipeline on a fresh account with an alert at 500 of
/// 1000 credits: a debit of 100, one of 500 that crosses the threshold, and
/// a reservation refused for credits; `kill -9` follows at once or after a
/// few hundred microseconds, without reading a reply. After each restart the
/// balance says how much of the pipeline happened, and the events must say
/// the same: the `low` event exists exactly when the crossing debit does,
/// the `insufficient` one only after it; then retrying the whole pipeline
/// leaves exactly one of each. Events seen before a crash stay, unchanged.
fn crossing_then_kill9(fsync: &str, rounds: u64) {
    let dir = temp_dir("crossing");
    let mut srv = Creditd::start_in(&dir.join("data"), &["--fsync", fsync]);
    let mut seen: Vec<Event> = Vec::new();
    let mut outcomes = [0u32; 4];
    for round in 0..rounds {
        let account = format!("x{round}");
        let a = account.as_str();
        let mut c = srv.client();
        assert_eq!(int(&mut c, &["GRANT", a, "g", "1000"]), 1000);
        assert_eq!(int(&mut c, &["ALERT", a, "500"]), 1);
        let pipeline = [
            ["DEBIT", a, "d1", "100"],
            ["DEBIT", a, "d2", "500"],
            ["RESERVE", a, "h1", "5000"],
        ];
        let mut s = srv.raw();
        let text: String = pipeline.iter().map(|p| p.join(" ") + "\r\n").collect();
        s.write_all(text.as_bytes()).unwrap();
        let wait = Duration::from_micros(round * 311 % 4000);
        let sent = Instant::now();
        while sent.elapsed() < wait {
            std::hint::spin_loop();
        }
        srv.kill9();
        srv.restart();

        let mut c = srv.client();
        let b = balance(&mut c, a);
        let all = all_events(&mut c);
        assert_numbered_from_one(&all);
        assert_eq!(
            all[..seen.len()],
            seen[..],
            "round {round}: events seen before the crash changed"
        );
        let mine: Vec<(&str, &str, &str, u64, u64)> =
            all[seen.len()..].iter().map(Event::what).collect();
        assert!(
            all[seen.len()..].iter().all(|e| e.account == a),
            "round {round}: {all:?}"
        );
        let low = ("low", a, "", 400, 500);
        let insufficient = ("insufficient", a, "", 5000, 0);
        match b {
            [1000, 0, 0, 0, 1000] => assert_eq!(mine, [], "round {round}: nothing applied"),
            [900, 0, 100, 0, 1000] => assert_eq!(mine, [], "round {round}: no crossing"),
            [400, 0, 600, 0, 1000] => {
                // The refusal came after the crossing, or never happened.
                assert!(
                    mine == [low] || mine == [low, insufficient],
                    "round {round}: {mine:?}"
                );
            }
            other => panic!("round {round}: balance {other:?}"),
        }
        outcomes[match (b[0], mine.len()) {
            (1000, _) => 0,
            (900, _) => 1,
            (400, 1) => 2,
            _ => 3,
        }] += 1;

        // Retried, the pipeline completes and each event exists once.
        assert_eq!(int(&mut c, &pipeline[0]), 100);
        assert_eq!(int(&mut c, &pipeline[1]), 500);
        assert_eq!(
            err(&mut c, &pipeline[2]),
            "INSUFFICIENT need 5000 available 400"
        );
        let all = all_events(&mut c);
        assert_numbered_from_one(&all);
        assert_eq!(all[..seen.len()], seen[..]);
        let mine: Vec<_> = all[seen.len()..].iter().map(Event::what).collect();
        assert_eq!(mine, [low, insufficient], "round {round}");
        seen = all;
    }
    // Which moments the kills hit (none is required: timing decides).
    eprintln!(
        "--fsync {fsync}: {rounds} kills: nothing applied {}, first debit only {}, crossing {}, crossing and refusal {}",
        outcomes[0], outcomes[1], outcomes[2], outcomes[3]
    );
}

#[test]
fn kill9_between_a_crossing_and_its_reply_with_fsync_always() {
    crossing_then_kill9("always", 40);
}

#[test]
fn kill9_between_a_crossing_and_its_reply_with_fsync_everysec() {
    crossing_then_kill9("everysec", 24);
}

/// The first seq of the newest snapshot in `data`, if any.
fn newest_snapshot(data: &Path) -> Option<u64> {
    std::fs::read_dir(data)
        .ok()?
        .filter_map(|e| {
            let name = e.ok()?.file_name().to_string_lossy().into_owned();
            name.strip_prefix("snapshot-")?
                .strip_suffix(".snap")?
                .parse()
                .ok()
        })
        .max()
}

/// The first seq of every journal segment in `data`.
fn segments(data: &Path) -> Vec<u64> {
    std::fs::read_dir(data)
        .unwrap()
        .filter_map(|e| {
            let name = e.ok()?.file_name().to_string_lossy().into_owned();
            name.strip_prefix("journal-")?
                .strip_suffix(".log")?
                .parse()
                .ok()
        })
        .collect()
}

#[test]
fn events_and_alert_states_survive_a_snapshot_and_restarts() {
    let dir = temp_dir("events-snapshot");
    let config = dir.join("creditd.toml");
    std::fs::write(&config, "snapshot_every_records = 10\n").unwrap();
    let data = dir.join("data");
    let config = config.to_str().unwrap();
    let mut srv = Creditd::start_in(&data, &["--test-clock", "--config", config]);
    let mut c = srv.client();
    let c = &mut c;
    let now = MID_JAN_2030.to_string();
    int(c, &["CLOCK", "SET", &now]);
    assert_eq!(int(c, &["GRANT", "s", "g1", "1000"]), 1000);
    assert_eq!(int(c, &["ALERT", "s", "500"]), 1);
    assert_eq!(int(c, &["ALERT", "s", "300"]), 2);
    assert_eq!(int(c, &["DEBIT", "s", "d1", "600"]), 600);
    assert_eq!(int(c, &["LIMIT", "s", "m", "10"]), 10);
    let e = err(c, &["DEBIT", "s", "d2", "20", "MEMBER", "m"]);
    assert_eq!(e, "LIMITED need 20 remaining 10");
    let e = err(c, &["RESERVE", "s", "h1", "5000"]);
    assert_eq!(e, "INSUFFICIENT need 5000 available 400");
    let before = all_events(c);
    assert_eq!(
        before.iter().map(Event::what).collect::<Vec<_>>(),
        [
            ("low", "s", "", 400, 500),
            ("limited", "s", "m", 20, 0),
            ("insufficient", "s", "", 5000, 0),
        ]
    );
    assert_numbered_from_one(&before);

    // Writes elsewhere until a snapshot covers every record so far: the
    // journal segments holding the events' records are then deleted.
    let last = info(c, "persistence", "journal_last_seq");
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut filler = 0;
    let covered_from = loop {
        if let Some(first_seq) = newest_snapshot(&data).filter(|&s| s > last) {
            break first_seq;
        }
        assert!(Instant::now() < deadline, "no snapshot after seq {last}");
        int(c, &["GRANT", "filler", &format!("g{filler}"), "1"]);
        filler += 1;
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(
        segments(&data).iter().all(|&s| s >= covered_from),
        "segments before the snapshot's seq {covered_from} remain: {:?}",
        segments(&data)
    );

    srv.kill9();
    srv.restart();
    let mut c = srv.client();
    let c = &mut c;
    assert_eq!(all_events(c), before, "restored from the snapshot");
    assert_eq!(info(c, "accounts", "events_kept"), 3);
    assert_eq!(info(c, "accounts", "events_last_seq"), 3);
    let clock = int(c, &["CLOCK", "GET"]) as u64;
    assert!(
        (MID_JAN_2030..MID_JAN_2030 + 60_000).contains(&clock),
        "the clock came back: {clock}"
    );
    // The refusal stamps came back: the same minute raises nothing more.
    let e = err(c, &["RESERVE", "s", "h1", "5000"]);
    assert_eq!(e, "INSUFFICIENT need 5000 available 400");
    let e = err(c, &["DEBIT", "s", "d2", "20", "MEMBER", "m"]);
    assert_eq!(e, "LIMITED need 20 remaining 10");
    // So did the thresholds' states: 500 fired already, 300 is armed.
    assert_eq!(int(c, &["DEBIT", "s", "d3", "200"]), 200);
    assert_eq!(int(c, &["GRANT", "s", "g2", "1000"]), 1200);
    assert_eq!(int(c, &["DEBIT", "s", "d4", "1000"]), 1000);
    let after = all_events(c);
    assert_numbered_from_one(&after);
    assert_eq!(after[..3], before[..]);
    assert_eq!(
        after[3..].iter().map(Event::what).collect::<Vec<_>>(),
        [
            ("low", "s", "", 200, 300),
            ("low", "s", "", 200, 300),
            ("low", "s", "", 200, 500),
        ]
    );

    // Restarted from the snapshot and the journal after it: all six, once.
    srv.kill9();
    srv.restart();
    let mut c = srv.client();
    assert_eq!(all_events(&mut c), after);
    assert_eq!(info(&mut c, "accounts", "events_last_seq"), 6);
    assert_eq!(balance(&mut c, "s"), [200, 0, 1800, 0, 2000]);
}

#[test]
fn a_refusal_raises_one_event_a_minute_and_keeps_it_across_kill9() {
    let mut srv = Creditd::start(&["--test-clock"]);
    let mut c = srv.client();
    let c = &mut c;
    let t0 = MID_JAN_2030;
    int(c, &["CLOCK", "SET", &t0.to_string()]);
    assert_eq!(int(c, &["GRANT", "r", "g", "100"]), 100);
    let e = err(c, &["RESERVE", "r", "h1", "500"]);
    assert_eq!(e, "INSUFFICIENT need 500 available 100");
    let first = Event {
        seq: 1,
        at: t0,
        kind: "insufficient".into(),
        account: "r".into(),
        member: String::new(),
        value: 500,
        threshold: 0,
    };
    assert_eq!(all_events(c), std::slice::from_ref(&first));
    // Within the minute: refused again, no event (with a member, on a commit too).
    let e = err(c, &["RESERVE", "r", "h2", "600", "MEMBER", "u"]);
    assert_eq!(e, "INSUFFICIENT need 600 available 100");
    assert_eq!(int(c, &["RESERVE", "r", "h3", "50", "MEMBER", "u"]), 50);
    int(c, &["CLOCK", "ADVANCE", "59999"]);
    let e = err(c, &["COMMIT", "r", "h3", "200"]);
    assert_eq!(e, "INSUFFICIENT need 150 available 50");
    assert_eq!(
        all_events(c),
        std::slice::from_ref(&first),
        "59.999 s later: none"
    );
    // A minute later: one more, naming the hold's member.
    int(c, &["CLOCK", "ADVANCE", "1"]);
    let e = err(c, &["COMMIT", "r", "h3", "200"]);
    assert_eq!(e, "INSUFFICIENT need 150 available 50");
    let e = err(c, &["DEBIT", "r", "d1", "1000"]);
    assert_eq!(e, "INSUFFICIENT need 1000 available 50");
    // An account that does not exist raises nothing.
    let e = err(c, &["RESERVE", "ghost", "h1", "1"]);
    assert_eq!(e, "INSUFFICIENT need 1 available 0");
    let second = Event {
        seq: 2,
        at: t0 + 60_000,
        member: "u".into(),
        value: 150,
        ..first.clone()
    };
    let both = vec![first, second];
    assert_eq!(all_events(c), both);
    assert_eq!(
        balance(c, "r"),
        [50, 50, 0, 0, 100],
        "refusals changed nothing"
    );

    srv.kill9();
    srv.restart();
    let mut c = srv.client();
    let c = &mut c;
    assert_eq!(all_events(c), both, "each kept once");
    assert_eq!(balance(c, "ghost"), [0, 0, 0, 0, 0]);
    let clock = int(c, &["CLOCK", "GET"]) as u64;
    assert!(
        (t0 + 60_000..t0 + 120_000).contains(&clock),
        "the clock came back: {clock}"
    );
    // The stamp came back with it: still nothing within the minute.
    let e = err(c, &["DEBIT", "r", "d1", "1000"]);
    assert_eq!(e, "INSUFFICIENT need 1000 available 50");
    assert_eq!(all_events(c), both);
    int(c, &["CLOCK", "SET", &(t0 + 120_000).to_string()]);
    let e = err(c, &["DEBIT", "r", "d1", "1000"]);
    assert_eq!(e, "INSUFFICIENT need 1000 available 50");
    let all = all_events(c);
    assert_eq!(all[..2], both[..]);
    assert_eq!(
        all[2..],
        [Event {
            seq: 3,
            at: t0 + 120_000,
            kind: "insufficient".into(),
            account: "r".into(),
            member: String::new(),
            value: 1000,
            threshold: 0,
        }]
    );
    srv.kill9();
    srv.restart();
    let mut c = srv.client();
    assert_eq!(all_events(&mut c), all);
}
