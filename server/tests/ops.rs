//! Operations: tokens and roles against every command class, HTTP probes,
//! metrics that move, INFO sections, graceful shutdown, refusing to listen
//! beyond loopback without tokens.

mod common;

use common::*;
use std::io::Write as _;
use std::process::Command;

const TOKENS: &str = r#"
[[tokens]]
token = "admin-secret"
role = "admin"

[[tokens]]
token = "gw-secret"
role = "gateway"
user = "gateway"

[[tokens]]
token = "probe-secret"
role = "probe"
"#;

fn start_with_tokens() -> Creditd {
    let dir = temp_dir("auth");
    let config = dir.join("creditd.toml");
    let builtin = include_str!("../../docs/examples/creditd.toml");
    std::fs::write(&config, format!("{builtin}\n{TOKENS}")).unwrap();
    Creditd::start_in(&dir.join("data"), &["--config", config.to_str().unwrap()])
}

fn code(r: Result<redis::Value, String>) -> String {
    match r {
        Ok(_) => "ok".into(),
        Err(e) => e.split(' ').next().unwrap_or("").to_string(),
    }
}

/// One representative command per class.
const CLASSES: &[(&str, &[&str])] = &[
    ("gateway", &["RESERVE", "acct", "h-ROLE", "0"]),
    ("gateway", &["BALANCE", "acct"]),
    ("gateway", &["QUOTE", "image/flux-2-pro", "1"]),
    ("gateway", &["HISTORY", "acct"]),
    ("admin", &["GRANT", "acct", "g-ROLE", "10"]),
    ("admin", &["SUBSCRIBE", "acct-ROLE", "pro"]),
    ("admin", &["CONFIG", "GET", "x"]),
    ("probe", &["INFO", "server"]),
];

#[test]
fn roles_against_every_command_class() {
    let srv = start_with_tokens();
    // Not authenticated: only PING HELLO AUTH QUIT.
    let mut anon = srv.client();
    assert_eq!(code(cmd(&mut anon, &["PING"])), "ok");
    for (_, args) in CLASSES {
        assert_eq!(code(cmd(&mut anon, args)), "NOAUTH", "{args:?}");
    }
    assert_eq!(code(cmd(&mut anon, &["AUTH", "wrong"])), "WRONGPASS");
    assert_eq!(
        code(cmd(&mut anon, &["AUTH", "nobody", "gw-secret"])),
        "WRONGPASS"
    );
    assert_eq!(code(cmd(&mut anon, &["HELLO", "3"])), "NOAUTH");

    for (role, token, user) in [
        ("admin", "admin-secret", None),
        ("gateway", "gw-secret", Some("gateway")),
        ("probe", "probe-secret", None),
    ] {
        let mut c = srv.client();
        let auth: Vec<&str> = match user {
            Some(u) => vec!["AUTH", u, token],
            None => vec!["AUTH", token],
        };
        assert_eq!(code(cmd(&mut c, &auth)), "ok", "{role} authenticates");
        assert_eq!(code(cmd(&mut c, &["PING"])), "ok");
        for (class, args) in CLASSES {
            let args: Vec<String> = args.iter().map(|a| a.replace("ROLE", role)).collect();
            let args: Vec<&str> = args.iter().map(|s| s.as_str()).collect();
            let allowed = role == "admin" || role == *class;
            let got = code(cmd(&mut c, &args));
            if allowed {
                assert!(
                    got != "NOPERM" && got != "NOAUTH",
                    "{role} may run {args:?}: {got}"
                );
            } else {
                assert_eq!(got, "NOPERM", "{role} may not run {args:?}");
            }
        }
    }
    // HELLO 3 AUTH in one step.
    let mut c = srv.client();
    let hello = cmd(&mut c, &["HELLO", "3", "AUTH", "default", "admin-secret"]);
    assert!(hello.is_ok(), "{hello:?}");
    assert_eq!(code(cmd(&mut c, &["GRANT", "x", "g", "1"])), "ok");
}

