//! Stock Redis clients against the real creditd: the client matrices
//! (redis-py; ioredis and node-redis) and the gateway examples that
//! docs/clients/ include, run as scripts against a creditd started here.
//!
//! The scripts need redis-py in `target/clients-venv` and the Node packages
//! in `clients/node/node_modules`; `scripts/test` installs both. Without
//! them these tests fail and say so (they never pass silently). Only where
//! Node.js itself is absent is the Node part skipped, with a printed reason.

mod common;
mod redis_support;

use common::Creditd;
use redis_support::RedisServer;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const ADMIN_TOKEN: &str = "matrix-admin";
const GATEWAY_TOKEN: &str = "matrix-gateway";
const PROBE_TOKEN: &str = "matrix-probe";
/// A whole script's bound; the matrices take seconds.
const SCRIPT_TIMEOUT: Duration = Duration::from_secs(120);

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the server crate lives in the workspace")
        .to_path_buf()
}

fn clients_config() -> PathBuf {
    repo_root().join("clients/creditd.toml")
}

/// The venv's python with redis-py, or a failure that says how to get it.
fn python() -> PathBuf {
    let python = repo_root().join("target/clients-venv/bin/python");
    assert!(
        python.exists(),
        "{} is missing: run scripts/test (it makes the venv and installs redis-py \
         from clients/python/requirements.txt)",
        python.display()
    );
    python
}

/// `node` with the packages of clients/node installed; None (with the
/// reason printed) where Node.js is not installed at all.
fn node() -> Option<PathBuf> {
    let found = Command::new("node")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !found {
        println!("SKIPPED: node is not installed; scripts/test installs nodejs and npm as root");
        return None;
    }
    let modules = repo_root().join("clients/node/node_modules");
    assert!(
        modules.join("ioredis").exists() && modules.join("redis").exists(),
        "{} is missing ioredis or redis: run scripts/test (it runs npm ci in clients/node)",
        modules.display()
    );
    Some(PathBuf::from("node"))
}

/// creditd with the clients' config (tokens, skus, plans) and the test clock.
fn start_creditd() -> Creditd {
    let config = clients_config();
    Creditd::start(&["--config", config.to_str().unwrap(), "--test-clock"])
}

/// A creditd whose writes answer BUSY: its Redis is gone and the write-behind
/// backlog bound is one change, so the second change not in Redis is refused.
struct BusyCreditd {
    creditd: Creditd,
    _redis: RedisServer,
}

fn start_busy_creditd() -> BusyCreditd {
    let mut redis = RedisServer::start();
    let dir = common::temp_dir("busy");
    let config = dir.join("creditd.toml");
    let base = std::fs::read_to_string(clients_config()).expect("clients/creditd.toml");
    // Settings come before the first table.
    std::fs::write(&config, format!("redis_max_pending = 1\n{base}")).unwrap();
    let creditd = Creditd::start_in(
        &dir.join("data"),
        &[
            "--config",
            config.to_str().unwrap(),
            "--redis",
            &redis.url(),
        ],
    );
    redis.kill();
    BusyCreditd {
        creditd,
        _redis: redis,
    }
}

/// Runs a script to the end and asserts it exits 0; its output is printed,
/// and shown in the failure.
fn run_script(what: &str, mut cmd: Command) {
    cmd.current_dir(repo_root());
    let (status, output) = common::run_bounded(cmd, SCRIPT_TIMEOUT);
    println!("{what}:\n{output}");
    match status {
        Some(s) if s.success() => {}
        Some(s) => panic!("{what} failed ({s}):\n{output}"),
        None => panic!("{what} did not finish in {SCRIPT_TIMEOUT:?}:\n{output}"),
    }
}

fn token_args(cmd: &mut Command, port: u16) {
    cmd.arg("--port")
        .arg(port.to_string())
        .args(["--admin-token", ADMIN_TOKEN])
        .args(["--gateway-token", GATEWAY_TOKEN])
        .args(["--probe-token", PROBE_TOKEN]);
}

#[test]
fn redis_py_sync_and_asyncio_in_resp2_and_resp3() {
    let python = python();
    let server = start_creditd();
    let busy = start_busy_creditd();
    let mut cmd = Command::new(python);
    cmd.arg("clients/python/matrix.py");
    token_args(&mut cmd, server.port);
    cmd.arg("--busy-port").arg(busy.creditd.port.to_string());
    run_script("clients/python/matrix.py", cmd);
}

