//! Redis write-behind against a real `redis-server` and the real binary:
//! state reaches Redis, Redis alone restores a lost data dir, an outage
//! shorter than the lease is ridden out and drained, and the backlog bound
//! answers -BUSY.

mod common;
mod redis_support;

use redis::{Connection, Value};
use redis_support::{
    balance, cmd, info_field, int, redis_balance, wait_drained, wait_until, Creditd, RedisServer,
    TempDir,
};
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

#[test]
fn state_and_audit_stream_reach_redis() {
    let redis = RedisServer::start();
    let dir = TempDir::new("reach");
    let data = dir.path().join("data");
    let creditd = Creditd::start(&data, &["--redis", &redis.url()]);
    let mut c = creditd.conn();
    let mut r = redis.conn();

    assert_eq!(info_field(&mut c, "redis_enabled"), 1);
    assert!(wait_until(Duration::from_secs(5), || info_field(
        &mut c,
        "redis_connected"
    ) == 1));
    assert_eq!(int(&mut c, &["GRANT", "a", "g1", "1000"]), 1000);
    assert_eq!(int(&mut c, &["RESERVE", "a", "h1", "300"]), 300);
    assert_eq!(int(&mut c, &["COMMIT", "a", "h1", "120"]), 120);
    assert_eq!(int(&mut c, &["RESERVE", "a", "h2", "50"]), 50);
    assert_eq!(int(&mut c, &["RELEASE", "a", "h2"]), 50);
    assert_eq!(int(&mut c, &["DEBIT", "a", "d1", "30"]), 30);
    assert_eq!(int(&mut c, &["GRANT", "b", "g1", "7"]), 7);
    wait_drained(&creditd, Duration::from_secs(10));

    let hash: HashMap<String, Vec<u8>> = cmd(&mut r, &["HGETALL", "creditd:acct:a"]).unwrap();
    let field = |name: &str| String::from_utf8_lossy(&hash[name]).into_owned();
    assert_eq!(field("available"), "850");
    assert_eq!(field("held"), "0");
    assert_eq!(field("spent"), "150");
    assert_eq!(field("expired"), "0");
    assert_eq!(field("granted"), "1000");
    assert_eq!(field("plan"), "");
    assert_eq!(field("seats"), "0");
    assert_eq!(field("history_seq"), "6");
    assert!(!hash["state"].is_empty());
    let last_seq = info_field(&mut c, "journal_last_seq");
    // a's last record is the DEBIT; b's GRANT came after it.
    assert_eq!(field("version"), (last_seq - 1).to_string());
    assert_eq!(redis_balance(&mut r, "b")["available"], 7);

    // The audit stream: every change, in order, readable with XRANGE.
    let entries: Vec<(String, HashMap<String, String>)> =
        cmd(&mut r, &["XRANGE", "creditd:audit", "-", "+"]).unwrap();
    let of_a: Vec<(String, String, String, String)> = entries
        .iter()
        .map(|(_, f)| f)
        .filter(|f| f["account"] == "a")
        .map(|f| {
            (
                f["seq"].clone(),
                f["op"].clone(),
                f["id"].clone(),
                f["amount"].clone(),
            )
        })
        .collect();
    let expect: Vec<(String, String, String, String)> = [
        ("1", "grant", "g1", "1000"),
        ("2", "reserve", "h1", "300"),
        ("3", "commit", "h1", "120"),
        ("4", "reserve", "h2", "50"),
        ("5", "release", "h2", "50"),
        ("6", "debit", "d1", "30"),
    ]
    .iter()
    .map(|(a, b, c, d)| (a.to_string(), b.to_string(), c.to_string(), d.to_string()))
    .collect();
    assert_eq!(of_a, expect);
    assert!(entries.iter().all(|(_, f)| f["at"].parse::<u64>().is_ok()));
    assert_eq!(entries.len(), 7);
    let watermark: u64 = cmd(&mut r, &["HGET", "creditd:meta", "watermark"]).unwrap();
    assert_eq!(watermark, last_seq);

    // An older state never overwrites a newer one: pretend Redis holds a
    // far newer version of a; creditd's next write of a is refused.
    let _: () = cmd(&mut r, &["HSET", "creditd:acct:a", "version", "1000000"]).unwrap();
    assert_eq!(int(&mut c, &["DEBIT", "a", "d2", "10"]), 10);
    assert_eq!(int(&mut c, &["DEBIT", "b", "d2", "1"]), 1);
    wait_drained(&creditd, Duration::from_secs(10));
    assert_eq!(redis_balance(&mut r, "a")["available"], 850);
    assert_eq!(redis_balance(&mut r, "b")["available"], 6);
    let len: u64 = cmd(&mut r, &["XLEN", "creditd:audit"]).unwrap();
    assert_eq!(len, 8, "the refused write streamed nothing");

    // A graceful shutdown writes what's left and says so.
    let mut creditd = creditd;
    assert_eq!(int(&mut c, &["GRANT", "b", "g2", "1"]), 7);
    creditd.terminate();
    let log = creditd.log_text();
    assert!(log.contains("every change is in Redis"), "{log}");
    assert_eq!(redis_balance(&mut r, "b")["available"], 7);
}