#[test]
fn refuses_non_loopback_without_tokens() {
    let dir = temp_dir("insecure");
    let port = free_port();
    let out = Command::new(env!("CARGO_BIN_EXE_creditd"))
        .args(["--listen", &format!("0.0.0.0:{port}")])
        .args(["--http", &format!("127.0.0.1:{}", free_port())])
        .arg("--data-dir")
        .arg(dir.join("data"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("without tokens") && stderr.contains("--insecure"),
        "{stderr}"
    );
}

#[test]
fn bad_config_is_refused_with_file_and_key() {
    let dir = temp_dir("badconfig");
    let config = dir.join("bad.toml");
    std::fs::write(
        &config,
        "[skus.\"video/x\"]\nunit = \"minute\"\ncredits = 5\n",
    )
    .unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_creditd"))
        .args(["--listen", &format!("127.0.0.1:{}", free_port())])
        .args(["--http", &format!("127.0.0.1:{}", free_port())])
        .arg("--config")
        .arg(&config)
        .arg("--data-dir")
        .arg(dir.join("data"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("bad.toml") && stderr.contains("unit") && stderr.contains("minute"),
        "{stderr}"
    );
}

fn metric(text: &str, name_and_labels: &str) -> f64 {
    text.lines()
        .find(|l| l.starts_with(name_and_labels))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0)
}

#[test]
fn probes_metrics_and_info() {
    let srv = Creditd::start(&[]);
    assert_eq!(srv.http_get("/healthz").0, 200);
    let (status, body) = srv.http_get("/readyz");
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("\"ready\":true"));
    assert_eq!(srv.http_get("/nope").0, 404);
    let before = srv.http_get("/metrics").1;
    let mut c = srv.client();
    int(&mut c, &["GRANT", "m", "g", "100"]);
    for i in 0..5 {
        int(&mut c, &["RESERVE", "m", &format!("h{i}"), "1"]);
    }
    let _ = err(&mut c, &["RESERVE", "m", "big", "1000"]);
    let after = srv.http_get("/metrics").1;
    let ok = r#"creditd_commands_total{command="reserve",result="ok"}"#;
    let insufficient = r#"creditd_commands_total{command="reserve",result="INSUFFICIENT"}"#;
    assert_eq!(metric(&after, ok) - metric(&before, ok), 5.0, "{after}");
    assert_eq!(
        metric(&after, insufficient) - metric(&before, insufficient),
        1.0
    );
    assert!(
        after.contains("creditd_command_duration_seconds_bucket"),
        "histograms exported"
    );
    assert_eq!(metric(&after, "creditd_open_holds"), 5.0);
    assert_eq!(metric(&after, "creditd_accounts"), 1.0);
    for section in ["server", "clients", "stats", "persistence", "accounts"] {
        let info = match cmd(&mut c, &["INFO", section]).unwrap() {
            redis::Value::BulkString(b) => String::from_utf8(b).unwrap(),
            redis::Value::VerbatimString { text, .. } => text,
            other => panic!("{other:?}"),
        };
        assert!(
            info.to_lowercase().contains(&format!("# {section}")),
            "{info}"
        );
    }
    let all = match cmd(&mut c, &["INFO"]).unwrap() {
        redis::Value::BulkString(b) => String::from_utf8(b).unwrap(),
        other => panic!("{other:?}"),
    };
    for key in [
        "journal_fsync:everysec",
        "redis_connected:0",
        "redis_pending:0",
        "open_holds:5",
    ] {
        assert!(all.contains(key), "INFO lacks {key}: {all}");
    }
}

/// `field:value` (or `field:count=value`) in INFO text, 0 if absent.
fn info_count(info: &str, field: &str) -> u64 {
    info.lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .map(|v| v.trim_start_matches("count=").parse().unwrap())
        .unwrap_or(0)
}

