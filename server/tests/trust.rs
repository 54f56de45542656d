//! Operator mistakes and money edge cases, each as a user would meet it: the
//! real binary over TCP, restarted on the same data dir, its config file
//! changed and reloaded in between. Nothing acknowledged may be lost or
//! applied twice, and recovery replays what happened, whatever the config
//! says today.

mod common;

use common::*;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

/// A config of settings plus a small rate card and two plans.
fn config_text(settings: &str) -> String {
    format!(
        "{settings}\n\
         [skus.\"image/x\"]\nunit = \"image\"\ncredits = 10\n\
         [plans.starter]\nperiod = \"month\"\ncredits_per_seat = 200\n\
         [plans.pro]\nperiod = \"month\"\ncredits_per_seat = 500\n"
    )
}

fn write_config(path: &Path, settings: &str) {
    std::fs::write(path, config_text(settings)).expect("write config");
}

/// A data dir and a config file beside it.
fn setup(settings: &str) -> (PathBuf, PathBuf) {
    let dir = temp_dir("trust");
    let config = dir.join("creditd.toml");
    write_config(&config, settings);
    (dir.join("data"), config)
}

fn start(data: &Path, config: &Path, extra: &[&str]) -> Creditd {
    let mut args = vec!["--config", config.to_str().unwrap()];
    args.extend_from_slice(extra);
    Creditd::start_in(data, &args)
}

/// Runs a creditd that should refuse to start: (success, output). One
/// still running after `limit` is killed and counts as a failure to refuse.
fn run_to_exit(command: Command, limit: Duration) -> (bool, String) {
    let (status, output) = run_bounded(command, limit);
    match status {
        Some(status) => (status.success(), output),
        None => (true, format!("still running after {limit:?}: {output}")),
    }
}

fn ok(c: &mut redis::Connection, args: &[&str]) {
    cmd(c, args).unwrap_or_else(|e| panic!("{args:?}: {e}"));
}

#[test]
fn a_second_process_on_one_data_dir_refuses_and_names_the_holder() {
    let (data, config) = setup("");
    let first = start(&data, &config, &[]);
    let mut second = Command::new(env!("CARGO_BIN_EXE_creditd"));
    second
        .args(["--listen", "127.0.0.1:0", "--http", "127.0.0.1:0"])
        .arg("--data-dir")
        .arg(&data)
        .arg("--config")
        .arg(&config);
    let (success, stderr) = run_to_exit(second, Duration::from_secs(20));
    assert!(!success, "the second process started: {stderr}");
    assert!(stderr.contains(&data.display().to_string()), "{stderr}");
    assert!(stderr.contains(&format!("pid {}", first.pid())), "{stderr}");
    // The first one never noticed.
    let mut c = first.client();
    assert_eq!(int(&mut c, &["GRANT", "a", "g1", "5"]), 5);
}

#[test]
fn a_file_as_data_dir_is_not_a_directory() {
    let dir = temp_dir("notdir");
    let file = dir.join("plain-file");
    std::fs::write(&file, b"x").unwrap();
    let stderr = refused_start(&["--data-dir".as_ref(), file.as_os_str()]);
    assert!(stderr.contains("not a directory"), "{stderr}");
}

#[test]
fn recovery_replays_what_happened_after_the_window_and_id_cap_changed() {
    let (data, config) = setup("idempotency_window_ms = 1000\nmax_ids_per_account = 2");
    let mut srv = start(&data, &config, &["--test-clock"]);
    let mut c = srv.client();
    assert_eq!(int(&mut c, &["GRANT", "a", "g1", "1000"]), 1000);
    assert_eq!(int(&mut c, &["DEBIT", "a", "d1", "10"]), 10);
    // Past the window the id is new again: a second debit.
    ok(&mut c, &["CLOCK", "ADVANCE", "2000"]);
    assert_eq!(int(&mut c, &["DEBIT", "a", "d1", "10"]), 10);
    // Past the id cap the oldest id is forgotten early: d2, d3 evict d1.
    assert_eq!(int(&mut c, &["DEBIT", "a", "d2", "1"]), 1);
    assert_eq!(int(&mut c, &["DEBIT", "a", "d3", "1"]), 1);
    assert_eq!(int(&mut c, &["DEBIT", "a", "d1", "10"]), 10);
    let before = balance(&mut c, "a");
    assert_eq!(before, [968, 0, 32, 0, 1000]);
    let history = cmd(&mut c, &["HISTORY", "a"]).unwrap();

    // The operator raises both, reloads, and the process restarts.
    write_config(
        &config,
        "idempotency_window_ms = 86400000\nmax_ids_per_account = 1000",
    );
    ok(&mut c, &["CONFIG", "RELOAD"]);
    srv.kill9();
    srv.restart();
    let mut c = srv.client();
    assert_eq!(balance(&mut c, "a"), before);
    assert_eq!(cmd(&mut c, &["HISTORY", "a"]).unwrap(), history);
    // The last d1 is remembered from now on, under the new window.
    assert_eq!(int(&mut c, &["DEBIT", "a", "d1", "10"]), 10);
    assert_eq!(balance(&mut c, "a"), before);
    // And again after a clean restart.
    srv.terminate();
    srv.restart();
    let mut c = srv.client();
    assert_eq!(balance(&mut c, "a"), before);
}

