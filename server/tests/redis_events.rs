//! Events in the Redis stream `creditd:events` against a real `redis-server`
//! and the real binary: every event once, in order, with the fields EVENTS
//! shows; consumer groups read them; restarts and kills append nothing twice;
//! a Redis that lost its data gets every retained event again, once.

mod common;
mod members_support;
mod redis_support;

use members_support::{all_events, assert_numbered_from_one, call, err, int, Event, EVENT_FIELDS};
use redis::{Connection, Value};
use redis_support::{info_field, wait_drained, wait_until, Creditd, RedisServer, TempDir};
use std::io::Write;
use std::time::Duration;

const STREAM: &str = "creditd:events";

/// Stream entries as (id, field/value pairs in order).
fn entries(v: Value) -> Vec<(String, Vec<(String, String)>)> {
    let text = |v: &Value| match v {
        Value::BulkString(b) => String::from_utf8(b.clone()).unwrap(),
        other => panic!("expected a bulk string, got {other:?}"),
    };
    let Value::Array(items) = v else {
        panic!("expected entries, got {v:?}")
    };
    items
        .into_iter()
        .map(|entry| {
            let Value::Array(parts) = entry else {
                panic!("entry: {entry:?}")
            };
            let Value::Array(fields) = &parts[1] else {
                panic!("fields: {parts:?}")
            };
            let pairs = fields
                .chunks(2)
                .map(|kv| (text(&kv[0]), text(&kv[1])))
                .collect();
            (text(&parts[0]), pairs)
        })
        .collect()
}

/// An entry's fields as an event (names checked, in the order of EVENTS).
fn as_event(fields: &[(String, String)]) -> Event {
    let names: Vec<&str> = fields.iter().map(|(k, _)| k.as_str()).collect();
    assert_eq!(names, EVENT_FIELDS, "stream entry fields");
    let n = |i: usize| -> u64 { fields[i].1.parse().expect("a number") };
    Event {
        seq: n(0),
        at: n(1),
        kind: fields[2].1.clone(),
        account: fields[3].1.clone(),
        member: fields[4].1.clone(),
        value: n(5),
        threshold: n(6),
    }
}

/// The whole stream, as events, in stream order.
fn streamed(r: &mut Connection) -> Vec<Event> {
    let range = call(r, &["XRANGE", STREAM, "-", "+"]).expect("XRANGE");
    entries(range).iter().map(|(_, f)| as_event(f)).collect()
}

/// Waits until the writer says it streamed up to `seq`.
fn wait_streamed(creditd: &Creditd, seq: u64) {
    let mut c = creditd.conn();
    assert!(
        wait_until(Duration::from_secs(10), || info_field(
            &mut c,
            "redis_events_streamed_seq"
        ) == seq),
        "streamed {} of {seq}:\n{}",
        info_field(&mut c, "redis_events_streamed_seq"),
        creditd.log_text()
    );
}

/// Raises a `low` event on a fresh account `account`.
fn low_event(c: &mut Connection, account: &str) {
    assert_eq!(int(c, &["GRANT", account, "g", "100"]), 100);
    assert_eq!(int(c, &["ALERT", account, "50"]), 1);
    assert_eq!(int(c, &["DEBIT", account, "d", "60"]), 60);
}

fn meta_events_seq(r: &mut Connection) -> Value {
    call(r, &["HGET", "creditd:meta", "events_seq"]).unwrap()
}

/// One of each type: a `low` on a, an `insufficient` on b (member u), a
/// `limited` on c (member m).
fn one_of_each(c: &mut Connection) {
    low_event(c, "a");
    assert_eq!(int(c, &["GRANT", "b", "g", "10"]), 10);
    let e = err(c, &["RESERVE", "b", "h1", "100", "MEMBER", "u"]);
    assert_eq!(e, "INSUFFICIENT need 100 available 10");
    assert_eq!(int(c, &["GRANT", "c", "g", "1000"]), 1000);
    assert_eq!(int(c, &["LIMIT", "c", "m", "10"]), 10);
    let e = err(c, &["DEBIT", "c", "d1", "20", "MEMBER", "m"]);
    assert_eq!(e, "LIMITED need 20 remaining 10");
}

const ONE_OF_EACH: [(&str, &str, &str, u64, u64); 3] = [
    ("low", "a", "", 40, 50),
    ("insufficient", "b", "u", 100, 0),
    ("limited", "c", "m", 20, 0),
];

