//! Smoke test: the load tester against the real creditd binary and against a
//! stock redis-server with the Lua scripts, each with `--verify`.
//!
//! The creditd binary must be built in the same profile first. `cargo test
//! --workspace` does that (it builds every binary before running tests); with
//! `cargo test -p creditd-loadtest` alone, run `cargo build -p creditd` first.
//! Set `CREDITD_BIN` to point at another build. Without a creditd binary (or
//! without `redis-server` on the PATH) the test prints why and skips that part.

use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const LOADTEST: &str = env!("CARGO_BIN_EXE_creditd-loadtest");

/// A child server, killed (by its own pid) and its data removed on drop.
struct Server {
    child: Child,
    dir: PathBuf,
    port: u16,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

fn temp_dir(tag: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "creditd-loadtest-smoke-{tag}-{}-{}",
        std::process::id(),
        free_port()
    ));
    std::fs::create_dir_all(&dir).expect("temp dir");
    dir
}

fn wait_listening(server: &mut Server) {
    let deadline = Instant::now() + Duration::from_secs(15);
    while Instant::now() < deadline {
        if TcpStream::connect(("127.0.0.1", server.port)).is_ok() {
            return;
        }
        if let Ok(Some(status)) = server.child.try_wait() {
            panic!("the server exited early: {status}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("the server did not listen on {} in time", server.port);
}

fn creditd_bin() -> Option<PathBuf> {
    if let Ok(p) = std::env::var("CREDITD_BIN") {
        return Some(PathBuf::from(p));
    }
    // The binaries of the workspace share one directory per profile.
    let here = Path::new(LOADTEST).parent()?.join("creditd");
    if here.exists() {
        return Some(here);
    }
    let fallback = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/debug/creditd");
    fallback.exists().then_some(fallback)
}

fn start_creditd(bin: &Path) -> Server {
    let port = free_port();
    let http = free_port();
    let dir = temp_dir("creditd");
    let child = Command::new(bin)
        .args(["--listen", &format!("127.0.0.1:{port}")])
        .args(["--http", &format!("127.0.0.1:{http}")])
        .arg("--data-dir")
        .arg(&dir)
        .args(["--log", "warn"])
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start creditd");
    let mut s = Server { child, dir, port };
    wait_listening(&mut s);
    s
}

fn start_redis() -> Option<Server> {
    let ok = Command::new("redis-server")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !ok {
        return None;
    }
    let port = free_port();
    let dir = temp_dir("redis");
    let child = Command::new("redis-server")
        .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
        .args(["--save", "", "--appendonly", "no"])
        .arg("--dir")
        .arg(&dir)
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start redis-server");
    let mut s = Server { child, dir, port };
    wait_listening(&mut s);
    Some(s)
}

/// Runs the load tester with `args` and returns its JSON report.
fn loadtest(server: &Server, args: &[&str]) -> serde_json::Value {
    let json = server.dir.join("report.json");
    let out = Command::new(LOADTEST)
        .args(["--addr", &format!("127.0.0.1:{}", server.port)])
        .args(["--verify", "--quiet", "--json"])
        .arg(&json)
        .args(args)
        .output()
        .expect("run creditd-loadtest");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "creditd-loadtest {args:?} failed ({}):\n{stdout}\n{stderr}",
        out.status
    );
    let text = std::fs::read_to_string(&json).expect("the JSON report");
    let v: serde_json::Value = serde_json::from_str(&text).expect("valid JSON");
    assert!(
        v["throughput_ops_s"].as_f64().unwrap_or(0.0) > 0.0,
        "no throughput:\n{stdout}"
    );
    assert_eq!(v["verify"]["mismatches"], 0, "verify failed:\n{stdout}");
    assert!(v["verify"]["accounts_checked"].as_u64().unwrap_or(0) > 0);
    assert_eq!(
        v["connection_errors"].as_array().map(Vec::len),
        Some(0),
        "{stdout}"
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
}

#[test]
fn creditd_mix_and_open_loop() {
    let Some(bin) = creditd_bin() else {
        eprintln!(
            "SKIPPED creditd_mix_and_open_loop: no creditd binary next to {LOADTEST}; \
             run `cargo build -p creditd` (or `cargo test --workspace`), or set CREDITD_BIN"
        );
        return;
    };
    let server = start_creditd(&bin);
    let v = loadtest(&server, MIX);
    assert_full_mix(&v);

    // Open loop, reserve only: the rate is kept and nothing is dropped.
    let v = loadtest(
        &server,
        &[
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
    );
    let tput = v["throughput_ops_s"].as_f64().unwrap();
    assert!(
        (1500.0..2500.0).contains(&tput),
        "open loop at {tput} ops/s"
    );
    assert_eq!(v["dropped"], 0);
    assert_eq!(
        v["verify"]["holds_expected_open"].as_u64(),
        v["by_command"]["reserve"]["count"].as_u64()
    );
}

#[test]
fn redis_lua_mix() {
    let Some(server) = start_redis() else {
        eprintln!("SKIPPED redis_lua_mix: redis-server is not installed");
        return;
    };
    let mut args = MIX.to_vec();
    args.extend(["--target", "redis-lua"]);
    let v = loadtest(&server, &args);
    assert_full_mix(&v);
}