#[test]
fn redis_alone_restores_a_lost_data_dir() {
    let redis = RedisServer::start();
    let dir = TempDir::new("restore");
    let data = dir.path().join("data");
    let mut creditd = Creditd::start(&data, &["--redis", &redis.url()]);
    let mut c = creditd.conn();
    assert_eq!(int(&mut c, &["GRANT", "acme", "pack-1", "1000"]), 1000);
    assert_eq!(int(&mut c, &["RESERVE", "acme", "job-1", "200"]), 200);
    assert_eq!(int(&mut c, &["RESERVE", "acme", "job-2", "100"]), 100);
    assert_eq!(int(&mut c, &["COMMIT", "acme", "job-2", "40"]), 40);
    assert_eq!(int(&mut c, &["GRANT", "other", "g", "5"]), 5);
    let account: Value = cmd(&mut c, &["ACCOUNT", "acme"]).unwrap();
    let history: Value = cmd(&mut c, &["HISTORY", "acme"]).unwrap();
    let bal = balance(&mut c, "acme");
    wait_drained(&creditd, Duration::from_secs(10));

    // The machine is gone: kill -9 and lose the disk.
    creditd.kill9();
    std::fs::remove_dir_all(&data).unwrap();
    creditd.restart();
    let mut c = creditd.conn();
    assert_eq!(balance(&mut c, "acme"), bal);
    assert_eq!(cmd::<Value>(&mut c, &["ACCOUNT", "acme"]).unwrap(), account);
    assert_eq!(cmd::<Value>(&mut c, &["HISTORY", "acme"]).unwrap(), history);
    assert_eq!(balance(&mut c, "other")["available"], 5);
    // Idempotency records came back: retries answer the first reply, apply nothing.
    assert_eq!(int(&mut c, &["RESERVE", "acme", "job-1", "200"]), 200);
    assert_eq!(int(&mut c, &["GRANT", "acme", "pack-1", "1000"]), 1000);
    assert_eq!(int(&mut c, &["COMMIT", "acme", "job-2", "40"]), 40);
    assert_eq!(balance(&mut c, "acme"), bal);
    let conflict = cmd::<i64>(&mut c, &["RESERVE", "acme", "job-1", "999"]).unwrap_err();
    assert_eq!(conflict.code(), Some("CONFLICT"), "{conflict}");
    // The open hold can still be committed.
    assert_eq!(int(&mut c, &["COMMIT", "acme", "job-1", "150"]), 150);
    let after = balance(&mut c, "acme");
    assert_eq!(after["held"], 0);
    assert_eq!(after["spent"], 190);
    assert_eq!(after["available"], 810);

    // The new journal numbers after what Redis held: a crash now (the
    // journal and Redis both in play) recovers the same state.
    assert!(info_field(&mut c, "journal_last_seq") > 5);
    let history: Value = cmd(&mut c, &["HISTORY", "acme"]).unwrap();
    creditd.kill9();
    creditd.restart();
    let mut c = creditd.conn();
    assert_eq!(balance(&mut c, "acme"), after);
    assert_eq!(cmd::<Value>(&mut c, &["HISTORY", "acme"]).unwrap(), history);
    wait_drained(&creditd, Duration::from_secs(10));
    let mut r = redis.conn();
    assert_eq!(redis_balance(&mut r, "acme"), after);

    // And once more from Redis alone, with the commit made after the first restore.
    creditd.kill9();
    std::fs::remove_dir_all(&data).unwrap();
    creditd.restart();
    let mut c = creditd.conn();
    assert_eq!(balance(&mut c, "acme"), after);
    assert_eq!(int(&mut c, &["COMMIT", "acme", "job-1", "150"]), 150);
    assert_eq!(balance(&mut c, "acme"), after);
}