/// Error replies are counted by code, once, in INFO and in /metrics alike:
/// one before AUTH, two refused commands, an unknown one. (Raw sockets: a
/// client library's own setup commands would be counted too; and counts are
/// compared before and after, since the test harness's start-up probe is an
/// INFO before AUTH.)
#[test]
fn error_replies_are_counted_by_code() {
    let srv = start_with_tokens();
    let mut s = srv.raw();
    s.write_all(b"AUTH admin-secret\r\nINFO\r\n").unwrap();
    let before = read_replies(&mut s, 2).pop().unwrap();
    let metrics_before = srv.http_get("/metrics").1;
    let mut anon = srv.raw();
    anon.write_all(b"BALANCE x\r\n").unwrap();
    assert!(read_replies(&mut anon, 1)[0].starts_with("-NOAUTH "));
    s.write_all(b"RESERVE e h 5\r\nRESERVE e h2 5\r\nNOSUCH\r\nINFO\r\n")
        .unwrap();
    let replies = read_replies(&mut s, 4);
    let codes: Vec<&str> = replies[..3]
        .iter()
        .map(|r| r.split(' ').next().unwrap())
        .collect();
    assert_eq!(codes, ["-INSUFFICIENT", "-INSUFFICIENT", "-ERR"]);
    let after = &replies[3];
    assert!(after.contains("# Errorstats\r\n"), "{after}");
    let metrics_after = srv.http_get("/metrics").1;
    for (code, n) in [
        ("INSUFFICIENT", 2),
        ("NOAUTH", 1),
        ("ERR", 1),
        ("CONFLICT", 0),
    ] {
        let field = format!("errorstat_{code}");
        assert_eq!(
            info_count(after, &field) - info_count(&before, &field),
            n,
            "{code} in INFO: {after}"
        );
        let series = format!("creditd_error_replies_total{{code=\"{code}\"}}");
        assert_eq!(
            metric(&metrics_after, &series) - metric(&metrics_before, &series),
            n as f64,
            "{code} in /metrics: {metrics_after}"
        );
    }
    assert_eq!(
        info_count(after, "total_error_replies") - info_count(&before, "total_error_replies"),
        4
    );
}

#[test]
fn sigterm_drains_flushes_and_exits_zero() {
    let mut srv = Creditd::start(&[]);
    let mut c = srv.client();
    int(&mut c, &["GRANT", "t", "g", "100"]);
    int(&mut c, &["RESERVE", "t", "h", "30"]);
    drop(c);
    let status = srv.terminate();
    assert!(
        status.success(),
        "exit status {status}; log:\n{}",
        srv.log_text()
    );
    assert!(srv.log_text().contains("journal flushed"));
    srv.restart();
    let mut c = srv.client();
    assert_eq!(balance(&mut c, "t"), [70, 30, 0, 0, 100]);
    assert_eq!(int(&mut c, &["COMMIT", "t", "h", "10"]), 10);
}

const BUILTIN: &str = include_str!("../../docs/examples/creditd.toml");

/// A creditd listening on the wildcard address, as one reachable from other
/// machines does; the test reaches it over loopback. Killed on drop.
struct WildcardServer {
    child: std::process::Child,
    port: u16,
    log: std::path::PathBuf,
}

