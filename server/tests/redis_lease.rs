//! One creditd owns a Redis keyspace: a second one refuses to start while the
//! first one's lease is live, takes over once it lapsed, and a process that
//! lost its lease (paused past it) never overwrites its successor.

mod common;
mod redis_support;

use redis::Connection;
use redis_support::proxy::Proxy;
use redis_support::{
    balance, cmd, info_field, info_text, int, signal, start_refused, wait_drained, wait_until,
    Creditd, RedisServer, TempDir,
};
use std::collections::HashMap;
use std::path::Path;
use std::time::{Duration, Instant};

fn redis_available(redis: &mut Connection, account: &str) -> Option<i64> {
    cmd(
        redis,
        &["HGET", &format!("creditd:acct:{account}"), "available"],
    )
    .unwrap()
}

/// A config file with this lease length.
fn config(dir: &Path, lease_ms: u64) -> String {
    let path = dir.join("creditd.toml");
    std::fs::write(&path, format!("cluster_lease_ms = {lease_ms}\n")).unwrap();
    path.to_str().unwrap().to_string()
}

fn node_id(data_dir: &Path) -> String {
    std::fs::read_to_string(data_dir.join("node-id"))
        .unwrap()
        .trim()
        .to_string()
}

#[test]
fn a_second_creditd_refuses_while_the_first_holds_the_lease_and_takes_over_after() {
    let redis = RedisServer::start();
    let dir = TempDir::new("lease-second");
    let config = config(dir.path(), 1500);
    let args = ["--redis", &redis.url(), "--config", &config];
    let first_dir = dir.path().join("first");
    let mut first = Creditd::start(&first_dir, &args);
    let mut c = first.conn();
    assert_eq!(int(&mut c, &["GRANT", "a", "g-1", "100"]), 100);
    wait_drained(&first, Duration::from_secs(10));
    assert_eq!(info_text(&mut c, "redis_lease"), "held");
    let first_epoch = info_field(&mut c, "redis_lease_epoch");

    let second_dir = dir.path().join("second");
    let (code, log) = start_refused(&second_dir, &args, Duration::from_secs(20));
    assert_ne!(code, 0, "{log}");
    assert!(log.contains("owned by another creditd"), "{log}");
    assert!(log.contains(&node_id(&first_dir)), "names the node: {log}");
    assert!(
        log.contains(&format!("pid {}", first.pid())),
        "and its pid: {log}"
    );
    assert!(log.contains("expires in"), "and when it expires: {log}");

    // The first one kept its lease and writes on.
    assert_eq!(int(&mut c, &["GRANT", "a", "g-2", "1"]), 101);
    wait_drained(&first, Duration::from_secs(10));
    let mut r = redis.conn();
    assert_eq!(redis_available(&mut r, "a"), Some(101));
    assert_eq!(info_text(&mut c, "redis_lease"), "held");

    // Killed: its lease lapses, and the second one takes over with the state.
    first.kill9();
    let second = Creditd::start(&second_dir, &args);
    let mut c2 = second.conn();
    assert_eq!(balance(&mut c2, "a")["available"], 101);
    assert!(info_field(&mut c2, "redis_lease_epoch") > first_epoch);
    assert!(second.log_text().contains("took the Redis lease"));
}

#[test]
fn a_restart_on_the_same_data_dir_takes_its_own_lease_back_at_once() {
    let redis = RedisServer::start();
    let dir = TempDir::new("lease-same");
    let config = config(dir.path(), 20_000);
    let mut creditd = Creditd::start(
        &dir.path().join("data"),
        &["--redis", &redis.url(), "--config", &config],
    );
    let mut c = creditd.conn();
    assert_eq!(int(&mut c, &["GRANT", "a", "g-1", "100"]), 100);
    creditd.kill9();
    let started = Instant::now();
    creditd.restart();
    assert!(
        started.elapsed() < Duration::from_secs(8),
        "waited out its own lease ({:?})",
        started.elapsed()
    );
    assert!(creditd
        .log_text()
        .contains("took over the Redis lease this node held before"));
    let mut c = creditd.conn();
    assert_eq!(balance(&mut c, "a")["available"], 100);
    assert_eq!(int(&mut c, &["GRANT", "a", "g-2", "1"]), 101);
    wait_drained(&creditd, Duration::from_secs(10));
}