#[test]
fn a_reserve_retried_without_ttl_after_the_default_changed_repeats() {
    let (data, config) = setup("hold_ttl_ms = 60000");
    let mut srv = start(&data, &config, &[]);
    let mut c = srv.client();
    assert_eq!(int(&mut c, &["GRANT", "a", "g1", "500"]), 500);
    assert_eq!(int(&mut c, &["RESERVE", "a", "h1", "100"]), 100);
    write_config(&config, "hold_ttl_ms = 120000");
    ok(&mut c, &["CONFIG", "RELOAD"]);
    assert_eq!(int(&mut c, &["RESERVE", "a", "h1", "100"]), 100);
    // Sent with a TTL it is other arguments.
    let e = err(&mut c, &["RESERVE", "a", "h1", "100", "TTL", "60000"]);
    assert!(e.starts_with("CONFLICT"), "{e}");
    // After a restart the hold keeps the TTL it got, and retries still repeat.
    srv.kill9();
    srv.restart();
    let mut c = srv.client();
    assert_eq!(int(&mut c, &["RESERVE", "a", "h1", "100"]), 100);
    assert_eq!(balance(&mut c, "a"), [400, 100, 0, 0, 500]);
}

#[test]
fn a_plan_change_ends_only_the_plans_own_credits() {
    let (data, config) = setup("");
    let srv = start(&data, &config, &[]);
    let mut c = srv.client();
    let far = (std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis()
        + 365 * 86_400_000)
        .to_string();
    let g = [
        "GRANT",
        "a",
        "mirror",
        "300",
        "KIND",
        "subscription",
        "EXPIRES",
        &far,
    ];
    assert_eq!(int(&mut c, &g), 300);
    assert_eq!(int(&mut c, &["PLAN", "a", "starter"]), 500);
    // The upgrade expires starter's 200, not the 300 GRANT made.
    assert_eq!(int(&mut c, &["PLAN", "a", "pro"]), 800);
    assert_eq!(balance(&mut c, "a"), [800, 0, 0, 200, 1000]);
}

#[test]
fn resubscribing_in_the_same_cycle_grants_nothing_again() {
    let (data, config) = setup("");
    let mut srv = start(&data, &config, &[]);
    let mut c = srv.client();
    assert_eq!(int(&mut c, &["PLAN", "a", "pro"]), 500);
    assert_eq!(cmd(&mut c, &["PLAN", "a", "NONE"]), Ok(redis::Value::Okay));
    assert_eq!(int(&mut c, &["PLAN", "a", "pro"]), 500);
    assert_eq!(balance(&mut c, "a"), [500, 0, 0, 0, 500]);
    // Back on the plan: seats work again, and so does a restart.
    assert_eq!(int(&mut c, &["SEATS", "a", "2"]), 1000);
    srv.kill9();
    srv.restart();
    let mut c = srv.client();
    assert_eq!(balance(&mut c, "a"), [1000, 0, 0, 0, 1000]);
}