impl WildcardServer {
    /// Starts on `0.0.0.0:0` (the kernel picks the port; creditd records it
    /// in its data dir's lock file).
    fn start(dir: &std::path::Path, config: &std::path::Path, extra: &[&str]) -> WildcardServer {
        let log = dir.join("creditd.log");
        let data = dir.join("data");
        let mut child = Command::new(env!("CARGO_BIN_EXE_creditd"))
            .args(["--listen", "0.0.0.0:0", "--http", "127.0.0.1:0"])
            .arg("--config")
            .arg(config)
            .arg("--data-dir")
            .arg(&data)
            .args(extra)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
        while std::time::Instant::now() < deadline {
            if let Some(status) = child.try_wait().unwrap() {
                panic!(
                    "creditd exited ({status}); log:\n{}",
                    std::fs::read_to_string(&log).unwrap_or_default()
                );
            }
            if let Some((port, _)) = listening_ports(&data, child.id()) {
                if is_creditd(port) {
                    return WildcardServer { child, port, log };
                }
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        let _ = child.kill();
        let _ = child.wait();
        panic!(
            "creditd did not start on a wildcard address; log:\n{}",
            std::fs::read_to_string(&log).unwrap_or_default()
        );
    }

    fn client(&self) -> redis::Connection {
        redis::Client::open(format!("redis://127.0.0.1:{}/", self.port))
            .unwrap()
            .get_connection()
            .unwrap()
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for WildcardServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn send_signal(pid: u32, signal: &str) {
    let status = Command::new("kill")
        .arg(format!("-{signal}"))
        .arg(pid.to_string())
        .status()
        .unwrap();
    assert!(status.success(), "kill -{signal} {pid}");
}

/// Polls `check` every 20 ms until it holds or 10 s pass.
fn eventually(what: &str, mut check: impl FnMut() -> bool) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while !check() {
        assert!(std::time::Instant::now() < deadline, "timed out: {what}");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

/// A reload that would drop the tokens of a listener beyond loopback is
/// refused, by CONFIG RELOAD and by SIGHUP alike, and the old tokens stay in
/// force; `--insecure` waives the rule, as it does at start-up.
#[test]
fn reload_never_leaves_a_wildcard_listener_without_tokens() {
    let dir = temp_dir("wildcard");
    let config = dir.join("creditd.toml");
    std::fs::write(&config, format!("{BUILTIN}\n{TOKENS}")).unwrap();
    let srv = WildcardServer::start(&dir, &config, &[]);
    let mut admin = srv.client();
    assert_eq!(code(cmd(&mut admin, &["AUTH", "admin-secret"])), "ok");
    std::fs::write(&config, BUILTIN).unwrap();
    let refused = err(&mut admin, &["CONFIG", "RELOAD"]);
    assert!(
        refused.starts_with("ERR ")
            && refused.contains("no tokens")
            && refused.contains(&format!("0.0.0.0:{}", srv.port))
            && refused.contains("the old config stays"),
        "{refused}"
    );
    let mut anon = srv.client();
    assert_eq!(code(cmd(&mut anon, &["BALANCE", "a"])), "NOAUTH");
    // SIGHUP runs the same checks: refused, logged, the process keeps serving.
    send_signal(srv.child.id(), "HUP");
    eventually("the SIGHUP refusal is logged", || {
        srv.log_text()
            .lines()
            .any(|l| l.contains("SIGHUP") && l.contains("no tokens"))
    });
    let mut anon = srv.client();
    assert_eq!(code(cmd(&mut anon, &["BALANCE", "a"])), "NOAUTH");
    assert_eq!(code(cmd(&mut anon, &["AUTH", "probe-secret"])), "ok");
    // A reload that keeps tokens goes through.
    std::fs::write(
        &config,
        format!("{BUILTIN}\n[[tokens]]\ntoken = \"new-secret\"\nrole = \"admin\"\n"),
    )
    .unwrap();
    assert_eq!(code(cmd(&mut admin, &["CONFIG", "RELOAD"])), "ok");
    let mut c = srv.client();
    assert_eq!(code(cmd(&mut c, &["AUTH", "admin-secret"])), "WRONGPASS");
    assert_eq!(code(cmd(&mut c, &["AUTH", "new-secret"])), "ok");

    // Started with --insecure, dropping the tokens is allowed.
    let dir = temp_dir("wildcard-insecure");
    let config = dir.join("creditd.toml");
    std::fs::write(&config, format!("{BUILTIN}\n{TOKENS}")).unwrap();
    let srv = WildcardServer::start(&dir, &config, &["--insecure"]);
    let mut admin = srv.client();
    assert_eq!(code(cmd(&mut admin, &["AUTH", "admin-secret"])), "ok");
    std::fs::write(&config, BUILTIN).unwrap();
    assert_eq!(code(cmd(&mut admin, &["CONFIG", "RELOAD"])), "ok");
    let mut anon = srv.client();
    assert_eq!(code(cmd(&mut anon, &["BALANCE", "a"])), "ok");
}

/// SIGHUP rereads the config like CONFIG RELOAD and never ends the process; a
/// broken file is logged and the old config keeps serving.
#[test]
fn sighup_reloads_the_config_and_keeps_running() {
    let dir = temp_dir("sighup");
    let config = dir.join("creditd.toml");
    let with_sku = |credits: u32| {
        format!("{BUILTIN}\n[skus.\"test/hup\"]\nunit = \"use\"\ncredits = {credits}\n")
    };
    std::fs::write(&config, with_sku(7)).unwrap();
    let mut srv = Creditd::start_in(&dir.join("data"), &["--config", config.to_str().unwrap()]);
    let mut c = srv.client();
    assert_eq!(int(&mut c, &["QUOTE", "test/hup", "2"]), 14);
    std::fs::write(&config, with_sku(9)).unwrap();
    send_signal(srv.pid(), "HUP");
    eventually("QUOTE uses the reloaded price", || {
        matches!(
            cmd(&mut c, &["QUOTE", "test/hup", "2"]),
            Ok(redis::Value::Int(18))
        )
    });
    assert!(srv.is_running(), "log:\n{}", srv.log_text());
    assert!(srv.log_text().contains("config reloaded"));
    // A broken file: logged, the old config stays.
    std::fs::write(&config, "[skus.\"test/hup\"]\nunit = \"minute\"\n").unwrap();
    send_signal(srv.pid(), "HUP");
    eventually("the refused reload is logged", || {
        srv.log_text()
            .lines()
            .any(|l| l.contains("SIGHUP") && l.contains("minute") && l.contains("old config stays"))
    });
    assert!(srv.is_running());
    let mut c = srv.client();
    assert_eq!(int(&mut c, &["QUOTE", "test/hup", "2"]), 18);
    // SIGTERM still drains and exits 0.
    let status = srv.terminate();
    assert!(status.success(), "{status}");
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

/// What the server sends on `s` until it closes the connection (10 s at most).
fn until_closed(s: &mut std::net::TcpStream) -> String {
    use std::io::Read;
    s.set_read_timeout(Some(std::time::Duration::from_secs(10)))
        .unwrap();
    let mut got = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        match s.read(&mut chunk) {
            Ok(0) => return String::from_utf8_lossy(&got).into_owned(),
            Ok(n) => got.extend_from_slice(&chunk[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {
                return String::from_utf8_lossy(&got).into_owned()
            }
            Err(e) => panic!("not closed: {e}; got {:?}", String::from_utf8_lossy(&got)),
        }
    }
}

/// Before AUTH, requests are small, as in Redis: at most 10 arguments and
/// 16 KiB per argument (or per inline line); past that the connection gets
/// Redis's protocol error and is closed. Unauthenticated connections cannot
/// park large frames, and authenticated ones keep the full limits.
#[test]
fn before_auth_only_small_requests() {
    use std::io::Write;
    let srv = start_with_tokens();
    let pid = srv.pid();
    for (request, error) in [
        (
            b"*11\r\n".to_vec(),
            "-ERR Protocol error: unauthenticated multibulk length\r\n",
        ),
        (
            b"*2\r\n$4\r\nAUTH\r\n$16385\r\n".to_vec(),
            "-ERR Protocol error: unauthenticated bulk length\r\n",
        ),
        (
            vec![b'a'; 16 * 1024 + 1],
            "-ERR Protocol error: too big inline request\r\n",
        ),
        (
            format!("PING {}\r\n", "a ".repeat(10)).into_bytes(),
            "-ERR Protocol error: unauthenticated multibulk length\r\n",
        ),
    ] {
        let mut s = srv.raw();
        let _ = s.write_all(&request);
        assert_eq!(until_closed(&mut s), error);
    }
    // At the limits exactly: an ordinary answer, the connection stays open.
    let mut s = srv.raw();
    let token = vec![b't'; 16 * 1024];
    let mut at_limit = b"*3\r\n$4\r\nAUTH\r\n$4\r\nuser\r\n$16384\r\n".to_vec();
    at_limit.extend_from_slice(&token);
    at_limit.extend_from_slice(b"\r\nPING a b c d e f g h i\r\n");
    s.write_all(&at_limit).unwrap();
    let r = read_replies(&mut s, 2);
    assert!(r[0].starts_with("-WRONGPASS"), "{r:?}");
    assert!(r[1].starts_with("-ERR wrong number"), "{r:?}");
    // After AUTH the full limits apply, on the same connection.
    let mut big = b"AUTH admin-secret\r\n*2\r\n$4\r\nECHO\r\n$1000000\r\n".to_vec();
    big.extend_from_slice(&vec![b'e'; 1_000_000]);
    big.extend_from_slice(b"\r\n");
    s.write_all(&big).unwrap();
    let r = read_replies(&mut s, 2);
    assert_eq!((r[0].as_str(), r[1].len()), ("+OK", 1_000_000));
    // 100 unauthenticated connections each trying to park a 4 MiB frame.
    let rss_before = rss_kb(pid);
    let mut frame = b"*4\r\n$4\r\nAUTH\r\n".to_vec();
    for _ in 0..2 {
        frame.extend_from_slice(b"$1048576\r\n");
        frame.extend_from_slice(&vec![b'p'; 1024 * 1024]);
        frame.extend_from_slice(b"\r\n");
    }
    frame.extend_from_slice(b"$1048576\r\n");
    frame.extend_from_slice(&vec![b'p'; 1000 * 1024]);
    let parked: Vec<_> = (0..100)
        .map(|_| {
            let mut s = srv.raw();
            s.set_write_timeout(Some(std::time::Duration::from_secs(5)))
                .unwrap();
            let _ = s.write_all(&frame);
            s
        })
        .collect();
    let rss_parked = rss_kb(pid);
    assert!(
        rss_parked < rss_before + 100 * 1024,
        "rss grew from {rss_before} kB to {rss_parked} kB"
    );
    drop(parked);
    let mut c = srv.client();
    assert_eq!(code(cmd(&mut c, &["AUTH", "admin-secret"])), "ok");
    assert_eq!(code(cmd(&mut c, &["BALANCE", "a"])), "ok");
}

/// Descriptors the process has open.
fn fd_count(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| d.count())
        .unwrap_or(0)
}

/// The probe port takes at most 64 connections (the rest get a 503 and are
/// closed at once), drops a request whose headers do not arrive within 5 s,
/// and refuses large headers: half-sent requests cannot use up the process's
/// descriptors, and RESP keeps accepting throughout.
#[test]
fn http_connections_are_capped_and_timed_out() {
    use std::io::Write;
    let srv = Creditd::start(&[]);
    let pid = srv.pid();
    let fds_before = fd_count(pid);
    let half_sent: Vec<_> = (0..1_100)
        .map(|_| {
            let mut s = std::net::TcpStream::connect(("127.0.0.1", srv.http_port)).unwrap();
            s.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
                .unwrap();
            s
        })
        .collect();
    let mut c = srv.client();
    assert_eq!(int(&mut c, &["GRANT", "h", "g", "1"]), 1);
    // Each is either refused at once (a 503, or a reset if the 503 was
    // overtaken by the close) or held: still waiting for its headers, or
    // closed without an answer once its header time was up.
    let mut refused = 0;
    let mut held = Vec::new();
    for mut s in half_sent {
        s.set_read_timeout(Some(std::time::Duration::from_millis(100)))
            .unwrap();
        let mut first = [0u8; 12];
        match std::io::Read::read(&mut s, &mut first) {
            Ok(n) if n > 0 => {
                assert!(
                    first[..n].starts_with(b"HTTP/1.1 503"),
                    "{:?}",
                    String::from_utf8_lossy(&first[..n])
                );
                refused += 1;
            }
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => refused += 1,
            Ok(_) | Err(_) => held.push(s),
        }
    }
    assert!(held.len() <= 64, "{} connections held", held.len());
    assert_eq!(refused + held.len(), 1_100);
    assert!(
        fd_count(pid) <= fds_before + 64 + 8,
        "{} descriptors open, {fds_before} before",
        fd_count(pid)
    );
    // The held ones are closed once their header time is up.
    for mut s in held {
        until_closed(&mut s);
    }
    eventually("the probes answer again", || {
        srv.http_get("/healthz").0 == 200
    });
    // Headers beyond 8 KiB are refused.
    let mut s = std::net::TcpStream::connect(("127.0.0.1", srv.http_port)).unwrap();
    let header = "a".repeat(16 * 1024);
    // (The server may answer and close before all of it is written.)
    let _ = write!(
        s,
        "GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: {header}\r\n\r\n"
    );
    let reply = until_closed(&mut s);
    assert!(
        reply.is_empty() || reply.starts_with("HTTP/1.1 431"),
        "{reply}"
    );
    assert_eq!(int(&mut c, &["GRANT", "h", "g2", "1"]), 2);
}