fn whats(events: &[Event]) -> Vec<(&str, &str, &str, u64, u64)> {
    events.iter().map(Event::what).collect()
}

/// `XREADGROUP GROUP readers r1 ... >`: the entries not yet delivered to the group.
fn read_group(r: &mut Connection) -> Vec<(String, Vec<(String, String)>)> {
    let args = [
        "XREADGROUP",
        "GROUP",
        "readers",
        "r1",
        "COUNT",
        "100",
        "STREAMS",
        STREAM,
        ">",
    ];
    match call(r, &args).expect("XREADGROUP") {
        Value::Nil => Vec::new(),
        Value::Array(streams) => {
            let Value::Array(parts) = &streams[0] else {
                panic!("{streams:?}")
            };
            entries(parts[1].clone())
        }
        other => panic!("XREADGROUP: {other:?}"),
    }
}

#[test]
fn events_reach_the_stream_once_and_again_after_a_flush() {
    let redis = RedisServer::start();
    let dir = TempDir::new("events-stream");
    let creditd = Creditd::start(&dir.path().join("data"), &["--redis", &redis.url()]);
    let mut c = creditd.conn();
    let c = &mut c;
    let mut r = redis.conn();
    let r = &mut r;

    one_of_each(c);
    let mut kept = all_events(c);
    assert_eq!(whats(&kept), ONE_OF_EACH);
    wait_streamed(&creditd, 3);
    assert_eq!(streamed(r), kept, "the stream holds EVENTS, once, in order");
    assert_eq!(meta_events_seq(r), Value::BulkString(b"3".to_vec()));

    // A consumer group reads them all, then nothing new, then the next one.
    let created = call(r, &["XGROUP", "CREATE", STREAM, "readers", "0"]);
    assert_eq!(created, Ok(Value::Okay));
    let first = read_group(r);
    let events: Vec<Event> = first.iter().map(|(_, f)| as_event(f)).collect();
    assert_eq!(events, kept);
    let mut ack = vec!["XACK", STREAM, "readers"];
    ack.extend(first.iter().map(|(id, _)| id.as_str()));
    assert_eq!(int(r, &ack), 3);
    assert_eq!(read_group(r), []);
    low_event(c, "d");
    kept = all_events(c);
    assert_numbered_from_one(&kept);
    wait_streamed(&creditd, 4);
    assert_eq!(streamed(r), kept);
    let next = read_group(r);
    assert_eq!(next.len(), 1);
    assert_eq!(as_event(&next[0].1), kept[3]);

    // Redis loses everything: the writer notices within seconds and
    // appends every retained event again, once each, in order.
    assert_eq!(call(r, &["FLUSHALL"]), Ok(Value::Okay));
    assert!(
        wait_until(Duration::from_secs(6), || streamed(r).len() >= kept.len()),
        "the stream was not written again:\n{}",
        creditd.log_text()
    );
    assert_eq!(info_field(c, "redis_data_loss_events"), 1);
    wait_drained(&creditd, Duration::from_secs(10));
    wait_streamed(&creditd, 4);
    assert_eq!(streamed(r), kept, "each retained event once");
    assert_eq!(meta_events_seq(r), Value::BulkString(b"4".to_vec()));
    low_event(c, "e");
    kept = all_events(c);
    assert_eq!(kept.len(), 5);
    wait_streamed(&creditd, 5);
    assert_eq!(streamed(r), kept);
    // A group made after the flush reads the whole stream.
    let created = call(r, &["XGROUP", "CREATE", STREAM, "readers", "0"]);
    assert_eq!(created, Ok(Value::Okay));
    assert_eq!(read_group(r).len(), 5);
}

/// Restarts append nothing twice and keep numbering after the stream; EVENTS
/// still lists what was kept before (the contract keeps events 7 days, and
/// a restart without --redis keeps them: see events.rs).
#[test]
fn restarts_with_redis_append_nothing_twice_and_keep_the_events() {
    let redis = RedisServer::start();
    let dir = TempDir::new("events-restart");
    let mut creditd = Creditd::start(&dir.path().join("data"), &["--redis", &redis.url()]);
    let mut c = creditd.conn();
    let mut r = redis.conn();
    let r = &mut r;
    one_of_each(&mut c);
    let before = all_events(&mut c);
    wait_streamed(&creditd, 3);
    assert_eq!(streamed(r), before);

    // kill -9, restart: the stream is untouched; a new event is number 4, once.
    creditd.kill9();
    creditd.restart();
    let mut c = creditd.conn();
    wait_streamed(&creditd, 3);
    assert_eq!(streamed(r), before, "nothing appended again");
    low_event(&mut c, "d");
    wait_streamed(&creditd, 4);
    let stream = streamed(r);
    assert_eq!(stream[..3], before[..]);
    assert_eq!(stream.len(), 4);
    assert_eq!(
        (stream[3].seq, stream[3].what()),
        (4, ("low", "d", "", 40, 50))
    );

    // A graceful restart: the same.
    creditd.terminate();
    creditd.restart();
    let mut c = creditd.conn();
    wait_streamed(&creditd, 4);
    wait_drained(&creditd, Duration::from_secs(10));
    assert_eq!(streamed(r), stream, "nothing appended again");

    // EVENTS lists every event the stream has, after both restarts.
    assert_eq!(
        all_events(&mut c),
        stream,
        "EVENTS after restarts with --redis"
    );
}

