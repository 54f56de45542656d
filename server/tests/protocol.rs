//! The wire contract over real TCP: commands and error codes with a stock
//! client (redis-rs), pipelining, inline commands, RESP3, limits and hostile input.

mod common;

use common::*;
use std::io::{Read, Write};
use std::time::{Duration, Instant};

#[test]
fn holds_lifecycle_and_error_codes() {
    let srv = Creditd::start(&[]);
    let mut c = srv.client();
    assert_eq!(int(&mut c, &["GRANT", "acme", "g1", "1000"]), 1000);
    assert_eq!(
        int(&mut c, &["grant", "acme", "g1", "1000"]),
        1000,
        "retry repeats the reply"
    );
    assert!(err(&mut c, &["GRANT", "acme", "g1", "999"]).starts_with("CONFLICT"));
    assert_eq!(int(&mut c, &["RESERVE", "acme", "h1", "300"]), 300);
    assert_eq!(
        int(&mut c, &["RESERVE", "acme", "h1", "300"]),
        300,
        "idempotent"
    );
    assert!(err(&mut c, &["RESERVE", "acme", "h1", "301"]).starts_with("CONFLICT"));
    assert_eq!(balance(&mut c, "acme"), [700, 300, 0, 0, 1000]);
    // Cumulative captures: a lower total changes nothing.
    assert_eq!(int(&mut c, &["CAPTURE", "acme", "h1", "100"]), 100);
    assert_eq!(int(&mut c, &["CAPTURE", "acme", "h1", "50"]), 100);
    assert_eq!(balance(&mut c, "acme"), [700, 200, 100, 0, 1000]);
    // Commit 7 of 10: debits the total less captures, releases the rest.
    assert_eq!(int(&mut c, &["COMMIT", "acme", "h1", "210"]), 210);
    assert_eq!(int(&mut c, &["COMMIT", "acme", "h1", "210"]), 210);
    assert!(err(&mut c, &["COMMIT", "acme", "h1", "211"]).starts_with("CONFLICT"));
    assert!(err(&mut c, &["RELEASE", "acme", "h1"]).starts_with("CONFLICT"));
    assert_eq!(balance(&mut c, "acme"), [790, 0, 210, 0, 1000]);
    // Overage from available, or INSUFFICIENT with the exact shape.
    assert_eq!(int(&mut c, &["RESERVE", "acme", "h2", "100"]), 100);
    assert_eq!(
        err(&mut c, &["COMMIT", "acme", "h2", "1000"]),
        "INSUFFICIENT need 900 available 690"
    );
    assert_eq!(int(&mut c, &["COMMIT", "acme", "h2", "150"]), 150);
    assert_eq!(balance(&mut c, "acme"), [640, 0, 360, 0, 1000]);
    // Release returns; repeated release repeats.
    assert_eq!(
        int(&mut c, &["RESERVE", "acme", "h3", "40", "TTL", "5000"]),
        40
    );
    assert_eq!(int(&mut c, &["RELEASE", "acme", "h3"]), 40);
    assert_eq!(int(&mut c, &["RELEASE", "acme", "h3"]), 40);
    assert!(err(&mut c, &["COMMIT", "acme", "h3"]).starts_with("CONFLICT"));
    // Unknown holds, debits, free reservations.
    assert!(err(&mut c, &["COMMIT", "acme", "nope"]).starts_with("NOTFOUND"));
    assert!(err(&mut c, &["EXTEND", "acme", "nope", "100"]).starts_with("NOTFOUND"));
    assert_eq!(int(&mut c, &["DEBIT", "acme", "d1", "40"]), 40);
    assert_eq!(int(&mut c, &["DEBIT", "acme", "d1", "40"]), 40);
    assert_eq!(int(&mut c, &["RESERVE", "acme", "free", "0"]), 0);
    assert_eq!(int(&mut c, &["COMMIT", "acme", "free"]), 0);
    assert_eq!(
        err(&mut c, &["RESERVE", "nobody", "h", "1"]),
        "INSUFFICIENT need 1 available 0"
    );
    assert_eq!(balance(&mut c, "nobody"), [0, 0, 0, 0, 0]);
    // Syntax, arity, numbers.
    assert!(err(&mut c, &["RESERVE", "acme", "h9"]).starts_with("ERR wrong number of arguments"));
    assert!(err(&mut c, &["RESERVE", "acme", "h9", "-1"]).starts_with("ERR"));
    assert!(err(&mut c, &["RESERVE", "acme", "h9", "1", "TTL", "0"]).starts_with("ERR"));
    assert!(err(&mut c, &["RESERVE", "acme", "h9", "1", "BOGUS", "5"]).starts_with("ERR syntax"));
    assert!(err(&mut c, &["GRANT", "acme", "g9", "1000000000000001"]).starts_with("ERR"));
    assert!(err(&mut c, &["GRANT", "acme", "g9", "1", "KIND", "gold"]).starts_with("ERR"));
    let long_id = "x".repeat(129);
    assert!(err(&mut c, &["GRANT", &long_id, "g", "1"]).starts_with("ERR"));
    assert!(err(&mut c, &["NOSUCH", "x"]).starts_with("ERR unknown command 'NOSUCH'"));
    // The connection survived all of that.
    assert_conserved(balance(&mut c, "acme"));
    assert_eq!(
        cmd(&mut c, &["PING"]),
        Ok(redis::Value::SimpleString("PONG".into()))
    );
}