#[test]
fn a_paused_creditd_never_overwrites_its_successor() {
    let redis = RedisServer::start();
    let proxy = Proxy::start(redis.port);
    let dir = TempDir::new("lease-paused");
    let config = config(dir.path(), 1000);
    // The first one reaches Redis through a proxy that can hold its writes
    // back, so that a write of its is still on the way when it is paused.
    let first = Creditd::start(
        &dir.path().join("first"),
        &["--redis", &proxy.url(), "--config", &config],
    );
    let mut c1 = first.conn();
    assert_eq!(int(&mut c1, &["GRANT", "a", "g-1", "100"]), 100);
    wait_drained(&first, Duration::from_secs(10));

    // Held back: changes that give its write of `a` a later version than
    // anything the successor will write.
    proxy.hold();
    for i in 0..5 {
        assert_eq!(int(&mut c1, &["GRANT", "b", &format!("g-{i}"), "1"]), i + 1);
    }
    assert_eq!(int(&mut c1, &["GRANT", "a", "g-2", "50"]), 150);
    assert!(
        wait_until(Duration::from_secs(5), || proxy.held_contains(b"EVALSHA")),
        "the first one sent its write"
    );
    signal(first.pid(), true);

    // Its lease lapses; a successor takes over and changes the account.
    let second = Creditd::start(
        &dir.path().join("second"),
        &["--redis", &redis.url(), "--config", &config],
    );
    let mut c2 = second.conn();
    assert_eq!(balance(&mut c2, "a")["available"], 100);
    assert_eq!(int(&mut c2, &["GRANT", "a", "g-3", "7"]), 107);
    wait_drained(&second, Duration::from_secs(10));

    // The paused one's write arrives now: refused inside Redis by the fence.
    proxy.release();
    let mut r = redis.conn();
    assert!(
        wait_until(Duration::from_secs(5), || {
            let stats: String = cmd(&mut r, &["INFO", "errorstats"]).unwrap();
            stats.contains("errorstat_FENCED:count=")
        }),
        "the held write reached Redis and was fenced"
    );
    assert_eq!(redis_available(&mut r, "a"), Some(107));
    assert_eq!(redis_available(&mut r, "b"), None);
    // It resumes, and learns it lost its lease.
    signal(first.pid(), false);
    assert!(
        wait_until(Duration::from_secs(5), || info_text(&mut c1, "redis_lease")
            == "lost"),
        "the paused one knows it lost its lease:\n{}",
        first.log_text()
    );
    let (status, body) = first.http_get("/readyz");
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("lost its lease"), "{body}");
    let busy = cmd::<i64>(&mut c1, &["GRANT", "a", "g-4", "1"]).unwrap_err();
    assert_eq!(busy.code(), Some("BUSY"), "{busy}");
    assert!(first.log_text().contains("THIS CREDITD lost its lease"));

    // Redis has the successor's state, and none of the paused one's.
    assert_eq!(redis_available(&mut r, "a"), Some(107));
    assert_eq!(redis_available(&mut r, "b"), None);
    let entries: Vec<(String, HashMap<String, String>)> =
        cmd(&mut r, &["XRANGE", "creditd:audit", "-", "+"]).unwrap();
    assert!(
        entries.iter().all(|(_, f)| f["id"] != "g-2"),
        "the paused one's history never reached the stream: {entries:?}"
    );
    assert_eq!(int(&mut c2, &["GRANT", "a", "g-5", "1"]), 108);
    wait_drained(&second, Duration::from_secs(10));
    assert_eq!(redis_available(&mut r, "a"), Some(108));
    assert_eq!(info_text(&mut c2, "redis_lease"), "held");
}

#[test]
fn an_outage_longer_than_the_lease_answers_busy_until_redis_is_back() {
    let mut redis = RedisServer::start();
    let dir = TempDir::new("lease-outage");
    let config = config(dir.path(), 1000);
    let creditd = Creditd::start(
        &dir.path().join("data"),
        &["--redis", &redis.url(), "--config", &config],
    );
    let mut c = creditd.conn();
    assert_eq!(int(&mut c, &["GRANT", "a", "g-1", "100"]), 100);
    wait_drained(&creditd, Duration::from_secs(10));

    // Nobody else can be sure this process is gone: once its lease lapses,
    // it stops taking changes.
    redis.kill();
    let mut i = 0;
    let busy = wait_until(Duration::from_secs(5), || {
        i += 1;
        cmd::<i64>(&mut c, &["DEBIT", "a", &format!("d-{i}"), "1"])
            .is_err_and(|e| e.code() == Some("BUSY") && e.to_string().contains("lease"))
    });
    assert!(busy, "mutations answer BUSY once the lease lapsed");
    let (status, body) = creditd.http_get("/readyz");
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("lease"), "{body}");
    assert_eq!(info_text(&mut c, "redis_lease"), "lapsed");

    // Redis is back (empty): the lease is taken back, everything written again.
    redis.restart();
    assert!(
        wait_until(Duration::from_secs(10), || creditd.http_get("/readyz").0
            == 200),
        "ready again:\n{}",
        creditd.log_text()
    );
    assert_eq!(int(&mut c, &["DEBIT", "a", "after", "1"]), 1);
    let available = balance(&mut c, "a")["available"];
    wait_drained(&creditd, Duration::from_secs(10));
    let mut r = redis.conn();
    assert!(wait_until(Duration::from_secs(6), || redis_available(
        &mut r, "a"
    ) == Some(available)));
}
