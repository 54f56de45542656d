//! Redis losing data while creditd stays connected (a FLUSHALL, an eviction,
//! a failover to a stale replica) is noticed within 5 s and everything is
//! written again, so Redis alone can still restore a lost data dir.

mod common;
mod redis_support;

use redis_support::{
    balance, cmd, info_field, int, redis_balance, wait_drained, wait_until, Creditd, RedisServer,
    TempDir,
};
use std::collections::HashMap;
use std::time::{Duration, Instant};

/// Polls (up to `timeout`) until Redis holds every account with the balance
/// creditd reports; returns how long it took.
fn wait_redis_matches(
    creditd: &Creditd,
    redis: &RedisServer,
    expected: &HashMap<String, HashMap<String, i64>>,
    timeout: Duration,
) -> Duration {
    let started = Instant::now();
    let mut r = redis.conn();
    let matches = wait_until(timeout, || {
        expected
            .iter()
            .all(|(account, bal)| redis_balance(&mut r, account) == *bal)
    });
    let missing: Vec<&String> = expected
        .iter()
        .filter(|(account, bal)| redis_balance(&mut r, account) != **bal)
        .map(|(account, _)| account)
        .collect();
    assert!(
        matches,
        "{} of {} accounts not written again within {timeout:?} (e.g. {:?}):\n{}",
        missing.len(),
        expected.len(),
        missing.first(),
        creditd.log_text()
    );
    started.elapsed()
}

fn metric(creditd: &Creditd, name: &str) -> f64 {
    let (_, body) = creditd.http_get("/metrics");
    body.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or_else(|| panic!("no {name} in /metrics:\n{body}"))
}

#[test]
fn a_flushall_while_connected_is_noticed_and_everything_is_written_again() {
    let redis = RedisServer::start();
    let dir = TempDir::new("flush");
    let data = dir.path().join("data");
    let mut creditd = Creditd::start(&data, &["--redis", &redis.url()]);
    let mut c = creditd.conn();
    let accounts: Vec<String> = (0..300).map(|i| format!("acct-{i}")).collect();
    for (i, a) in accounts.iter().enumerate() {
        let amount = (i as i64 + 1) * 10;
        assert_eq!(
            int(&mut c, &["GRANT", a, "g-1", &amount.to_string()]),
            amount
        );
        if i % 3 == 0 {
            assert_eq!(int(&mut c, &["RESERVE", a, "job-1", "5"]), 5);
        }
    }
    wait_drained(&creditd, Duration::from_secs(10));
    let expected: HashMap<String, HashMap<String, i64>> = accounts
        .iter()
        .map(|a| (a.clone(), balance(&mut c, a)))
        .collect();
    let mut r = redis.conn();
    let audit_len: u64 = cmd(&mut r, &["XLEN", "creditd:audit"]).unwrap();
    assert_eq!(audit_len, 400);
    assert_eq!(info_field(&mut c, "redis_data_loss_events"), 0);

    // Redis loses everything while creditd stays connected and idle.
    let _: () = cmd(&mut r, &["FLUSHALL"]).unwrap();
    let took = wait_redis_matches(&creditd, &redis, &expected, Duration::from_secs(6));
    assert!(took < Duration::from_secs(6), "{took:?}");
    // History as far as memory has it: the whole audit stream again, once.
    assert!(wait_until(Duration::from_secs(5), || cmd::<u64>(
        &mut r,
        &["XLEN", "creditd:audit"]
    )
    .unwrap()
        == audit_len));
    assert_eq!(info_field(&mut c, "redis_data_loss_events"), 1);
    assert_eq!(
        metric(&creditd, "creditd_redis_data_loss_events_total"),
        1.0
    );
    let log = creditd.log_text();
    assert_eq!(
        log.matches("Redis lost written-behind data").count(),
        1,
        "{log}"
    );

    // Lost again while writing: noticed by the write itself.
    let _: () = cmd(&mut r, &["FLUSHALL"]).unwrap();
    assert_eq!(int(&mut c, &["GRANT", "acct-0", "g-2", "1"]), 6);
    let mut expected = expected;
    expected.insert("acct-0".into(), balance(&mut c, "acct-0"));
    wait_redis_matches(&creditd, &redis, &expected, Duration::from_secs(6));
    assert_eq!(info_field(&mut c, "redis_data_loss_events"), 2);
    wait_drained(&creditd, Duration::from_secs(10));

    // The machine is lost: Redis alone restores every account, and a retried
    // GRANT applies nothing.
    creditd.kill9();
    std::fs::remove_dir_all(&data).unwrap();
    creditd.restart();
    let mut c = creditd.conn();
    for (account, bal) in &expected {
        assert_eq!(&balance(&mut c, account), bal, "{account}");
    }
    assert_eq!(int(&mut c, &["GRANT", "acct-7", "g-1", "80"]), 80);
    assert_eq!(balance(&mut c, "acct-7"), expected["acct-7"]);
    assert_eq!(int(&mut c, &["GRANT", "acct-0", "g-2", "1"]), 6);
    assert_eq!(balance(&mut c, "acct-0"), expected["acct-0"]);
}