#[test]
fn account_history_quote_and_reads() {
    let srv = Creditd::start(&[]);
    let mut c = srv.client();
    int(&mut c, &["GRANT", "w", "pack", "500"]);
    int(
        &mut c,
        &[
            "GRANT", "w", "promo", "100", "KIND", "promo", "TTL", "3600000", "PRIORITY", "10",
        ],
    );
    int(&mut c, &["RESERVE", "w", "job", "150"]);
    let acct = fields(&mut c, &["ACCOUNT", "w"]);
    let names: Vec<&str> = acct.iter().map(|(k, _)| k.as_str()).collect();
    assert_eq!(
        names,
        [
            "available",
            "held",
            "spent",
            "expired",
            "granted",
            "plan",
            "seats",
            "cycle_start",
            "cycle_end",
            "buckets",
            "holds"
        ]
    );
    // Spending order: the promo (priority 10) went first, then the pack.
    let buckets = match &acct[9].1 {
        redis::Value::Array(b) => b.clone(),
        other => panic!("buckets: {other:?}"),
    };
    assert_eq!(buckets.len(), 1, "promo is emptied by the hold");
    let holds = match &acct[10].1 {
        redis::Value::Array(h) => h.clone(),
        other => panic!("holds: {other:?}"),
    };
    assert_eq!(holds.len(), 1);
    let history = match cmd(&mut c, &["HISTORY", "w", "COUNT", "2"]).unwrap() {
        redis::Value::Array(h) => h,
        other => panic!("{other:?}"),
    };
    assert_eq!(history.len(), 2);
    let newest = format!("{:?}", history[0]);
    assert!(newest.contains("reserve"), "newest first: {newest}");
    assert_eq!(
        int(&mut c, &["QUOTE", "image/flux-2-pro", "4"]),
        288,
        "80 x 4 less 10 %"
    );
    assert!(err(&mut c, &["QUOTE", "image/nope", "1"]).starts_with("NOTFOUND"));
}

#[test]
fn pipelined_10000_reserves_in_one_write() {
    let srv = Creditd::start(&[]);
    let mut c = srv.client();
    int(&mut c, &["GRANT", "p", "g", "100000000"]);
    let mut s = srv.raw();
    let mut batch = Vec::new();
    for i in 0..10_000u32 {
        let hold = format!("h{i}");
        let amount = (i % 97).to_string();
        write!(
            batch,
            "*4\r\n$7\r\nRESERVE\r\n$1\r\np\r\n${}\r\n{}\r\n${}\r\n{}\r\n",
            hold.len(),
            hold,
            amount.len(),
            amount
        )
        .unwrap();
    }
    s.write_all(&batch).unwrap();
    let replies = read_replies(&mut s, 10_000);
    for (i, r) in replies.iter().enumerate() {
        assert_eq!(r, &format!(":{}", i % 97), "reply {i} in order");
    }
    let b = balance(&mut c, "p");
    assert_eq!(b[1], (0..10_000u64).map(|i| i % 97).sum::<u64>() as i64);
    assert_conserved(b);
}

