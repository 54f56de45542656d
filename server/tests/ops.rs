//! Operations: tokens and roles against every command class, HTTP probes,
//! metrics that move, INFO sections, graceful shutdown, refusing to listen
//! beyond loopback without tokens.

mod common;

use common::*;
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