/// Events acknowledged just before a `kill -9` (the writer may not have
/// streamed them yet) reach the stream exactly once after the restart.
#[test]
fn events_acknowledged_just_before_kill9_are_streamed_once() {
    let redis = RedisServer::start();
    let dir = TempDir::new("events-kill");
    let mut creditd = Creditd::start(&dir.path().join("data"), &["--redis", &redis.url()]);
    let mut r = redis.conn();
    let mut expected: Vec<(u64, String, u64)> = Vec::new();
    for round in 0..6u64 {
        let mut c = creditd.conn();
        let account = format!("k{round}");
        assert_eq!(int(&mut c, &["GRANT", &account, "g", "100"]), 100);
        assert_eq!(int(&mut c, &["ALERT", &account, "50"]), 1);
        // The crossing and a refusal, both acknowledged; then kill -9 at once.
        let mut s = std::net::TcpStream::connect(("127.0.0.1", creditd.port)).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let text = format!("DEBIT {account} d 60\r\nRESERVE {account} h 500\r\n");
        s.write_all(text.as_bytes()).unwrap();
        let replies = common::read_replies(&mut s, 2);
        assert_eq!(replies, [":60", "-INSUFFICIENT need 500 available 40"]);
        creditd.kill9();
        expected.push((2 * round + 1, "low".into(), 40));
        expected.push((2 * round + 2, "insufficient".into(), 500));
        creditd.restart();
        wait_streamed(&creditd, 2 * (round + 1));
        let stream = streamed(&mut r);
        let got: Vec<(u64, String, u64)> = stream
            .iter()
            .map(|e| (e.seq, e.kind.clone(), e.value))
            .collect();
        assert_eq!(got, expected, "round {round}");
    }
    // And EVENTS lists them too.
    let mut c = creditd.conn();
    assert_eq!(
        all_events(&mut c),
        streamed(&mut r),
        "EVENTS after restarts with --redis"
    );
}

/// A deterministic case of the kill above: the account's change reached
/// Redis, the append of its event failed (the stream key held a string),
/// then the process died. After the restart (the key fixed) the event must
/// still reach the stream.
#[test]
fn an_event_whose_append_failed_before_a_kill9_is_streamed_after_the_restart() {
    let redis = RedisServer::start();
    let dir = TempDir::new("events-wrongtype");
    let mut creditd = Creditd::start(&dir.path().join("data"), &["--redis", &redis.url()]);
    let mut r = redis.conn();
    assert_eq!(
        call(&mut r, &["SET", STREAM, "not-a-stream"]),
        Ok(Value::Okay)
    );
    let mut c = creditd.conn();
    low_event(&mut c, "a");
    let raised = all_events(&mut c);
    assert_eq!(whats(&raised), [("low", "a", "", 40, 50)]);
    wait_drained(&creditd, Duration::from_secs(10));
    let available = call(&mut r, &["HGET", "creditd:acct:a", "available"]);
    assert_eq!(available, Ok(Value::BulkString(b"40".to_vec())));
    assert!(
        wait_until(Duration::from_secs(10), || {
            redis_support::info_text(&mut c, "redis_last_error").contains("WRONGTYPE")
        }),
        "the append was refused:\n{}",
        creditd.log_text()
    );
    assert_eq!(info_field(&mut c, "redis_events_streamed_seq"), 0);

    creditd.kill9();
    assert_eq!(int(&mut r, &["DEL", STREAM]), 1);
    creditd.restart();
    let mut c = creditd.conn();
    wait_streamed(&creditd, 1);
    assert_eq!(streamed(&mut r), raised);
    assert_eq!(all_events(&mut c), raised);
}
