//! A data dir whose state came partly from Redis: started without `--redis`
//! it refuses (the journal alone is not the whole state) and says what to do;
//! started with `--redis` again it always works; once a snapshot holds the
//! whole state, it no longer needs Redis.

mod common;
mod redis_support;

use redis_support::{
    balance, cmd, int, start_refused, wait_drained, wait_until, Creditd, RedisServer, TempDir,
};
use std::time::Duration;

/// Runs a creditd with `--redis` until Redis holds an account with an open
/// hold, then loses its data dir (kill -9, directory removed).
fn redis_with_state(redis: &RedisServer, creditd: &mut Creditd) {
    let mut c = creditd.conn();
    assert_eq!(int(&mut c, &["GRANT", "acme", "pack-1", "1000"]), 1000);
    assert_eq!(int(&mut c, &["RESERVE", "acme", "job-1", "200"]), 200);
    assert_eq!(int(&mut c, &["GRANT", "other", "g", "5"]), 5);
    wait_drained(creditd, Duration::from_secs(10));
    creditd.kill9();
    std::fs::remove_dir_all(&creditd.data_dir).unwrap();
    let _ = redis;
}

#[test]
fn a_data_dir_restored_from_redis_refuses_to_start_without_it() {
    let redis = RedisServer::start();
    let dir = TempDir::new("dep");
    let data = dir.path().join("data");
    let url = redis.url();
    let mut creditd = Creditd::start(&data, &["--redis", &url]);
    redis_with_state(&redis, &mut creditd);

    // Restored from Redis onto an empty data dir; a few changes (that the
    // journal alone could replay onto empty accounts); a clean stop.
    creditd.restart();
    let mut c = creditd.conn();
    assert_eq!(int(&mut c, &["GRANT", "acme", "pack-2", "100"]), 900);
    assert_eq!(int(&mut c, &["GRANT", "other", "g-2", "1"]), 6);
    let acme = balance(&mut c, "acme");
    assert_eq!(acme["held"], 200);
    creditd.terminate();

    // Without --redis the journal alone is not the whole state: refused,
    // saying what, why, and what to do.
    let (code, log) = start_refused(&data, &[], Duration::from_secs(20));
    assert_ne!(code, 0, "{log}");
    assert!(log.contains("depends on Redis"), "{log}");
    assert!(log.contains(&url), "names the Redis it depends on: {log}");
    assert!(log.contains("--redis"), "says what to do: {log}");

    // Back to --redis: the whole state, retries apply nothing.
    creditd.restart();
    let mut c = creditd.conn();
    assert_eq!(balance(&mut c, "acme"), acme);
    assert_eq!(int(&mut c, &["GRANT", "acme", "pack-2", "100"]), 900);
    assert_eq!(int(&mut c, &["RESERVE", "acme", "job-1", "200"]), 200);
    assert_eq!(balance(&mut c, "acme"), acme);
    assert_eq!(int(&mut c, &["COMMIT", "acme", "job-1", "150"]), 150);
    assert_eq!(balance(&mut c, "other")["available"], 6);
    creditd.terminate();

    // Still refused without Redis after a restart with it (the dependency
    // stays until a snapshot holds the whole state).
    let (code, log) = start_refused(&data, &[], Duration::from_secs(20));
    assert_ne!(code, 0, "{log}");
    assert!(log.contains("depends on Redis"), "{log}");
}

#[test]
fn a_data_dir_that_holds_everything_starts_without_redis() {
    let redis = RedisServer::start();
    let dir = TempDir::new("nodep");
    let data = dir.path().join("data");
    let mut creditd = Creditd::start(&data, &["--redis", &redis.url()]);
    let mut c = creditd.conn();
    assert_eq!(int(&mut c, &["GRANT", "acme", "pack-1", "1000"]), 1000);
    assert_eq!(int(&mut c, &["RESERVE", "acme", "job-1", "200"]), 200);
    wait_drained(&creditd, Duration::from_secs(10));
    creditd.terminate();
    // Restarted with Redis (Redis holds state, the journal has all of it).
    creditd.restart();
    let mut c = creditd.conn();
    assert_eq!(int(&mut c, &["DEBIT", "acme", "d-1", "10"]), 10);
    let acme = balance(&mut c, "acme");
    creditd.terminate();

    creditd.set_args(&[]);
    creditd.restart();
    let mut c = creditd.conn();
    assert_eq!(balance(&mut c, "acme"), acme);
    assert_eq!(int(&mut c, &["RESERVE", "acme", "job-1", "200"]), 200);
    assert_eq!(balance(&mut c, "acme"), acme);
    assert_eq!(int(&mut c, &["DEBIT", "acme", "d-2", "1"]), 1);
    let acme = balance(&mut c, "acme");
    creditd.terminate();

    // And back to Redis: what changed meanwhile is written behind.
    creditd.set_args(&["--redis", &redis.url()]);
    creditd.restart();
    let mut c = creditd.conn();
    assert_eq!(balance(&mut c, "acme"), acme);
    wait_drained(&creditd, Duration::from_secs(10));
    let mut r = redis.conn();
    let available: i64 = cmd(&mut r, &["HGET", "creditd:acct:acme", "available"]).unwrap();
    assert_eq!(available, acme["available"]);
}

#[test]
fn a_snapshot_after_the_restore_makes_the_data_dir_whole_again() {
    let redis = RedisServer::start();
    let dir = TempDir::new("dep-snap");
    let data = dir.path().join("data");
    let config = dir.path().join("creditd.toml");
    std::fs::write(&config, "snapshot_every_records = 1\n").unwrap();
    let config = config.to_str().unwrap().to_string();
    let mut creditd = Creditd::start(&data, &["--redis", &redis.url(), "--config", &config]);
    redis_with_state(&redis, &mut creditd);

    creditd.restart();
    let mut c = creditd.conn();
    assert_eq!(int(&mut c, &["DEBIT", "acme", "d-1", "10"]), 10);
    let acme = balance(&mut c, "acme");
    assert!(
        wait_until(Duration::from_secs(10), || creditd
            .log_text()
            .contains("no longer depends on Redis")),
        "a snapshot was taken and said so:\n{}",
        creditd.log_text()
    );
    creditd.terminate();

    creditd.set_args(&["--config", &config]);
    creditd.restart();
    let mut c = creditd.conn();
    assert_eq!(balance(&mut c, "acme"), acme);
    assert_eq!(balance(&mut c, "other")["available"], 5);
    assert_eq!(int(&mut c, &["RESERVE", "acme", "job-1", "200"]), 200);
    assert_eq!(balance(&mut c, "acme"), acme);
}