#[test]
fn inline_commands_resp3_and_connection_commands() {
    let srv = Creditd::start(&[]);
    let mut s = srv.raw();
    s.write_all(b"GRANT inl g1 10\r\nPING\r\nECHO \"a b\"\r\n\r\nBALANCE inl\r\n")
        .unwrap();
    let r = read_replies(&mut s, 4);
    assert_eq!(r[0], ":10");
    assert_eq!(r[1], "+PONG");
    assert_eq!(r[2], "a b");
    assert_eq!(
        r[3],
        "[available,:10,held,:0,spent,:0,expired,:0,granted,:10]"
    );
    // RESP3: maps.
    s.write_all(b"HELLO 3\r\nBALANCE inl\r\nCLIENT SETNAME me\r\nCLIENT GETNAME\r\nSELECT 0\r\nSELECT 1\r\n").unwrap();
    let r = read_replies(&mut s, 6);
    assert!(r[0].contains("creditd") && r[0].contains(":3"), "{}", r[0]);
    assert_eq!(
        r[1],
        "[available,:10,held,:0,spent,:0,expired,:0,granted,:10]"
    );
    assert_eq!(r[2], "+OK");
    assert_eq!(r[3], "me");
    assert_eq!(r[4], "+OK");
    assert!(r[5].starts_with("-ERR"));
    // COMMAND (for redis-cli), CONFIG GET (for redis-benchmark), CLOCK without --test-clock.
    s.write_all(b"COMMAND COUNT\r\nCONFIG GET save\r\nCLOCK GET\r\nQUIT\r\n")
        .unwrap();
    let r = read_replies(&mut s, 4);
    assert!(r[0].starts_with(':'));
    assert_eq!(r[1], "[]");
    assert!(r[2].starts_with("-ERR"));
    assert_eq!(r[3], "+OK");
    let mut rest = Vec::new();
    assert_eq!(s.read_to_end(&mut rest).unwrap_or(0), 0, "QUIT closes");
}

#[test]
fn protocol_errors_close_only_that_connection() {
    let srv = Creditd::start(&[]);
    let mut ok = srv.client();
    for bad in [
        &b"*1\r\n$abc\r\n"[..],
        b"*999999999999\r\n",
        b"*2\r\n$4\r\nPING\r\n:12\r\n",
        b"*1\r\n$999999999\r\n",
        b"\"unbalanced\r\n",
    ] {
        let mut s = srv.raw();
        s.write_all(bad).unwrap();
        let mut buf = Vec::new();
        let _ = s.read_to_end(&mut buf);
        let text = String::from_utf8_lossy(&buf);
        assert!(
            text.starts_with("-ERR Protocol error"),
            "{bad:?} -> {text:?}"
        );
    }
    assert_eq!(
        cmd(&mut ok, &["PING"]),
        Ok(redis::Value::SimpleString("PONG".into()))
    );
}