/// Runs RESERVE/COMMIT pairs on `accounts` until stopped; counts successes and errors.
struct Load {
    stop: Arc<AtomicBool>,
    ops: Arc<AtomicU64>,
    errors: Arc<AtomicU64>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Load {
    fn start(mut conn: Connection, accounts: Vec<String>) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let ops = Arc::new(AtomicU64::new(0));
        let errors = Arc::new(AtomicU64::new(0));
        let thread = {
            let (stop, ops, errors) = (stop.clone(), ops.clone(), errors.clone());
            std::thread::spawn(move || {
                let mut i = 0u64;
                // Bounded in time as well as by the flag.
                let deadline = std::time::Instant::now() + Duration::from_secs(40);
                while !stop.load(Ordering::Relaxed) && std::time::Instant::now() < deadline {
                    for account in &accounts {
                        let hold = format!("h{i}");
                        let r1 = cmd::<i64>(&mut conn, &["RESERVE", account, &hold, "3"]);
                        let r2 = cmd::<i64>(&mut conn, &["COMMIT", account, &hold, "2"]);
                        if r1.is_ok() && r2.is_ok() {
                            ops.fetch_add(2, Ordering::Relaxed);
                        } else {
                            errors.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                    i += 1;
                }
            })
        };
        Load {
            stop,
            ops,
            errors,
            thread: Some(thread),
        }
    }

    fn ops(&self) -> u64 {
        self.ops.load(Ordering::Relaxed)
    }

    fn finish(mut self) -> (u64, u64) {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.take().unwrap().join().unwrap();
        (self.ops(), self.errors.load(Ordering::Relaxed))
    }
}

/// An outage shorter than the lease (`cluster_lease_ms`; longer ones answer
/// -BUSY, see redis_lease.rs).
#[test]
fn a_redis_outage_is_ridden_out_and_drained() {
    let mut redis = RedisServer::start();
    let dir = TempDir::new("outage");
    let config = dir.path().join("creditd.toml");
    std::fs::write(&config, "cluster_lease_ms = 60000\n").unwrap();
    let creditd = Creditd::start(
        &dir.path().join("data"),
        &[
            "--redis",
            &redis.url(),
            "--config",
            config.to_str().unwrap(),
        ],
    );
    let mut c = creditd.conn();
    let accounts: Vec<String> = (0..8).map(|i| format!("acct{i}")).collect();
    for a in &accounts {
        assert_eq!(int(&mut c, &["GRANT", a, "g", "10000000"]), 10_000_000);
    }
    let load = Load::start(creditd.conn(), accounts.clone());
    assert!(wait_until(Duration::from_secs(5), || load.ops() > 200));

    redis.kill();
    assert!(
        wait_until(Duration::from_secs(10), || info_field(
            &mut c,
            "redis_connected"
        ) == 0),
        "creditd did not notice the outage"
    );
    let ops_down = load.ops();
    let pending_1 = info_field(&mut c, "redis_pending");
    assert!(wait_until(Duration::from_secs(5), || {
        info_field(&mut c, "redis_pending") > pending_1 + 100
    }));
    // Stay down long enough for several reconnect attempts (logged once).
    std::thread::sleep(Duration::from_millis(1500));
    assert!(load.ops() > ops_down + 100, "creditd kept answering");
    assert_eq!(info_field(&mut c, "redis_connected"), 0);
    assert!(info_field(&mut c, "redis_lag_ms") > 0);
    let (status, _) = creditd.http_get("/readyz");
    assert_eq!(status, 200, "under the bound, still ready");

    // Redis comes back empty (no persistence): creditd notices the lost data,
    // writes every account again, and drains the backlog.
    redis.restart();
    assert!(
        wait_until(Duration::from_secs(15), || info_field(
            &mut c,
            "redis_connected"
        ) == 1),
        "creditd did not reconnect:\n{}",
        creditd.log_text()
    );
    let ops_up = load.ops();
    assert!(wait_until(Duration::from_secs(5), || load.ops() > ops_up + 100));
    let (_, errors) = load.finish();
    assert_eq!(errors, 0, "every command was answered successfully");
    wait_drained(&creditd, Duration::from_secs(15));

    let mut r = redis.conn();
    for a in &accounts {
        let bal = balance(&mut c, a);
        assert_eq!(redis_balance(&mut r, a), bal, "account {a}");
    }
    let log = creditd.log_text();
    assert_eq!(
        log.matches("Redis write-behind disconnected").count(),
        1,
        "{log}"
    );
    assert_eq!(
        log.matches("Redis write-behind connected").count(),
        2,
        "{log}"
    );
}

#[test]
fn over_the_backlog_bound_mutations_answer_busy() {
    let mut redis = RedisServer::start();
    let dir = TempDir::new("busy");
    let config = dir.path().join("creditd.toml");
    std::fs::write(&config, "redis_max_pending = 5\n").unwrap();
    let creditd = Creditd::start(
        &dir.path().join("data"),
        &[
            "--redis",
            &redis.url(),
            "--config",
            config.to_str().unwrap(),
        ],
    );
    let mut c = creditd.conn();
    assert_eq!(int(&mut c, &["GRANT", "a", "g", "1000"]), 1000);
    wait_drained(&creditd, Duration::from_secs(10));

    redis.kill();
    let mut accepted = 0;
    let mut busy = None;
    for i in 0..200 {
        match cmd::<i64>(&mut c, &["RESERVE", "a", &format!("h{i}"), "1"]) {
            Ok(_) => accepted += 1,
            Err(e) => {
                busy = Some(e);
                break;
            }
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let busy = busy.expect("a mutation answered BUSY");
    assert_eq!(busy.code(), Some("BUSY"), "{busy}");
    assert!(accepted >= 5, "the bound is 5 changes, {accepted} accepted");
    assert_eq!(
        balance(&mut c, "a")["held"],
        accepted,
        "BUSY applied nothing"
    );
    // Reads still work; the probe says why it is not ready.
    assert_eq!(info_field(&mut c, "redis_connected"), 0);
    assert!(info_field(&mut c, "redis_pending") > 5);
    let (status, body) = creditd.http_get("/readyz");
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("Redis"), "{body}");
    let err = cmd::<i64>(&mut c, &["DEBIT", "a", "d", "1"]).unwrap_err();
    assert_eq!(err.code(), Some("BUSY"));

    redis.restart();
    assert!(
        wait_until(Duration::from_secs(15), || creditd.http_get("/readyz").0
            == 200),
        "not ready again after Redis came back:\n{}",
        creditd.log_text()
    );
    assert_eq!(int(&mut c, &["RESERVE", "a", "after", "1"]), 1);
    assert_eq!(int(&mut c, &["DEBIT", "a", "d", "1"]), 1);
    wait_drained(&creditd, Duration::from_secs(10));
    let mut r = redis.conn();
    assert_eq!(redis_balance(&mut r, "a"), balance(&mut c, "a"));

    // Shutting down while Redis is away: the writer tries until its deadline,
    // then says what was left (it is in the journal).
    redis.kill();
    assert_eq!(int(&mut c, &["DEBIT", "a", "d2", "1"]), 1);
    let mut creditd = creditd;
    let started = std::time::Instant::now();
    creditd.terminate();
    assert!(started.elapsed() < Duration::from_secs(15));
    let log = creditd.log_text();
    assert!(log.contains("changes not yet in Redis"), "{log}");
}