#[test]
fn a_failover_to_a_stale_copy_is_noticed_and_written_again() {
    // DEBUG RELOAD NOSAVE brings back an older dump: what a failover to a
    // replica that was behind looks like to creditd.
    let redis = RedisServer::start_with(&["--enable-debug-command", "yes"]);
    let dir = TempDir::new("stale");
    let creditd = Creditd::start(&dir.path().join("data"), &["--redis", &redis.url()]);
    let mut c = creditd.conn();
    let accounts: Vec<String> = (0..50).map(|i| format!("s-{i}")).collect();
    for a in &accounts {
        assert_eq!(int(&mut c, &["GRANT", a, "g-1", "100"]), 100);
    }
    wait_drained(&creditd, Duration::from_secs(10));
    let mut r = redis.conn();
    let _: () = cmd(&mut r, &["SAVE"]).unwrap();
    for a in &accounts {
        assert_eq!(int(&mut c, &["GRANT", a, "g-2", "10"]), 110);
    }
    wait_drained(&creditd, Duration::from_secs(10));
    let _: () = cmd(&mut r, &["DEBUG", "RELOAD", "NOSAVE"]).unwrap();
    assert_eq!(
        redis_balance(&mut r, "s-0")["available"],
        100,
        "the stale copy is back"
    );

    let expected: HashMap<String, HashMap<String, i64>> = accounts
        .iter()
        .map(|a| (a.clone(), balance(&mut c, a)))
        .collect();
    wait_redis_matches(&creditd, &redis, &expected, Duration::from_secs(6));
    assert_eq!(info_field(&mut c, "redis_data_loss_events"), 1);
    // The stale stream kept the first grants; only what it lacked is added.
    let entries: Vec<(String, HashMap<String, String>)> =
        cmd(&mut r, &["XRANGE", "creditd:audit", "-", "+"]).unwrap();
    let mut seen: Vec<(String, String)> = entries
        .iter()
        .map(|(_, f)| (f["account"].clone(), f["seq"].clone()))
        .collect();
    seen.sort();
    seen.dedup();
    assert_eq!(seen.len(), entries.len(), "no audit entry twice");
    assert_eq!(entries.len(), 100);
}

#[test]
fn a_redis_that_may_evict_creditd_keys_is_warned_about() {
    let redis = RedisServer::start_with(&["--maxmemory-policy", "allkeys-lru"]);
    let dir = TempDir::new("evicting");
    let creditd = Creditd::start(&dir.path().join("data"), &["--redis", &redis.url()]);
    let log = creditd.log_text();
    assert!(
        log.contains("maxmemory-policy allkeys-lru") && log.contains("noeviction"),
        "{log}"
    );
}