fn rss_kb(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

/// A tiny xorshift so the test needs no RNG crate features.
fn next(state: &mut u64) -> u64 {
    *state ^= *state << 13;
    *state ^= *state >> 7;
    *state ^= *state << 17;
    *state
}

#[test]
fn hostile_input_never_crashes_or_grows_without_bound() {
    let srv = Creditd::start(&[]);
    let pid = srv.pid();
    let mut c = srv.client();
    int(&mut c, &["GRANT", "h", "g", "1000"]);
    let rss_before = rss_kb(pid);
    // Random bytes on many connections.
    let mut seed = 0x9e37_79b9_7f4a_7c15u64;
    for _ in 0..200 {
        let mut s = srv.raw();
        s.set_read_timeout(Some(Duration::from_millis(200)))
            .unwrap();
        let len = (next(&mut seed) % 4096) as usize;
        let bytes: Vec<u8> = (0..len).map(|_| next(&mut seed) as u8).collect();
        let _ = s.write_all(&bytes);
        let mut buf = [0u8; 256];
        let _ = s.read(&mut buf);
    }
    // Giant declared lengths and half frames, then hang up.
    for bad in [
        &b"*1024\r\n$1048576\r\nabc"[..],
        b"*3\r\n$7\r\nRESERVE\r\n$1\r\n",
        b"$99999",
    ] {
        let mut s = srv.raw();
        s.write_all(bad).unwrap();
        drop(s);
    }
    // An inline line that never ends: refused at 64 KiB, not buffered.
    let mut s = srv.raw();
    let _ = s.write_all(&vec![b'a'; 200 * 1024]);
    let mut buf = Vec::new();
    let _ = s.read_to_end(&mut buf);
    assert!(String::from_utf8_lossy(&buf).starts_with("-ERR Protocol error"));
    // 1,000 idle connections.
    let idle: Vec<_> = (0..1000).map(|_| srv.raw()).collect();
    assert_eq!(int(&mut c, &["RESERVE", "h", "r1", "10"]), 10);
    let rss_idle = rss_kb(pid);
    drop(idle);
    // A client that never reads: the server stops reading it instead of buffering.
    let mut greedy = srv.raw();
    greedy
        .set_write_timeout(Some(Duration::from_millis(500)))
        .unwrap();
    let chunk = b"BALANCE h\r\n".repeat(10_000);
    let started = Instant::now();
    let mut sent = 0usize;
    while started.elapsed() < Duration::from_secs(3) {
        match greedy.write(&chunk) {
            Ok(n) => sent += n,
            Err(_) => break, // the server stopped reading: backpressure
        }
        if sent > 400 * 1024 * 1024 {
            break;
        }
    }
    let rss_greedy = rss_kb(pid);
    assert!(
        sent < 400 * 1024 * 1024,
        "server kept reading a client that never reads"
    );
    drop(greedy);
    assert_eq!(int(&mut c, &["RESERVE", "h", "r2", "10"]), 10);
    assert_conserved(balance(&mut c, "h"));
    // Memory stays bounded: well under 200 MiB above the start.
    for rss in [rss_idle, rss_greedy] {
        assert!(
            rss < rss_before + 200 * 1024,
            "rss grew from {rss_before} kB to {rss} kB"
        );
    }
}

#[test]
fn connection_limit_answers_max_clients() {
    let dir = temp_dir("maxclients");
    let config = dir.join("creditd.toml");
    std::fs::write(&config, "max_clients = 3\n").unwrap();
    let srv = Creditd::start_in(&dir.join("data"), &["--config", config.to_str().unwrap()]);
    // The harness's own readiness probe may still count as open for a
    // moment after it closed: a connection refused meanwhile is retried,
    // so that exactly three are served before the fourth is tried.
    let keep: Vec<_> = (0..3)
        .map(|_| {
            let deadline = Instant::now() + Duration::from_secs(5);
            loop {
                let mut s = srv.raw();
                // A refused connection may be reset under the write or read.
                let _ = s.write_all(b"PING\r\n");
                let mut reply = String::new();
                let mut reader = std::io::BufReader::new(s.try_clone().unwrap());
                let _ = std::io::BufRead::read_line(&mut reader, &mut reply);
                if reply == "+PONG\r\n" {
                    break s;
                }
                assert!(Instant::now() < deadline, "three connections are served");
                std::thread::sleep(Duration::from_millis(20));
            }
        })
        .collect();
    let mut extra = srv.raw();
    let mut buf = Vec::new();
    let _ = extra.read_to_end(&mut buf);
    assert_eq!(
        String::from_utf8_lossy(&buf),
        "-ERR max number of clients reached\r\n"
    );
    drop(keep);
}

#[test]
fn multi_exec_as_redis_py_pipelines_send_it() {
    let srv = Creditd::start(&[]);
    let mut s = srv.raw();
    s.write_all(b"MULTI\r\nGRANT tx g 100\r\nRESERVE tx h 30\r\nRESERVE tx h2 1000\r\nEXEC\r\n")
        .unwrap();
    let r = read_replies(&mut s, 5);
    assert_eq!(r[..4], ["+OK", "+QUEUED", "+QUEUED", "+QUEUED"]);
    assert_eq!(r[4], "[:100,:30,-INSUFFICIENT need 1000 available 70]");
    s.write_all(b"MULTI\r\nNOSUCH\r\nRESERVE tx h3 1\r\nEXEC\r\nBALANCE tx\r\n")
        .unwrap();
    let r = read_replies(&mut s, 5);
    assert!(r[1].starts_with("-ERR unknown command"));
    assert!(r[3].starts_with("-EXECABORT"), "{}", r[3]);
    assert_eq!(
        r[4],
        "[available,:70,held,:30,spent,:0,expired,:0,granted,:100]"
    );
    s.write_all(b"MULTI\r\nRESERVE tx h4 1\r\nDISCARD\r\nEXEC\r\nDISCARD\r\n")
        .unwrap();
    let r = read_replies(&mut s, 5);
    assert_eq!(r[..3], ["+OK", "+QUEUED", "+OK"]);
    assert_eq!(r[3], "-ERR EXEC without MULTI");
    assert_eq!(r[4], "-ERR DISCARD without MULTI");
    // redis-rs's atomic pipeline is MULTI/EXEC too.
    let mut c = srv.client();
    let (a, b): (i64, i64) = redis::pipe()
        .atomic()
        .cmd("RESERVE")
        .arg("tx")
        .arg("p1")
        .arg("5")
        .cmd("RESERVE")
        .arg("tx")
        .arg("p2")
        .arg("6")
        .query(&mut c)
        .unwrap();
    assert_eq!((a, b), (5, 6));
}

#[test]
fn large_replies_flush_mid_batch_and_the_rest_still_runs() {
    let srv = Creditd::start(&[]);
    let mut c = srv.client();
    int(&mut c, &["GRANT", "big", "g", "1000000"]);
    let mut s = srv.raw();
    let mut setup = Vec::new();
    for i in 0..600 {
        write!(setup, "RESERVE big h{i} 1\r\n").unwrap();
    }
    s.write_all(&setup).unwrap();
    read_replies(&mut s, 600);
    // 200 HISTORY replies of ~600 entries each (tens of MB) in one small
    // write: the server must flush at its 1 MiB bound and carry on with the
    // frames still buffered, without waiting for more input.
    let batch = "HISTORY big COUNT 1000\r\n".repeat(200) + "PING\r\n";
    s.write_all(batch.as_bytes()).unwrap();
    let replies = read_replies(&mut s, 201);
    assert!(replies[..200]
        .iter()
        .all(|r| r.matches("reserve").count() == 600));
    assert_eq!(replies[200], "+PONG");
}

/// Every number a command takes is read as Redis reads integers, without the
/// sign the contract forbids: no leading zeros, nothing above i64::MAX (which
/// used to come back negative), and the error names the argument.
#[test]
fn integers_are_strict_everywhere() {
    let srv = Creditd::start(&["--test-clock"]);
    let mut c = srv.client();
    assert_eq!(
        int(&mut c, &["GRANT", "n", "g0", "0"]),
        0,
        "0 alone is fine"
    );
    assert_eq!(int(&mut c, &["GRANT", "n", "g1", "1000"]), 1000);
    int(&mut c, &["RESERVE", "n", "h1", "10"]);
    int(&mut c, &["SUBSCRIBE", "p", "pro"]);
    // (command with X where the number goes, the name the error gives)
    let cases: &[(&[&str], &str)] = &[
        (&["GRANT", "n", "gx", "X"], "amount"),
        (&["GRANT", "n", "gx", "1", "EXPIRES", "X"], "EXPIRES"),
        (&["GRANT", "n", "gx", "1", "TTL", "X"], "TTL"),
        (&["GRANT", "n", "gx", "1", "PRIORITY", "X"], "PRIORITY"),
        (&["RESERVE", "n", "hx", "X"], "amount"),
        (
            &["RESERVE", "n", "hx", "SKU", "image/flux-2-pro", "QTY", "X"],
            "QTY",
        ),
        (&["RESERVE", "n", "hx", "1", "TTL", "X"], "TTL"),
        (&["CAPTURE", "n", "h1", "X"], "total"),
        (&["CAPTURE", "n", "h1", "QTY", "X"], "QTY"),
        (&["COMMIT", "n", "h1", "X"], "total"),
        (&["EXTEND", "n", "h1", "X"], "ttl_ms"),
        (&["DEBIT", "n", "dx", "X"], "amount"),
        (&["QUOTE", "image/flux-2-pro", "X"], "qty"),
        (&["HISTORY", "n", "COUNT", "X"], "COUNT"),
        (&["SUBSCRIBE", "s", "pro", "SEATS", "X"], "SEATS"),
        (&["SUBSCRIBE", "s", "pro", "ANCHOR", "X"], "ANCHOR"),
        (&["SEATS", "p", "X"], "seats"),
        (&["ADDON", "p", "X"], "units"),
        (&["CLOCK", "SET", "X"], "at_ms"),
        (&["CLOCK", "ADVANCE", "X"], "ms"),
    ];
    for (args, what) in cases {
        for bad in [
            "05",
            "00",
            "-5",
            "+5",
            "-0",
            " 5",
            "5.0",
            "9223372036854775808",
            "18446744073709551615",
        ] {
            let args: Vec<&str> = args
                .iter()
                .map(|a| if *a == "X" { bad } else { a })
                .collect();
            assert_eq!(
                err(&mut c, &args),
                format!("ERR {what} is not an integer or out of range"),
                "{args:?}"
            );
        }
    }
    assert_eq!(
        err(&mut c, &["QUOTE", "image/flux-2-pro", "1000000000000001"]),
        "ERR qty out of range (0 to 10^15)"
    );
    // The top of the range is accepted and comes back as it went in.
    let max = "9223372036854775807";
    int(&mut c, &["GRANT", "n", "gmax", "1", "EXPIRES", max]);
    let account = format!("{:?}", cmd(&mut c, &["ACCOUNT", "n"]));
    assert!(
        account.contains(&format!("int({max})")),
        "ACCOUNT shows EXPIRES {max}: {account}"
    );
    assert_eq!(
        cmd(&mut c, &["HISTORY", "n", "COUNT", "0"]),
        Ok(redis::Value::Array(vec![]))
    );
    // No refused command was applied.
    assert_eq!(balance(&mut c, "n"), [991, 10, 0, 0, 1001]);
    assert_eq!(int(&mut c, &["CLOCK", "SET", max]), i64::MAX);
    assert!(err(&mut c, &["CLOCK", "ADVANCE", "1"]).starts_with("ERR CLOCK ADVANCE"));
    assert_eq!(int(&mut c, &["CLOCK", "ADVANCE", "0"]), i64::MAX);
}

/// A bulk-string request of `args`, as clients send it.
fn request(args: &[&[u8]]) -> Vec<u8> {
    let mut out = format!("*{}\r\n", args.len()).into_bytes();
    for a in args {
        out.extend_from_slice(format!("${}\r\n", a.len()).as_bytes());
        out.extend_from_slice(a);
        out.extend_from_slice(b"\r\n");
    }
    out
}

/// One MULTI can neither queue more than 16 MiB nor more than 10,000
/// commands: past either the transaction fails as on any queueing error (EXEC
/// answers EXECABORT) and nothing more is kept; the server stays small and
/// serves everyone.
#[test]
fn multi_queue_is_bounded_in_bytes_and_commands() {
    let srv = Creditd::start(&[]);
    let pid = srv.pid();
    let mut c = srv.client();
    int(&mut c, &["GRANT", "mq", "g", "100"]);
    let rss_before = rss_kb(pid);
    // 200 commands of 1 MiB each: 200 MiB if kept.
    let mut s = srv.raw();
    s.write_all(b"MULTI\r\n").unwrap();
    let big = vec![b'x'; 1024 * 1024];
    let one = request(&[b"ECHO", &big]);
    for _ in 0..200 {
        s.write_all(&one).unwrap();
    }
    s.write_all(b"PING\r\n").unwrap();
    // Once PING's QUEUED is back, every ECHO was handled.
    let mut reader = std::io::BufReader::new(s.try_clone().unwrap());
    let replies: Vec<String> = (0..202).map(|_| read_one(&mut reader)).collect();
    let rss_queued = rss_kb(pid);
    assert_eq!(replies[0], "+OK");
    let refused: Vec<_> = replies.iter().filter(|r| r.starts_with('-')).collect();
    assert_eq!(
        refused,
        ["-ERR too many bytes in MULTI (limit 16 MiB); EXEC will discard the transaction"]
    );
    assert!(replies[1..16].iter().all(|r| r == "+QUEUED"), "{replies:?}");
    s.write_all(b"EXEC\r\nBALANCE mq\r\n").unwrap();
    assert!(read_one(&mut reader).starts_with("-EXECABORT"));
    assert_eq!(
        read_one(&mut reader),
        "[available,:100,held,:0,spent,:0,expired,:0,granted,:100]"
    );
    assert!(
        rss_queued < rss_before + 100 * 1024,
        "rss grew from {rss_before} kB to {rss_queued} kB"
    );
    // The count bound: 10,001 small commands.
    let mut batch = b"MULTI\r\n".to_vec();
    for i in 0..10_001 {
        batch.extend_from_slice(format!("RESERVE mq h{i} 1\r\n").as_bytes());
    }
    batch.extend_from_slice(b"EXEC\r\n");
    s.write_all(&batch).unwrap();
    let replies: Vec<String> = (0..10_003).map(|_| read_one(&mut reader)).collect();
    assert!(replies[1..10_001].iter().all(|r| r == "+QUEUED"));
    assert_eq!(
        replies[10_001],
        "-ERR too many commands in MULTI (limit 10000); EXEC will discard the transaction"
    );
    assert!(
        replies[10_002].starts_with("-EXECABORT"),
        "{}",
        replies[10_002]
    );
    // Nothing ran; others are served.
    assert_eq!(balance(&mut c, "mq"), [100, 0, 0, 0, 100]);
    assert_eq!(int(&mut c, &["RESERVE", "mq", "after", "1"]), 1);
}

/// EXEC's replies go out as they are produced, flushed at the same bound as
/// pipelined replies: a transaction of 2,000 large reads sent by a client that
/// does not read does not make the server build hundreds of MiB of replies.
#[test]
fn exec_replies_are_flushed_not_built_whole() {
    let srv = Creditd::start(&[]);
    let pid = srv.pid();
    let mut c = srv.client();
    int(&mut c, &["GRANT", "ex", "g", "1000000"]);
    let mut s = srv.raw();
    let setup: String = (0..999).map(|i| format!("RESERVE ex h{i} 1\r\n")).collect();
    s.write_all(setup.as_bytes()).unwrap();
    read_replies(&mut s, 999);
    // One HISTORY reply (1,000 entries, about 100 kB), as bytes: all that
    // comes before the PONG sent after it.
    let mut probe = srv.raw();
    probe
        .write_all(b"HISTORY ex COUNT 1000\r\nPING\r\n")
        .unwrap();
    let mut one = Vec::new();
    let mut chunk = [0u8; 65536];
    while !one.ends_with(b"+PONG\r\n") {
        let n = probe.read(&mut chunk).unwrap();
        assert!(n > 0, "connection closed");
        one.extend_from_slice(&chunk[..n]);
    }
    one.truncate(one.len() - b"+PONG\r\n".len());
    assert!(one.len() > 50_000, "{}", one.len());
    let n = 2_000;
    // How long the server takes to produce these replies when they are read:
    // the time it gets below before its memory is looked at.
    let started = Instant::now();
    let mut reference = srv.raw();
    let mut pipeline = b"HISTORY ex COUNT 1000\r\n".repeat(n);
    pipeline.extend_from_slice(b"PING\r\n");
    reference.write_all(&pipeline).unwrap();
    let mut left = n * one.len() + b"+PONG\r\n".len();
    while left > 0 {
        let got = reference.read(&mut chunk).unwrap();
        assert!(got > 0, "connection closed");
        left -= got;
    }
    let window = (started.elapsed() * 2).max(Duration::from_secs(3));
    let rss_before = rss_kb(pid);
    let mut batch = b"MULTI\r\n".to_vec();
    batch.extend_from_slice(&b"HISTORY ex COUNT 1000\r\n".repeat(n));
    batch.extend_from_slice(b"EXEC\r\nPING\r\n");
    s.write_all(&batch).unwrap();
    // Do not read for a while: the server must stall, not buffer.
    let mut rss_max = 0;
    let started = Instant::now();
    while started.elapsed() < window {
        rss_max = rss_max.max(rss_kb(pid));
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(
        rss_max < rss_before + 100 * 1024,
        "rss grew from {rss_before} kB to {rss_max} kB"
    );
    // Then every reply arrives whole and in order.
    let mut expected = b"+OK\r\n".to_vec();
    expected.extend_from_slice(&b"+QUEUED\r\n".repeat(n));
    expected.extend_from_slice(format!("*{n}\r\n").as_bytes());
    let mut got = vec![0u8; expected.len()];
    s.read_exact(&mut got).unwrap();
    assert_eq!(got, expected);
    for _ in 0..n {
        got.resize(one.len(), 0);
        s.read_exact(&mut got).unwrap();
        assert!(got == one, "each HISTORY reply whole");
    }
    let mut reader = std::io::BufReader::new(s);
    assert_eq!(read_one(&mut reader), "+PONG");
    assert_eq!(int(&mut c, &["RESERVE", "ex", "after", "1"]), 1);
}

/// What a connection keeps about its client (name, library) is bounded: it
/// lives as long as the connection.
#[test]
fn client_names_are_bounded() {
    let srv = Creditd::start(&[]);
    let mut c = srv.client();
    let at_limit = "n".repeat(1024);
    let over = "n".repeat(1025);
    assert_eq!(
        cmd(&mut c, &["CLIENT", "SETNAME", &at_limit]),
        Ok(redis::Value::Okay)
    );
    assert_eq!(
        err(&mut c, &["CLIENT", "SETNAME", &over]),
        "ERR client name too long (limit 1024 bytes)"
    );
    assert_eq!(
        err(&mut c, &["CLIENT", "SETINFO", "LIB-NAME", &over]),
        "ERR LIB-NAME too long (limit 1024 bytes)"
    );
    assert_eq!(
        err(&mut c, &["HELLO", "2", "SETNAME", &over]),
        "ERR client name too long (limit 1024 bytes)"
    );
    assert_eq!(
        cmd(&mut c, &["CLIENT", "GETNAME"]),
        Ok(redis::Value::BulkString(at_limit.into_bytes()))
    );
}

/// The per-account bounds of the config hold over TCP: past them a command
/// answers `-ERR` and applies nothing, and history keeps its newest entries.
#[test]
fn per_account_bounds_answer_err() {
    let dir = temp_dir("account-bounds");
    let config = dir.join("creditd.toml");
    std::fs::write(
        &config,
        "max_holds_per_account = 3\nmax_buckets_per_account = 2\nhistory_per_account = 100\n",
    )
    .unwrap();
    let srv = Creditd::start_in(&dir.join("data"), &["--config", config.to_str().unwrap()]);
    let mut c = srv.client();
    int(&mut c, &["GRANT", "b", "g1", "100"]);
    int(&mut c, &["GRANT", "b", "g2", "100"]);
    assert_eq!(
        err(&mut c, &["GRANT", "b", "g3", "100"]),
        "ERR too many buckets on this account (limit 2)"
    );
    for h in ["h1", "h2", "h3"] {
        int(&mut c, &["RESERVE", "b", h, "1"]);
    }
    assert_eq!(
        err(&mut c, &["RESERVE", "b", "h4", "1"]),
        "ERR too many open holds on this account (limit 3)"
    );
    assert_eq!(balance(&mut c, "b"), [197, 3, 0, 0, 200]);
    for i in 0..150 {
        int(&mut c, &["DEBIT", "b", &format!("d{i}"), "0"]);
    }
    match cmd(&mut c, &["HISTORY", "b", "COUNT", "1000"]) {
        Ok(redis::Value::Array(entries)) => assert_eq!(entries.len(), 100),
        other => panic!("{other:?}"),
    }
    assert_eq!(int(&mut c, &["RESERVE", "other", "h1", "0"]), 0);
}

/// A frame that is valid piece by piece but larger than the query buffer (4 MiB)
/// is refused when the buffer passes its bound, not buffered whole.
#[test]
fn query_buffer_is_bounded() {
    let srv = Creditd::start(&[]);
    let mut s = srv.raw();
    s.set_write_timeout(Some(Duration::from_secs(10))).unwrap();
    let arg = vec![b'q'; 1024 * 1024];
    let frame = request(&[b"ECHO", &arg, &arg, &arg, &arg, &arg]);
    let _ = s.write_all(&frame); // the server may close before taking it all
    let mut got = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        match s.read(&mut chunk) {
            Ok(0) => break,
            Ok(n) => got.extend_from_slice(&chunk[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => break,
            Err(e) => panic!("{e}"),
        }
    }
    assert_eq!(
        String::from_utf8_lossy(&got),
        "-ERR Protocol error: query buffer limit exceeded\r\n"
    );
    let mut c = srv.client();
    assert_eq!(int(&mut c, &["RESERVE", "q", "h", "0"]), 0);
}

/// A connection that once sent and received a large frame does not keep that
/// room while it idles: 100 such connections stay small.
#[test]
fn idle_connections_give_back_large_buffers() {
    let srv = Creditd::start(&[]);
    let pid = srv.pid();
    let rss_before = rss_kb(pid);
    let arg = vec![b'i'; 1024 * 1024];
    let echo = request(&[b"ECHO", &arg]);
    let idle: Vec<_> = (0..100)
        .map(|_| {
            let mut s = srv.raw();
            s.write_all(&echo).unwrap();
            let mut reply = vec![0u8; arg.len() + b"$1048576\r\n\r\n".len()];
            s.read_exact(&mut reply).unwrap();
            assert!(reply.starts_with(b"$1048576\r\n"));
            s
        })
        .collect();
    let rss_idle = rss_kb(pid);
    assert!(
        rss_idle < rss_before + 50 * 1024,
        "rss grew from {rss_before} kB to {rss_idle} kB"
    );
    drop(idle);
    let mut c = srv.client();
    assert_eq!(int(&mut c, &["RESERVE", "i", "h", "0"]), 0);
}