#[test]
fn ioredis_and_node_redis() {
    let Some(node) = node() else { return };
    let server = start_creditd();
    let busy = start_busy_creditd();
    let mut cmd = Command::new(node);
    cmd.arg("clients/node/matrix.js");
    token_args(&mut cmd, server.port);
    cmd.arg("--busy-port").arg(busy.creditd.port.to_string());
    run_script("clients/node/matrix.js", cmd);
}

fn gateway_args(cmd: &mut Command, port: u16) {
    cmd.arg("--port")
        .arg(port.to_string())
        .args(["--gateway-token", GATEWAY_TOKEN])
        .args(["--admin-token", ADMIN_TOKEN]);
}

#[test]
fn python_gateway_example_runs() {
    let python = python();
    let server = start_creditd();
    let mut cmd = Command::new(python);
    cmd.arg("clients/python/gateway.py");
    gateway_args(&mut cmd, server.port);
    run_script("clients/python/gateway.py", cmd);
}

#[test]
fn node_gateway_example_runs() {
    let Some(node) = node() else { return };
    let server = start_creditd();
    let mut cmd = Command::new(node);
    cmd.arg("clients/node/gateway.js");
    gateway_args(&mut cmd, server.port);
    run_script("clients/node/gateway.js", cmd);
}

/// The gateway pages include the example files verbatim, so the code a
/// reader copies is the code the tests above run.
#[test]
fn gateway_docs_include_the_examples_verbatim() {
    let root = repo_root();
    for (doc, file, lang) in [
        (
            "docs/clients/python.md",
            "clients/python/gateway.py",
            "python",
        ),
        ("docs/clients/node.md", "clients/node/gateway.js", "js"),
    ] {
        let doc_text = std::fs::read_to_string(root.join(doc)).expect(doc);
        let code = std::fs::read_to_string(root.join(file)).expect(file);
        let block = format!("```{lang}\n{code}```\n");
        assert!(
            doc_text.contains(&block),
            "{doc} must include {file} verbatim in a ```{lang} block: copy the file into \
             the page's example block"
        );
    }
}

/// redis-cli treats SUBSCRIBE as Pub/Sub and waits for messages after the
/// reply; PLAN, the same command, returns like any other.
#[test]
fn redis_cli_plan_returns_where_subscribe_waits() {
    let server = start_creditd();
    let redis_cli = |args: &[&str]| {
        let mut cmd = Command::new("redis-cli");
        cmd.args(["-p", &server.port.to_string()])
            .args([
                "--user",
                "default",
                "--pass",
                ADMIN_TOKEN,
                "--no-auth-warning",
            ])
            .args(args);
        cmd
    };
    let plan = |args: &[&str]| {
        let mut cli = redis_cli(args);
        cli.current_dir(repo_root());
        let (status, output) = common::run_bounded(cli, SCRIPT_TIMEOUT);
        assert!(
            status.is_some_and(|s| s.success()),
            "redis-cli {args:?} ({status:?}; scripts/test installs redis-tools):\n{output}"
        );
        output.trim().to_string()
    };
    assert_eq!(plan(&["PLAN", "cli", "pro", "SEATS", "2"]), "1000");
    assert_eq!(plan(&["PLAN", "cli", "NONE"]), "OK");

    // SUBSCRIBE is applied, and redis-cli keeps waiting for messages.
    let mut cli = redis_cli(&["SUBSCRIBE", "cli-sub", "pro"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("redis-cli");
    let mut c = server.client();
    common::cmd(&mut c, &["AUTH", ADMIN_TOKEN]).expect("AUTH");
    let deadline = Instant::now() + SCRIPT_TIMEOUT;
    while common::balance(&mut c, "cli-sub")[0] != 500 {
        assert!(
            Instant::now() < deadline,
            "redis-cli SUBSCRIBE was not applied"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    // Time enough to read the reply and exit, which it does not.
    std::thread::sleep(Duration::from_millis(500));
    let waiting = cli.try_wait().expect("wait").is_none();
    let _ = cli.kill();
    let _ = cli.wait();
    assert!(waiting, "redis-cli SUBSCRIBE returned after the reply");
}
