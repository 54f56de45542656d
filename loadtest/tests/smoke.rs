//! Smoke tests: the load tester against the real creditd binary and against a
//! stock redis-server with the Lua scripts, each with `--verify`; with tokens
//! (right, wrong and none); and runs whose error replies pass or fail
//! `--max-error-rate`.
//!
//! The creditd binary must be built in the same profile first. `cargo test
//! --workspace` (and `scripts/test`) does that: it builds every binary before
//! running tests. With `cargo test -p creditd-loadtest` alone, run `cargo build
//! -p creditd` first, or set `CREDITD_BIN` to another build. `redis-server` must
//! be installed (`scripts/test` installs it). A missing binary fails the test
//! with a message that says how to get it, never a silent skip.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

const LOADTEST: &str = env!("CARGO_BIN_EXE_creditd-loadtest");

/// A child server, killed (by its own pid) and its directory removed on drop.
struct Server {
    child: Child,
    dir: PathBuf,
    port: u16,
}

impl Server {
    fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(self.dir.join("server.log")).unwrap_or_default()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A fresh directory for one server (and its reports).
fn temp_dir(tag: &str) -> PathBuf {
    static COUNTER: AtomicU32 = AtomicU32::new(0);
    let dir = std::env::temp_dir().join(format!(
        "creditd-loadtest-smoke-{tag}-{}-{}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    ));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("temp dir");
    dir
}

/// A command without the caller's `CREDITD_*` variables: creditd reads its
/// settings from them and the load tester its token, and the tests must not
/// depend on the environment they run in.
fn clean_command(program: impl AsRef<std::ffi::OsStr>) -> Command {
    let mut cmd = Command::new(program);
    for (key, _) in std::env::vars_os() {
        if key.to_string_lossy().starts_with("CREDITD_") {
            cmd.env_remove(key);
        }
    }
    cmd
}

fn creditd_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("CREDITD_BIN") {
        return PathBuf::from(p);
    }
    // The binaries of the workspace share one directory per profile.
    let next_to_us = Path::new(LOADTEST)
        .parent()
        .expect("the load tester's directory")
        .join("creditd");
    assert!(
        next_to_us.exists(),
        "no creditd binary at {}: build it first with `cargo build -p creditd` \
         (`scripts/test` and `cargo test --workspace` build it), or set CREDITD_BIN",
        next_to_us.display()
    );
    next_to_us
}

/// The RESP port process `pid` recorded in `data_dir`'s lock file once it
/// listens. The file is rewritten in place, so only a whole one counts: our
/// pid, and every line ended (the `http=` line is written last).
fn listening_port(data_dir: &Path, pid: u32) -> Option<u16> {
    let text = std::fs::read_to_string(data_dir.join("creditd.lock")).ok()?;
    if !text.ends_with('\n') {
        return None;
    }
    let field = |key: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(key)?.strip_prefix('='))
    };
    if field("pid")?.parse::<u32>().ok()? != pid {
        return None;
    }
    field("http")?;
    field("listen")?.rsplit(':').next()?.parse().ok()
}