#[test]
fn max_accounts_refuses_new_accounts_only() {
    let (data, config) = setup("max_accounts = 3");
    let srv = start(&data, &config, &[]);
    let mut c = srv.client();
    for a in ["a1", "a2"] {
        assert_eq!(int(&mut c, &["GRANT", a, "g", "10"]), 10);
    }
    // A failed command on a new account does not use a place.
    let e = err(&mut c, &["RESERVE", "new", "h", "5"]);
    assert!(e.starts_with("INSUFFICIENT"), "{e}");
    assert_eq!(int(&mut c, &["GRANT", "a3", "g", "10"]), 10);
    let e = err(&mut c, &["GRANT", "a4", "g", "10"]);
    assert!(e.starts_with("ERR") && e.contains("max_accounts"), "{e}");
    // Existing accounts carry on; reads of unknown ones are zeros.
    assert_eq!(int(&mut c, &["GRANT", "a1", "g2", "10"]), 20);
    assert_eq!(balance(&mut c, "a4"), [0, 0, 0, 0, 0]);
}

#[test]
fn the_test_clock_never_goes_back_after_a_restart_from_a_snapshot() {
    let (data, config) = setup("snapshot_every_records = 5");
    let mut srv = start(&data, &config, &["--test-clock"]);
    let mut c = srv.client();
    let later = int(&mut c, &["CLOCK", "ADVANCE", "3600000"]);
    for i in 0..10 {
        int(&mut c, &["GRANT", "a", &format!("g{i}"), "1"]);
    }
    // Wait for a snapshot that covers the clock record.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let has_snapshot = std::fs::read_dir(&data)
            .unwrap()
            .any(|e| e.unwrap().file_name().to_string_lossy().ends_with(".snap"));
        if has_snapshot {
            break;
        }
        assert!(Instant::now() < deadline, "no snapshot was taken");
        std::thread::sleep(Duration::from_millis(100));
    }
    srv.kill9();
    srv.restart();
    let mut c = srv.client();
    assert!(int(&mut c, &["CLOCK", "GET"]) >= later);
    assert_eq!(balance(&mut c, "a")[4], 10);
}

#[test]
fn plan_is_subscribe_and_plan_none_is_unsubscribe_under_names_no_client_treats_as_pubsub() {
    let (data, config) = setup("");
    let srv = start(&data, &config, &[]);
    let mut c = srv.client();
    assert_eq!(int(&mut c, &["PLAN", "a", "pro", "SEATS", "2"]), 1000);
    assert_eq!(int(&mut c, &["plan", "b", "starter"]), 200);
    // The old names are the same commands.
    assert_eq!(int(&mut c, &["SUBSCRIBE", "a", "pro", "SEATS", "3"]), 1500);
    assert_eq!(cmd(&mut c, &["PLAN", "a", "none"]), Ok(redis::Value::Okay));
    assert_eq!(cmd(&mut c, &["UNSUBSCRIBE", "b"]), Ok(redis::Value::Okay));
    let e = err(&mut c, &["PLAN", "a", "gold"]);
    assert!(e.starts_with("NOTFOUND"), "{e}");
    let e = err(&mut c, &["PLAN", "a"]);
    assert!(e.starts_with("ERR wrong number of arguments"), "{e}");
    // A plan may not be named none.
    let bad = data.with_extension("none.toml");
    std::fs::write(&bad, config_text("[plans.None]\ncredits_per_seat = 1")).unwrap();
    let other = data.with_extension("other");
    let stderr = refused_start(&[
        "--config".as_ref(),
        bad.as_os_str(),
        "--data-dir".as_ref(),
        other.as_os_str(),
    ]);
    assert!(
        stderr.contains("plans.None") && stderr.contains("PLAN account NONE"),
        "{stderr}"
    );
}

#[test]
fn an_unreachable_redis_is_tried_for_the_documented_10_s_then_the_start_fails() {
    // A port nobody listens on: bound and released by this test.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let data = temp_dir("noredis").join("data");
    let mut creditd = Command::new(env!("CARGO_BIN_EXE_creditd"));
    creditd
        .args([
            "--listen",
            "127.0.0.1:0",
            "--http",
            "127.0.0.1:0",
            "--data-dir",
        ])
        .arg(&data)
        .arg("--redis")
        .arg(format!("redis://127.0.0.1:{port}/0"));
    let started = Instant::now();
    let (success, stderr) = run_to_exit(creditd, Duration::from_secs(30));
    let took = started.elapsed();
    assert!(!success, "{stderr}");
    assert!(stderr.contains("cannot reach Redis"), "{stderr}");
    assert!(
        took >= Duration::from_millis(9_500) && took < Duration::from_secs(20),
        "gave up after {took:?}"
    );
}