/// Starts creditd on ports the kernel picks (no race with a parallel test for
/// a "free" port), with `config` as its config file when given, and learns
/// its RESP port from the lock file in its data dir.
fn start_creditd(config: Option<&str>) -> Server {
    let bin = creditd_bin();
    let dir = temp_dir("creditd");
    let data_dir = dir.join("data");
    let log = std::fs::File::create(dir.join("server.log")).expect("log file");
    let mut cmd = clean_command(&bin);
    cmd.args(["--listen", "127.0.0.1:0", "--http", "127.0.0.1:0"])
        .arg("--data-dir")
        .arg(&data_dir)
        .args(["--log", "warn"]);
    if let Some(text) = config {
        let path = dir.join("creditd.toml");
        std::fs::write(&path, text).expect("write the config");
        cmd.arg("--config").arg(path);
    }
    let child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .unwrap_or_else(|e| panic!("start {}: {e}", bin.display()));
    let mut server = Server {
        child,
        dir,
        port: 0,
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Some(port) = listening_port(&data_dir, server.child.id()) {
            server.port = port;
            return server;
        }
        if let Ok(Some(status)) = server.child.try_wait() {
            panic!(
                "creditd exited early ({status}); log:\n{}",
                server.log_text()
            );
        }
        assert!(
            Instant::now() < deadline,
            "creditd did not listen within 60 s; log:\n{}",
            server.log_text()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A loopback port that was free a moment ago, for redis-server, which cannot
/// bind port 0 and report it; `start_redis` retries when it was taken.
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// The `process_id` that `INFO server` reports on `port`: tells our
/// redis-server from another process that got the same port.
fn redis_process_id(port: u16) -> Option<u32> {
    let mut s =
        TcpStream::connect_timeout(&([127, 0, 0, 1], port).into(), Duration::from_millis(500))
            .ok()?;
    s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    s.write_all(b"INFO server\r\n").ok()?;
    let mut reply = Vec::new();
    let mut buf = [0u8; 4096];
    while reply.len() < 64 * 1024 {
        let n = s.read(&mut buf).ok()?;
        if n == 0 {
            break;
        }
        reply.extend_from_slice(&buf[..n]);
        let text = String::from_utf8_lossy(&reply);
        if let Some(rest) = text.split("process_id:").nth(1) {
            if let Some((pid, _)) = rest.split_once("\r\n") {
                return pid.trim().parse().ok();
            }
        }
    }
    None
}

/// Starts a redis-server without persistence on a free loopback port, and
/// makes sure the server answering there is this one (by its process id).
/// A port taken meanwhile by someone else makes it try another.
fn start_redis() -> Server {
    let installed = Command::new("redis-server")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    assert!(
        installed,
        "redis-server is not installed, and the load tester's Redis + Lua target is tested \
         against it: run the tests with `scripts/test` (it installs what they need), or \
         install it with `sudo apt-get install redis-server redis-tools`"
    );
    const ATTEMPTS: u32 = 10;
    let mut why = String::new();
    for _ in 0..ATTEMPTS {
        let port = free_port();
        let dir = temp_dir("redis");
        let log = std::fs::File::create(dir.join("server.log")).expect("log file");
        let child = Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .arg("--dir")
            .arg(&dir)
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(Stdio::null())
            .spawn()
            .expect("start redis-server");
        let mut server = Server { child, dir, port };
        let pid = server.child.id();
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            match redis_process_id(port) {
                Some(p) if p == pid => return server,
                Some(other) => {
                    why = format!("port {port} is answered by process {other}, not ours");
                    break;
                }
                None => {}
            }
            if let Ok(Some(status)) = server.child.try_wait() {
                why = format!(
                    "redis-server on port {port} exited ({status}):\n{}",
                    server.log_text()
                );
                break;
            }
            if Instant::now() >= deadline {
                why = format!("redis-server did not answer on port {port} within 10 s");
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        // Dropping `server` kills our child; try another port.
    }
    panic!("redis-server did not start in {ATTEMPTS} attempts; the last: {why}");
}

/// One run of the load tester.
struct Run {
    output: Output,
    /// The JSON report, when it wrote one.
    report: Option<serde_json::Value>,
}

impl Run {
    fn stdout(&self) -> String {
        String::from_utf8_lossy(&self.output.stdout).into_owned()
    }

    fn stderr(&self) -> String {
        String::from_utf8_lossy(&self.output.stderr).into_owned()
    }

    fn describe(&self) -> String {
        format!(
            "exit {}\nstdout:\n{}\nstderr:\n{}",
            self.output.status,
            self.stdout(),
            self.stderr()
        )
    }
}

/// Runs the load tester against `server` with `args` (and `env`), writing its
/// JSON report to the server's directory.
fn run_loadtest(server: &Server, args: &[&str], env: &[(&str, &str)]) -> Run {
    static RUNS: AtomicU32 = AtomicU32::new(0);
    let json = server.dir.join(format!(
        "report-{}.json",
        RUNS.fetch_add(1, Ordering::Relaxed)
    ));
    let output = clean_command(LOADTEST)
        .args(["--addr", &server.addr(), "--json"])
        .arg(&json)
        .args(args)
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .output()
        .expect("run creditd-loadtest");
    let report = std::fs::read_to_string(&json)
        .ok()
        .map(|text| serde_json::from_str(&text).expect("a valid JSON report"));
    Run { output, report }
}

/// Runs the load tester with `--verify` and checks it passed: exit 0, replies,
/// no verify mismatch, no connection error. Returns the JSON report.
fn loadtest_ok(server: &Server, args: &[&str], env: &[(&str, &str)]) -> serde_json::Value {
    let mut all = vec!["--verify"];
    all.extend_from_slice(args);
    let run = run_loadtest(server, &all, env);
    assert!(
        run.output.status.success(),
        "creditd-loadtest {args:?} failed: {}",
        run.describe()
    );
    let v = run.report.clone().expect("the JSON report");
    assert!(
        v["throughput_ops_s"].as_f64().unwrap_or(0.0) > 0.0,
        "no throughput: {}",
        run.describe()
    );
    assert_eq!(
        v["verify"]["mismatches"],
        0,
        "verify failed: {}",
        run.describe()
    );
    assert!(v["verify"]["accounts_checked"].as_u64().unwrap_or(0) > 0);
    assert_eq!(
        v["connection_errors"].as_array().map(Vec::len),
        Some(0),
        "{}",
        run.describe()
    );
    v
}

const MIX: &[&str] = &[
    "--workload",
    "mix",
    "--mode",
    "closed",
    "--duration",
    "2",
    "--connections",
    "8",
    "--pipeline",
    "4",
    "--accounts",
    "500",
    "--abandon-ttl-ms",
    "100",
];

/// Every part of the mix happened and was checked.
fn assert_full_mix(v: &serde_json::Value) {
    for cmd in [
        "reserve", "capture", "commit", "release", "debit", "balance", "retry",
    ] {
        assert!(
            v["by_command"][cmd]["count"].as_u64().unwrap_or(0) > 0,
            "no {cmd} in {v}"
        );
    }
    assert!(v["verify"]["retries_checked"].as_u64().unwrap_or(0) > 0);
    assert!(v["verify"]["live_balance_checks"].as_u64().unwrap_or(0) > 0);
    // Abandoned holds were seen to expire.
    assert!(v["verify"]["holds_expected_expired"].as_u64().unwrap_or(0) > 0);
    assert_eq!(v["errors"].as_object().map(|e| e.len()), Some(0), "{v}");
    assert_eq!(v["unexpected_errors"], 0, "{v}");
}

#[test]
fn creditd_mix_and_open_loop() {
    let server = start_creditd(None);
    let run = run_loadtest(&server, &[&["--verify"], MIX].concat(), &[]);
    // The header says in words what runs, before anything else happens.
    let header = format!(
        "running the mix workload, closed loop, 8 connections, pipeline 4, against creditd at {}",
        server.addr()
    );
    assert!(run.stderr().contains(&header), "{}", run.describe());
    assert!(run.output.status.success(), "{}", run.describe());
    let v = run.report.expect("the JSON report");
    assert_eq!(v["verify"]["mismatches"], 0, "{v}");
    assert_full_mix(&v);

    // Open loop, reserve only: 2000 requests paced over one second, none
    // dropped. (Not the throughput: how fast a debug build keeps up on a
    // shared machine is not what this checks.)
    let v = loadtest_ok(
        &server,
        &[
            "--quiet",
            "--workload",
            "reserve",
            "--mode",
            "open",
            "--rate",
            "2000",
            "--duration",
            "1",
            "--connections",
            "4",
            "--accounts",
            "200",
            "--keys",
            "uniform",
        ],
        &[],
    );
    assert_eq!(v["requests"], 2000, "{v}");
    assert_eq!(v["dropped"], 0, "{v}");
    let elapsed = v["elapsed_s"].as_f64().unwrap();
    assert!(elapsed >= 0.99, "paced, not sent at once: {elapsed} s");
    assert_eq!(
        v["verify"]["holds_expected_open"].as_u64(),
        v["by_command"]["reserve"]["count"].as_u64()
    );
}

#[test]
fn redis_lua_mix() {
    let server = start_redis();
    let mut args = vec!["--quiet", "--target", "redis-lua"];
    args.extend_from_slice(MIX);
    let v = loadtest_ok(&server, &args, &[]);
    assert_full_mix(&v);
}

/// The members workload: caps, refusals and low-balance events, each checked
/// by `--verify` against what the client saw acknowledged.
#[test]
fn creditd_members() {
    let server = start_creditd(None);
    let v = loadtest_ok(
        &server,
        &[
            "--quiet",
            "--workload",
            "members",
            "--duration",
            "2",
            "--connections",
            "4",
            "--accounts",
            "40",
            "--keys",
            "uniform",
            "--member-cap",
            "10000",
        ],
        &[],
    );
    for cmd in ["reserve", "commit", "release", "debit", "grant"] {
        assert!(
            v["by_command"][cmd]["count"].as_u64().unwrap_or(0) > 0,
            "no {cmd} in {v}"
        );
    }
    let m = &v["verify"]["members"];
    assert_eq!(m["members_checked"], 160, "{v}");
    assert!(m["limited_refusals"].as_u64().unwrap_or(0) > 0, "{v}");
    assert!(m["limited_events"].as_u64().unwrap_or(0) > 0, "{v}");
    assert!(m["top_ups"].as_u64().unwrap_or(0) > 0, "{v}");
    let low = m["low_events"].as_u64().unwrap_or(0);
    assert!(low > 0, "{v}");
    assert_eq!(m["crossings_expected"].as_u64(), Some(low), "{v}");
    // LIMITED and INSUFFICIENT are this workload's own refusals.
    assert_eq!(v["unexpected_errors"], 0, "{v}");
    assert!(
        v["errors"]["LIMITED"]["count"].as_u64().unwrap_or(0) > 0,
        "{v}"
    );

    // It runs against creditd only, and one connection per account.
    for (args, says) in [
        (&["--target", "redis-lua"][..], "creditd only"),
        (
            &["--accounts", "2", "--connections", "4"][..],
            "at least --connections",
        ),
    ] {
        let run = run_loadtest(&server, &[&["--workload", "members"], args].concat(), &[]);
        assert_eq!(run.output.status.code(), Some(64), "{}", run.describe());
        assert!(run.stderr().contains(says), "{}", run.describe());
    }
}

/// Bad arguments exit 64 with the reason, apart from every other outcome
/// (2 is `--verify` mismatches, not a usage error).
#[test]
fn bad_arguments_exit_64() {
    for (args, says) in [
        (&["--max-error-rate", "1.5"][..], "not between 0 and 1"),
        (&["--max-error-rate", "lots"][..], "not a number"),
        (&["--no-such-flag"][..], "--no-such-flag"),
        (&["--connections", "0"][..], "at least 1"),
    ] {
        let out = clean_command(LOADTEST)
            .args(args)
            .stdin(Stdio::null())
            .output()
            .expect("run creditd-loadtest");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(64), "{args:?}: {stderr}");
        assert!(stderr.contains(says), "{args:?}: {stderr}");
    }
}

/// A short closed-loop reserve run on a few accounts.
const SHORT_RESERVE: &[&str] = &[
    "--workload",
    "reserve",
    "--connections",
    "2",
    "--accounts",
    "2",
    "--keys",
    "uniform",
    "--requests",
    "100",
];

/// With tokens configured, every connection of the load tester (the setup
/// that grants, the load, the `--verify` reads) authenticates with the token
/// from `CREDITD_TOKEN` or `--token`. A wrong token, or none, stops it before
/// any load with the server's own refusal.
#[test]
fn creditd_with_tokens() {
    let server = start_creditd(Some(
        "[[tokens]]\ntoken = \"smoke-admin-token\"\nrole = \"admin\"\n\
         [[tokens]]\ntoken = \"smoke-probe-token\"\nrole = \"probe\"\n",
    ));

    let v = loadtest_ok(
        &server,
        &[&["--quiet"], MIX].concat(),
        &[("CREDITD_TOKEN", "smoke-admin-token")],
    );
    assert_full_mix(&v);
    let v = loadtest_ok(
        &server,
        &[&["--quiet", "--token", "smoke-admin-token"], SHORT_RESERVE].concat(),
        &[],
    );
    assert_eq!(v["requests"], 100, "{v}");

    let wrong = run_loadtest(
        &server,
        &[&["--token", "not-the-token"], SHORT_RESERVE].concat(),
        &[],
    );
    assert!(!wrong.output.status.success(), "{}", wrong.describe());
    assert!(
        wrong.stderr().contains("WRONGPASS"),
        "the server's refusal is shown: {}",
        wrong.describe()
    );
    assert!(
        wrong.report.is_none() && !wrong.stdout().contains("throughput"),
        "no load was run: {}",
        wrong.describe()
    );

    let none = run_loadtest(&server, SHORT_RESERVE, &[]);
    assert!(!none.output.status.success(), "{}", none.describe());
    assert!(
        none.stderr().contains("NOAUTH") && none.stderr().contains("--token"),
        "the refusal and the flag that fixes it are shown: {}",
        none.describe()
    );
    assert!(none.report.is_none(), "{}", none.describe());

    // A role that may not GRANT stops at the setup, saying what it takes.
    let probe = run_loadtest(
        &server,
        &[&["--token", "smoke-probe-token"], SHORT_RESERVE].concat(),
        &[],
    );
    assert!(!probe.output.status.success(), "{}", probe.describe());
    assert!(
        probe.stderr().contains("NOPERM") && probe.stderr().contains("admin"),
        "{}",
        probe.describe()
    );
    assert!(probe.report.is_none(), "{}", probe.describe());
}

/// Error replies the workload does not expect fail the run above
/// `--max-error-rate`, and the report shows their messages; refusals the
/// workload expects (INSUFFICIENT once the granted credits run out) do not.
#[test]
fn unexpected_errors_fail_the_run() {
    // Five open holds per account: the reserve workload, which leaves every
    // hold open, gets `ERR too many open holds` from the sixth on.
    let server = start_creditd(Some("max_holds_per_account = 5\n"));
    let run = run_loadtest(
        &server,
        &[&["--quiet", "--run-prefix", "over:"], SHORT_RESERVE].concat(),
        &[],
    );
    assert_eq!(run.output.status.code(), Some(3), "{}", run.describe());
    assert!(
        run.stdout().contains("too many open holds on this account"),
        "the error table shows the message: {}",
        run.describe()
    );
    assert!(
        run.stderr().contains("--max-error-rate 0.1%")
            && run.stderr().contains("unexpected error replies"),
        "it says why it failed: {}",
        run.describe()
    );
    let v = run.report.expect("the JSON report");
    assert_eq!(v["unexpected_errors"], 90, "{v}");
    assert_eq!(v["errors"]["ERR"]["unexpected"], 90, "{v}");
    let messages = v["errors"]["ERR"]["messages"].as_array().expect("messages");
    assert!(
        !messages.is_empty() && messages.len() <= 3,
        "a few distinct messages: {v}"
    );

    // The same errors within a looser limit pass.
    let v = loadtest_ok(
        &server,
        &[
            &[
                "--quiet",
                "--run-prefix",
                "loose:",
                "--max-error-rate",
                "95%",
            ],
            SHORT_RESERVE,
        ]
        .concat(),
        &[],
    );
    assert_eq!(v["unexpected_errors"], 90, "{v}");

    // Two holds of 5 use up each account's 10 credits; the other RESERVEs are
    // refused with INSUFFICIENT, which this workload expects.
    let v = loadtest_ok(
        &server,
        &[
            &[
                "--quiet",
                "--run-prefix",
                "broke:",
                "--grant",
                "10",
                "--amount",
                "5",
            ],
            SHORT_RESERVE,
        ]
        .concat(),
        &[],
    );
    assert_eq!(v["errors"]["INSUFFICIENT"]["count"], 96, "{v}");
    assert_eq!(v["errors"]["INSUFFICIENT"]["unexpected"], 0, "{v}");
    assert_eq!(v["unexpected_errors"], 0, "{v}");
}
