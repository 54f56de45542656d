//! The Rust clients against the real creditd: the `redis` crate's sync
//! connection, its async multiplexed connection and its ConnectionManager, in
//! RESP2 and RESP3, and the typed `creditd-client` built on them. Every
//! command of the contract runs on each; every error code reaches each with
//! its code and message as the server sent them (compared with the same
//! command's reply on a raw socket); the manager and the typed client ride out
//! a kill -9 and restart, and a retried operation applies once; the gateway
//! example of docs/clients/rust.md runs.

mod common;

// The example's `main` serves `cargo run --example gateway`; here its
// functions run against a creditd of the test's own.
#[allow(dead_code)]
#[path = "../../client/examples/gateway.rs"]
mod gateway;

use common::*;
use creditd_client::{
    Balance, BucketKind, Charge, Client, Error, Expiry, GrantOptions, OpId, Options, RetryPolicy,
    Usage,
};
use redis::aio::{ConnectionManager, ConnectionManagerConfig, MultiplexedConnection};
use redis::Value;
use std::io::Write;
use std::sync::atomic::{AtomicBool, AtomicU16, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const TOKENS: &str = r#"
[[tokens]]
token = "admin-secret"
role = "admin"

[[tokens]]
token = "gw-secret"
role = "gateway"
user = "gateway"
"#;

const VIDEO: &str = "video/kling-2.6-pro/1080/audio"; // 250 a second
const IMAGE: &str = "image/flux-2-pro"; // 80 an image, 4 for 288

/// creditd with the built-in rate card and plans, admin and gateway tokens,
/// and the test clock.
fn start_with_tokens() -> Creditd {
    let dir = temp_dir("clients-rust");
    let config = dir.join("creditd.toml");
    let builtin = include_str!("../../docs/examples/creditd.toml");
    std::fs::write(&config, format!("{builtin}\n{TOKENS}")).unwrap();
    Creditd::start_in(
        &dir.join("data"),
        &["--config", config.to_str().unwrap(), "--test-clock"],
    )
}

/// Who a connection authenticates as.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Who {
    Admin,
    Gateway,
    Anonymous,
    BadToken,
}

impl Who {
    /// The AUTH arguments a raw socket sends first.
    fn auth(self) -> &'static [&'static str] {
        match self {
            Who::Admin => &["AUTH", "admin-secret"],
            Who::Gateway => &["AUTH", "gateway", "gw-secret"],
            Who::Anonymous | Who::BadToken => &[],
        }
    }
}

fn url(port: u16, who: Who, resp3: bool) -> String {
    let credentials = match who {
        Who::Admin => ":admin-secret@",
        Who::Gateway => "gateway:gw-secret@",
        Who::Anonymous => "",
        Who::BadToken => ":not-the-token@",
    };
    let protocol = if resp3 { "?protocol=resp3" } else { "" };
    format!("redis://{credentials}127.0.0.1:{port}/{protocol}")
}

/// An error as the server sent it: "CODE message".
fn error_text(e: &redis::RedisError) -> String {
    match (e.code(), e.detail()) {
        (Some(code), Some(detail)) => format!("{code} {detail}"),
        (Some(code), None) => code.to_string(),
        _ => e.to_string(),
    }
}

/// The error line a raw socket gets for `args`, after `who`'s AUTH, without
/// its leading `-`: what every client must hand over intact.
fn raw_error(srv: &Creditd, who: Who, args: &[&str]) -> String {
    let mut s = srv.raw();
    let mut requests = Vec::new();
    let auth = who.auth();
    if !auth.is_empty() {
        requests.push(auth);
    }
    requests.push(args);
    for request in &requests {
        write!(s, "*{}\r\n", request.len()).unwrap();
        for a in *request {
            write!(s, "${}\r\n{a}\r\n", a.len()).unwrap();
        }
    }
    let replies = read_replies(&mut s, requests.len());
    let last = replies.last().unwrap();
    last.strip_prefix('-')
        .unwrap_or_else(|| panic!("{args:?}: expected an error, got {replies:?}"))
        .to_string()
}

// ---------------------------------------------------------------------------
// The redis crate's three connection kinds

#[derive(Clone, Copy, Debug)]
enum Kind {
    Sync,
    Multiplexed,
    Manager,
}

enum Conn {
    Sync(redis::Connection),
    Multiplexed(MultiplexedConnection),
    Manager(ConnectionManager),
}

impl Conn {
    async fn open(kind: Kind, url: &str) -> Result<Conn, redis::RedisError> {
        let client = redis::Client::open(url)?;
        Ok(match kind {
            Kind::Sync => {
                let c = client.get_connection()?;
                c.set_read_timeout(Some(Duration::from_secs(30)))?;
                Conn::Sync(c)
            }
            Kind::Multiplexed => {
                Conn::Multiplexed(client.get_multiplexed_async_connection().await?)
            }
            // One reconnection attempt, not the default six with growing
            // waits: a refused token would take seconds to be reported.
            Kind::Manager => {
                let config = ConnectionManagerConfig::new().set_number_of_retries(1);
                Conn::Manager(client.get_connection_manager_with_config(config).await?)
            }
        })
    }

    async fn run(&mut self, args: &[&str]) -> Result<Value, String> {
        let mut cmd = redis::cmd(args[0]);
        for a in &args[1..] {
            cmd.arg(*a);
        }
        match self {
            Conn::Sync(c) => cmd.query::<Value>(c),
            Conn::Multiplexed(c) => cmd.query_async::<Value>(c).await,
            Conn::Manager(c) => cmd.query_async::<Value>(c).await,
        }
        .map_err(|e| error_text(&e))
    }

    async fn ok(&mut self, args: &[&str]) -> Value {
        self.run(args)
            .await
            .unwrap_or_else(|e| panic!("{args:?}: {e}"))
    }

    async fn int(&mut self, args: &[&str]) -> i64 {
        match self.ok(args).await {
            Value::Int(n) => n,
            other => panic!("{args:?}: expected an integer, got {other:?}"),
        }
    }

    async fn okay(&mut self, args: &[&str]) {
        let v = self.ok(args).await;
        assert_eq!(v, Value::Okay, "{args:?}");
    }

    /// Runs `args`, expects the error `code`, and checks that the client
    /// got the line exactly as a raw socket does.
    async fn err(&mut self, srv: &Creditd, who: Who, args: &[&str], code: &str) -> String {
        let got = match self.run(args).await {
            Err(e) => e,
            Ok(v) => panic!("{args:?}: expected {code}, got {v:?}"),
        };
        assert!(got.starts_with(&format!("{code} ")), "{args:?}: {got}");
        assert_eq!(got, raw_error(srv, who, args), "{args:?}: the line intact");
        got
    }
}

/// A *fields* reply as pairs, checking its shape: a map in RESP3, a flat
/// array in RESP2.
fn fields(v: Value, resp3: bool) -> Vec<(String, Value)> {
    match v {
        Value::Map(pairs) if resp3 => pairs.into_iter().map(|(k, v)| (as_string(&k), v)).collect(),
        Value::Array(items) if !resp3 => items
            .chunks(2)
            .map(|kv| (as_string(&kv[0]), kv[1].clone()))
            .collect(),
        other => panic!(
            "expected fields as a {}, got {other:?}",
            if resp3 { "map" } else { "flat array" }
        ),
    }
}

fn field(f: &[(String, Value)], name: &str) -> Value {
    f.iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.clone())
        .unwrap_or_else(|| panic!("field {name} missing in {f:?}"))
}

fn text(v: &Value) -> String {
    match v {
        Value::VerbatimString { text, .. } => text.clone(),
        other => as_string(other),
    }
}

/// Every command of the contract, and the credit errors, on one connection
/// of `kind` authenticated as admin. Accounts are named after `p`.
async fn every_command(srv: &Creditd, kind: Kind, resp3: bool, p: &str) {
    let mut c = Conn::open(kind, &url(srv.port, Who::Admin, resp3))
        .await
        .unwrap_or_else(|e| panic!("{kind:?} resp3={resp3}: {e}"));
    let (a, b, t) = (format!("{p}-acme"), format!("{p}-art"), format!("{p}-team"));
    let (a, b, t) = (a.as_str(), b.as_str(), t.as_str());

    // Connection and operations.
    assert_eq!(text(&c.ok(&["PING"]).await), "PONG");
    assert_eq!(text(&c.ok(&["PING", "hello"]).await), "hello");
    assert_eq!(text(&c.ok(&["ECHO", "hi"]).await), "hi");
    let proto = if resp3 { "3" } else { "2" };
    let hello = fields(c.ok(&["HELLO", proto]).await, resp3);
    assert_eq!(text(&field(&hello, "server")), "creditd");
    assert_eq!(text(&field(&hello, "proto")), proto);
    c.okay(&["AUTH", "admin-secret"]).await;
    c.okay(&["SELECT", "0"]).await;
    c.okay(&["CLIENT", "SETNAME", "tour"]).await;
    assert_eq!(text(&c.ok(&["CLIENT", "GETNAME"]).await), "tour");
    assert!(c.int(&["CLIENT", "ID"]).await > 0);
    c.okay(&["CLIENT", "SETINFO", "LIB-VER", "1.0"]).await;
    assert!(c.int(&["COMMAND", "COUNT"]).await > 0);
    c.ok(&["COMMAND", "DOCS"]).await;
    assert!(matches!(c.ok(&["COMMAND"]).await, Value::Array(v) if !v.is_empty()));
    assert!(text(&c.ok(&["INFO", "persistence"]).await).contains("journal_fsync:"));
    match c.ok(&["CONFIG", "GET", "maxmemory"]).await {
        Value::Array(v) => assert!(v.is_empty()),
        Value::Map(v) => assert!(v.is_empty()),
        other => panic!("CONFIG GET: {other:?}"),
    }
    c.okay(&["CONFIG", "RELOAD"]).await;
    let now = c.int(&["CLOCK", "GET"]).await;
    let now_s = (now + 1000).to_string();
    assert_eq!(c.int(&["CLOCK", "SET", &now_s]).await, now + 1000);
    let now = c.int(&["CLOCK", "ADVANCE", "10"]).await;

    // Credits and holds, with a retry of each mutation.
    assert_eq!(c.int(&["GRANT", a, "pack", "3000"]).await, 3000);
    let welcome = [
        "GRANT",
        a,
        "welcome",
        "100",
        "KIND",
        "promo",
        "TTL",
        "604800000",
        "PRIORITY",
        "10",
    ];
    assert_eq!(c.int(&welcome).await, 3100);
    assert_eq!(c.int(&welcome).await, 3100);
    c.err(srv, Who::Admin, &["GRANT", a, "pack", "5"], "CONFLICT")
        .await;
    assert_eq!(c.int(&["QUOTE", IMAGE, "4"]).await, 288);
    let reserve = [
        "RESERVE", a, "job-1", "SKU", VIDEO, "QTY", "10", "TTL", "60000",
    ];
    assert_eq!(c.int(&reserve).await, 2500);
    assert_eq!(c.int(&reserve).await, 2500);
    let other = [
        "RESERVE", a, "job-1", "SKU", VIDEO, "QTY", "12", "TTL", "60000",
    ];
    c.err(srv, Who::Admin, &other, "CONFLICT").await;
    assert_eq!(c.int(&["EXTEND", a, "job-1", "600000"]).await, now + 600000);
    assert_eq!(c.int(&["CAPTURE", a, "job-1", "QTY", "3"]).await, 750);
    assert_eq!(c.int(&["CAPTURE", a, "job-1", "500"]).await, 750);
    assert_eq!(c.int(&["COMMIT", a, "job-1", "QTY", "7"]).await, 1750);
    assert_eq!(c.int(&["COMMIT", a, "job-1", "QTY", "7"]).await, 1750);
    c.err(srv, Who::Admin, &["RELEASE", a, "job-1"], "CONFLICT")
        .await;
    c.err(srv, Who::Admin, &["EXTEND", a, "job-1", "1000"], "CONFLICT")
        .await;
    assert_eq!(c.int(&["RESERVE", a, "job-2", "200"]).await, 200);
    assert_eq!(c.int(&["RELEASE", a, "job-2"]).await, 200);
    assert_eq!(c.int(&["RELEASE", a, "job-2"]).await, 200);
    assert_eq!(c.int(&["RESERVE", a, "job-3", "100"]).await, 100);
    assert_eq!(c.int(&["COMMIT", a, "job-3"]).await, 100);
    assert_eq!(c.int(&["RESERVE", a, "job-4", "100"]).await, 100);
    assert_eq!(c.int(&["COMMIT", a, "job-4", "60"]).await, 60);
    assert_eq!(
        c.int(&["DEBIT", a, "gen-1", "SKU", IMAGE, "QTY", "4"])
            .await,
        288
    );
    assert_eq!(c.int(&["DEBIT", a, "gen-2", "12"]).await, 12);
    // spent 1750 + 100 + 60 + 288 + 12 = 2210 of 3100.
    let line = c
        .err(
            srv,
            Who::Admin,
            &["DEBIT", a, "gen-3", "100000"],
            "INSUFFICIENT",
        )
        .await;
    assert_eq!(line, "INSUFFICIENT need 100000 available 890");
    c.err(srv, Who::Admin, &["QUOTE", "no/such", "1"], "NOTFOUND")
        .await;
    c.err(srv, Who::Admin, &["COMMIT", a, "no-hold"], "NOTFOUND")
        .await;
    assert_eq!(
        c.int(&["RESERVE", a, "job-5", "50", "TTL", "1000"]).await,
        50
    );
    c.int(&["CLOCK", "ADVANCE", "1000"]).await;
    c.err(srv, Who::Admin, &["COMMIT", a, "job-5"], "EXPIRED")
        .await;
    assert_eq!(c.int(&["RELEASE", a, "job-5"]).await, 0);
    c.err(srv, Who::Admin, &["FROBNICATE", a], "ERR").await;
    c.err(srv, Who::Admin, &["RESERVE", a, "job-6", "lots"], "ERR")
        .await;

    // Plans, under both names.
    assert_eq!(c.int(&["PLAN", b, "free"]).await, 60);
    let video = ["DEBIT", b, "v-1", "SKU", "video/kling-1.6/720", "QTY", "1"];
    c.err(srv, Who::Admin, &video, "NOTENTITLED").await;
    assert_eq!(c.int(&["SUBSCRIBE", t, "pro", "SEATS", "2"]).await, 1000);
    assert_eq!(c.int(&["SEATS", t, "3"]).await, 1500);
    assert_eq!(c.int(&["ADDON", t, "1"]).await, 1560);
    c.okay(&["UNSUBSCRIBE", t]).await;
    assert_eq!(c.int(&["PLAN", t, "pro", "SEATS", "3"]).await, 1560);
    c.okay(&["PLAN", t, "NONE"]).await;
    c.err(srv, Who::Admin, &["PLAN", t, "nope"], "NOTFOUND")
        .await;

    // Reads: fields as maps in RESP3, flat arrays in RESP2, nested too.
    let balance = fields(c.ok(&["BALANCE", a]).await, resp3);
    let totals: Vec<Value> = ["available", "held", "spent", "expired", "granted"]
        .iter()
        .map(|k| field(&balance, k))
        .collect();
    let want = [890, 0, 2210, 0, 3100].map(Value::Int);
    assert_eq!(totals, want);
    let account = fields(c.ok(&["ACCOUNT", a]).await, resp3);
    assert_eq!(text(&field(&account, "plan")), "");
    let Value::Array(buckets) = field(&account, "buckets") else {
        panic!("buckets: {account:?}")
    };
    let buckets: Vec<_> = buckets.into_iter().map(|b| fields(b, resp3)).collect();
    assert_eq!(buckets.len(), 1, "{buckets:?}");
    assert_eq!(text(&field(&buckets[0], "id")), "pack");
    assert_eq!(field(&buckets[0], "remaining"), Value::Int(890));
    assert_eq!(field(&account, "holds"), Value::Array(vec![]));
    let team = fields(c.ok(&["ACCOUNT", t]).await, resp3);
    assert_eq!(field(&team, "granted"), Value::Int(1560));
    let Value::Array(history) = c.ok(&["HISTORY", a, "COUNT", "3"]).await else {
        panic!("HISTORY is an array")
    };
    assert_eq!(history.len(), 3);
    let seqs: Vec<i64> = history
        .into_iter()
        .map(|e| match field(&fields(e, resp3), "seq") {
            Value::Int(n) => n,
            other => panic!("seq: {other:?}"),
        })
        .collect();
    assert!(
        seqs.windows(2).all(|w| w[0] > w[1]),
        "newest first: {seqs:?}"
    );

    c.okay(&["QUIT"]).await;
}

/// NOAUTH, WRONGPASS and NOPERM reach a client of `kind` intact; a bad
/// token in the URL fails the connection.
async fn auth_errors(srv: &Creditd, kind: Kind, resp3: bool) {
    if resp3 {
        // A RESP3 connection starts with HELLO 3, which needs AUTH first.
        let refused = match Conn::open(kind, &url(srv.port, Who::Anonymous, true)).await {
            Err(e) => e,
            Ok(_) => panic!("{kind:?}: RESP3 without a token connects"),
        };
        assert_eq!(refused.code(), Some("NOAUTH"), "{refused:?}");
    } else {
        let mut anon = Conn::open(kind, &url(srv.port, Who::Anonymous, false))
            .await
            .unwrap();
        assert_eq!(text(&anon.ok(&["PING"]).await), "PONG");
        anon.err(srv, Who::Anonymous, &["BALANCE", "acme"], "NOAUTH")
            .await;
        anon.err(srv, Who::Anonymous, &["AUTH", "wrong"], "WRONGPASS")
            .await;
    }
    let mut gw = Conn::open(kind, &url(srv.port, Who::Gateway, resp3))
        .await
        .unwrap();
    fields(gw.ok(&["BALANCE", "acme"]).await, resp3);
    gw.err(srv, Who::Gateway, &["GRANT", "acme", "g", "1"], "NOPERM")
        .await;
    gw.err(srv, Who::Gateway, &["PLAN", "acme", "pro"], "NOPERM")
        .await;

    let refused = match Conn::open(kind, &url(srv.port, Who::BadToken, resp3)).await {
        Err(e) => e,
        Ok(_) => panic!("{kind:?}: a bad token connects"),
    };
    if resp3 {
        // HELLO 3 AUTH: the server's own error.
        assert_eq!(refused.code(), Some("WRONGPASS"), "{refused:?}");
    } else {
        // AUTH in RESP2: the redis crate reports the refusal itself.
        assert_eq!(refused.kind(), redis::ErrorKind::AuthenticationFailed);
    }
}

async fn whole_contract(kind: Kind) {
    let srv = start_with_tokens();
    for resp3 in [false, true] {
        every_command(&srv, kind, resp3, &format!("{kind:?}-{resp3}")).await;
        auth_errors(&srv, kind, resp3).await;
    }
}

#[tokio::test]
async fn the_sync_connection_speaks_the_whole_contract() {
    whole_contract(Kind::Sync).await;
}

#[tokio::test]
async fn the_multiplexed_async_connection_speaks_the_whole_contract() {
    whole_contract(Kind::Multiplexed).await;
}

#[tokio::test]
async fn the_connection_manager_speaks_the_whole_contract() {
    whole_contract(Kind::Manager).await;
}

// ---------------------------------------------------------------------------
// The typed client

/// `result`'s error, which must be `code`'s and read as the raw socket's line.
fn typed_err<T: std::fmt::Debug>(
    srv: &Creditd,
    who: Who,
    result: Result<T, Error>,
    args: &[&str],
) -> Error {
    let e = result.expect_err("an error");
    assert_eq!(e.to_string(), raw_error(srv, who, args), "{args:?}");
    e
}

async fn typed_tour(srv: &Creditd, resp3: bool) {
    let p = if resp3 { "typed3" } else { "typed2" };
    let (a, b, t) = (format!("{p}-acme"), format!("{p}-art"), format!("{p}-team"));
    let (a, b, t) = (a.as_str(), b.as_str(), t.as_str());
    let admin = Client::connect(&url(srv.port, Who::Admin, resp3))
        .await
        .unwrap();
    admin.ping().await.unwrap();
    let mut clock = srv.client();
    cmd(&mut clock, &["AUTH", "admin-secret"]).unwrap();

    let none = GrantOptions::default();
    let pack = OpId::from("pack");
    assert_eq!(admin.grant(a, &pack, 3000, &none).await.unwrap(), 3000);
    let promo = GrantOptions {
        kind: Some(BucketKind::Promo),
        expiry: Some(Expiry::After(Duration::from_secs(7 * 24 * 3600))),
        priority: Some(10),
    };
    let welcome = OpId::from("welcome");
    assert_eq!(admin.grant(a, &welcome, 100, &promo).await.unwrap(), 3100);
    assert_eq!(admin.grant(a, &welcome, 100, &promo).await.unwrap(), 3100);
    let e = typed_err(
        srv,
        Who::Admin,
        admin.grant(a, &pack, 5, &none).await,
        &["GRANT", a, "pack", "5"],
    );
    assert!(matches!(e, Error::Conflict(_)), "{e:?}");
    assert_eq!(admin.quote(IMAGE, 4).await.unwrap(), 288);

    let job = OpId::new();
    let ttl = Some(Duration::from_secs(60));
    assert_eq!(
        admin
            .reserve(a, &job, Charge::sku(VIDEO, 10), ttl)
            .await
            .unwrap(),
        2500
    );
    assert_eq!(
        admin
            .reserve(a, &job, Charge::sku(VIDEO, 10), ttl)
            .await
            .unwrap(),
        2500
    );
    let now = int(&mut clock, &["CLOCK", "GET"]) as u64;
    assert_eq!(
        admin
            .extend(a, &job, Duration::from_secs(600))
            .await
            .unwrap(),
        now + 600_000
    );
    let open = admin.account(a).await.unwrap();
    assert_eq!(open.holds.len(), 1);
    assert_eq!(open.holds[0].id, job.as_str());
    assert_eq!((open.holds[0].amount, open.holds[0].captured), (2500, 0));
    assert_eq!(admin.capture(a, &job, Usage::Qty(3)).await.unwrap(), 750);
    assert_eq!(
        admin.capture(a, &job, Usage::Total(500)).await.unwrap(),
        750
    );
    assert_eq!(
        admin.commit(a, &job, Some(Usage::Qty(7))).await.unwrap(),
        1750
    );
    assert_eq!(
        admin.commit(a, &job, Some(Usage::Qty(7))).await.unwrap(),
        1750
    );
    let e = typed_err(
        srv,
        Who::Admin,
        admin.release(a, &job).await,
        &["RELEASE", a, job.as_str()],
    );
    assert!(matches!(e, Error::Conflict(_)), "{e:?}");

    let job2 = OpId::new();
    assert_eq!(
        admin
            .reserve(a, &job2, Charge::amount(200), None)
            .await
            .unwrap(),
        200
    );
    assert_eq!(admin.release(a, &job2).await.unwrap(), 200);
    let job3 = OpId::new();
    assert_eq!(
        admin
            .reserve(a, &job3, Charge::amount(100), None)
            .await
            .unwrap(),
        100
    );
    assert_eq!(admin.commit(a, &job3, None).await.unwrap(), 100);
    let job4 = OpId::new();
    assert_eq!(
        admin
            .reserve(a, &job4, Charge::amount(100), None)
            .await
            .unwrap(),
        100
    );
    assert_eq!(
        admin
            .commit(a, &job4, Some(Usage::Total(60)))
            .await
            .unwrap(),
        60
    );
    assert_eq!(
        admin
            .debit(a, &OpId::new(), Charge::sku(IMAGE, 4))
            .await
            .unwrap(),
        288
    );
    assert_eq!(
        admin
            .debit(a, &OpId::new(), Charge::amount(12))
            .await
            .unwrap(),
        12
    );

    let e = typed_err(
        srv,
        Who::Admin,
        admin
            .debit(a, &OpId::from("big"), Charge::amount(100000))
            .await,
        &["DEBIT", a, "big", "100000"],
    );
    assert!(
        matches!(
            e,
            Error::Insufficient {
                need: 100000,
                available: 890
            }
        ),
        "{e:?}"
    );
    let e = typed_err(
        srv,
        Who::Admin,
        admin.quote("no/such", 1).await,
        &["QUOTE", "no/such", "1"],
    );
    assert!(matches!(e, Error::NotFound(_)), "{e:?}");
    let e = typed_err(
        srv,
        Who::Admin,
        admin.commit(a, &OpId::from("no-hold"), None).await,
        &["COMMIT", a, "no-hold"],
    );
    assert!(matches!(e, Error::NotFound(_)), "{e:?}");
    let job5 = OpId::new();
    let second = Some(Duration::from_secs(1));
    assert_eq!(
        admin
            .reserve(a, &job5, Charge::amount(50), second)
            .await
            .unwrap(),
        50
    );
    int(&mut clock, &["CLOCK", "ADVANCE", "1000"]);
    let e = typed_err(
        srv,
        Who::Admin,
        admin.commit(a, &job5, None).await,
        &["COMMIT", a, job5.as_str()],
    );
    assert!(matches!(e, Error::Expired(_)), "{e:?}");
    assert_eq!(admin.release(a, &job5).await.unwrap(), 0);
    let e = typed_err(
        srv,
        Who::Admin,
        admin
            .reserve(
                a,
                &OpId::from("zero"),
                Charge::amount(1),
                Some(Duration::ZERO),
            )
            .await,
        &["RESERVE", a, "zero", "1", "TTL", "0"],
    );
    assert!(
        matches!(&e, Error::Other { code, .. } if code == "ERR"),
        "{e:?}"
    );

    assert_eq!(admin.plan(b, "free", None, None).await.unwrap(), 60);
    let video = Charge::sku("video/kling-1.6/720", 1);
    let e = typed_err(
        srv,
        Who::Admin,
        admin.debit(b, &OpId::from("v-1"), video).await,
        &["DEBIT", b, "v-1", "SKU", "video/kling-1.6/720", "QTY", "1"],
    );
    assert!(matches!(e, Error::NotEntitled(_)), "{e:?}");
    assert_eq!(admin.plan(t, "pro", Some(2), None).await.unwrap(), 1000);
    assert_eq!(admin.seats(t, 3).await.unwrap(), 1500);
    assert_eq!(admin.addon(t, 1).await.unwrap(), 1560);
    let team = admin.account(t).await.unwrap();
    let plan = team.plan.expect("a plan");
    assert_eq!((plan.name.as_str(), plan.seats), ("pro", 3));
    let now = int(&mut clock, &["CLOCK", "GET"]) as u64;
    assert!(plan.cycle_start == now && now < plan.cycle_end, "{plan:?}");
    admin.plan_none(t).await.unwrap();
    assert_eq!(admin.account(t).await.unwrap().plan, None);
    let e = typed_err(
        srv,
        Who::Admin,
        admin.plan(t, "nope", None, None).await,
        &["PLAN", t, "nope"],
    );
    assert!(matches!(e, Error::NotFound(_)), "{e:?}");

    let want = Balance {
        available: 890,
        held: 0,
        spent: 2210,
        expired: 0,
        granted: 3100,
    };
    assert_eq!(admin.balance(a).await.unwrap(), want);
    let account = admin.account(a).await.unwrap();
    assert_eq!(account.balance, want);
    assert_eq!(account.plan, None);
    assert!(account.holds.is_empty());
    assert_eq!(account.buckets.len(), 1, "{:?}", account.buckets);
    let bucket = &account.buckets[0];
    assert_eq!(
        (bucket.id.as_str(), bucket.kind.as_str()),
        ("pack", "prepaid")
    );
    assert_eq!(
        (bucket.remaining, bucket.expires_at, bucket.priority),
        (890, None, 50)
    );
    let history = admin.history(a, Some(3)).await.unwrap();
    assert_eq!(history.len(), 3);
    assert!(
        history.windows(2).all(|w| w[0].seq > w[1].seq),
        "{history:?}"
    );
    let all = admin.history(a, None).await.unwrap();
    let commits: Vec<_> = all
        .iter()
        .filter(|e| e.op == "commit" && e.id == job.as_str())
        .collect();
    assert_eq!(commits.len(), 1, "the retried COMMIT applied once");
    assert_eq!(commits[0].amount, 1750);

    // Authentication: a gateway token may not grant; no token may not read;
    // a bad token does not connect.
    let gateway = Client::connect(&url(srv.port, Who::Gateway, resp3))
        .await
        .unwrap();
    assert_eq!(gateway.balance(a).await.unwrap(), want);

    // Members, alerts and events: the owner (admin) caps, the gateway charges.
    let m = format!("{p}-studio");
    let m = m.as_str();
    let pool = OpId::from("pool");
    assert_eq!(admin.grant(m, &pool, 1000, &none).await.unwrap(), 1000);
    assert_eq!(
        admin.limit(m, "alice", Some((300, "day"))).await.unwrap(),
        300
    );
    assert_eq!(admin.alert(m, 800, false).await.unwrap(), 1);
    let held = gateway
        .reserve_for(m, &OpId::new(), Charge::amount(250), ttl, "alice")
        .await
        .unwrap();
    assert_eq!(held, 250);
    let over = OpId::new();
    let e = typed_err(
        srv,
        Who::Gateway,
        gateway
            .debit_for(m, &over, Charge::amount(100), "alice")
            .await,
        &["DEBIT", m, over.as_str(), "100", "MEMBER", "alice"],
    );
    assert!(
        matches!(
            e,
            Error::Limited {
                need: 100,
                remaining: 50
            }
        ),
        "{e:?}"
    );
    let members = gateway.members(m).await.unwrap();
    assert_eq!(members.len(), 1, "{members:?}");
    let alice = &members[0];
    assert_eq!(
        (alice.member.as_str(), alice.limit, alice.per.as_str()),
        ("alice", Some(300), "day")
    );
    assert_eq!((alice.used, alice.held), (0, 250));
    assert!(alice.period_end.is_some());
    let events: Vec<_> = gateway
        .events(0, 10_000)
        .await
        .unwrap()
        .into_iter()
        .filter(|e| e.account == m)
        .collect();
    let kinds: Vec<&str> = events.iter().map(|e| e.kind.as_str()).collect();
    assert_eq!(kinds, ["low", "limited"], "{events:?}");
    assert_eq!((events[0].value, events[0].threshold), (750, Some(800)));
    assert_eq!(events[0].member, None);
    assert_eq!(
        (events[1].member.as_deref(), events[1].value),
        (Some("alice"), 100)
    );
    assert!(events[0].seq < events[1].seq);
    let after = gateway.events(events[1].seq, 10).await.unwrap();
    assert!(after.iter().all(|e| e.seq > events[1].seq), "{after:?}");
    let e = typed_err(
        srv,
        Who::Gateway,
        gateway.limit(m, "alice", None).await,
        &["LIMIT", m, "alice", "NONE"],
    );
    assert!(
        matches!(&e, Error::Auth { code, .. } if code == "NOPERM"),
        "{e:?}"
    );
    assert_eq!(admin.limit(m, "alice", None).await.unwrap(), 0);
    assert_eq!(admin.alert(m, 800, true).await.unwrap(), 0);

    let e = typed_err(
        srv,
        Who::Gateway,
        gateway.grant(a, &OpId::from("g"), 1, &none).await,
        &["GRANT", a, "g", "1"],
    );
    assert!(
        matches!(&e, Error::Auth { code, .. } if code == "NOPERM"),
        "{e:?}"
    );
    let anonymous = Client::connect(&url(srv.port, Who::Anonymous, resp3)).await;
    let e = match anonymous {
        // RESP2: the connection opens, the command is refused.
        Ok(anonymous) => typed_err(
            srv,
            Who::Anonymous,
            anonymous.balance(a).await,
            &["BALANCE", a],
        ),
        // RESP3: the opening HELLO 3 is refused.
        Err(e) => {
            assert!(resp3, "{e:?}");
            e
        }
    };
    assert!(
        matches!(&e, Error::Auth { code, .. } if code == "NOAUTH"),
        "{e:?}"
    );
    match Client::connect(&url(srv.port, Who::BadToken, resp3)).await {
        Err(Error::Auth { .. }) => {}
        Err(e) => panic!("a bad token: {e:?}"),
        Ok(_) => panic!("a bad token connects"),
    }
}

#[tokio::test]
async fn the_typed_client_covers_the_contract_in_resp2_and_resp3() {
    let srv = start_with_tokens();
    typed_tour(&srv, false).await;
    typed_tour(&srv, true).await;
}

// ---------------------------------------------------------------------------
// Failures between client and server

/// A loopback TCP forwarder in front of creditd, as a load balancer would
/// be: its port stays while creditd restarts on new ones. It can also lose
/// the next reply (creditd applied the command, the client never hears
/// back), which is what a timeout is from the client's side.
struct Forwarder {
    port: u16,
    /// creditd's port; 0 while it is down, so that nothing else that
    /// comes to listen on its old port is reached.
    upstream: Arc<AtomicU16>,
    lose_next_reply: Arc<AtomicBool>,
    /// Replies lost on purpose.
    lost: Arc<AtomicUsize>,
    /// Connections it could not forward: creditd was down.
    refused: Arc<AtomicUsize>,
    accept: tokio::task::JoinHandle<()>,
}

impl Forwarder {
    async fn start(upstream: u16) -> Forwarder {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let upstream = Arc::new(AtomicU16::new(upstream));
        let lose_next_reply = Arc::new(AtomicBool::new(false));
        let lost = Arc::new(AtomicUsize::new(0));
        let refused = Arc::new(AtomicUsize::new(0));
        let (up, lose, lost2, refused2) = (
            upstream.clone(),
            lose_next_reply.clone(),
            lost.clone(),
            refused.clone(),
        );
        let accept = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let port = up.load(Ordering::SeqCst);
                let (lose, lost, refused) = (lose.clone(), lost2.clone(), refused2.clone());
                tokio::spawn(async move {
                    let server = match port {
                        0 => None,
                        port => tokio::net::TcpStream::connect(("127.0.0.1", port))
                            .await
                            .ok(),
                    };
                    let Some(server) = server else {
                        refused.fetch_add(1, Ordering::SeqCst);
                        return; // dropping `client` closes it
                    };
                    let (mut client_rx, mut client_tx) = client.into_split();
                    let (mut server_rx, mut server_tx) = server.into_split();
                    let requests = tokio::io::copy(&mut client_rx, &mut server_tx);
                    let replies = async {
                        let mut buf = vec![0u8; 64 * 1024];
                        loop {
                            let n = server_rx.read(&mut buf).await?;
                            if n == 0 {
                                return Ok::<_, std::io::Error>(());
                            }
                            if lose.swap(false, Ordering::SeqCst) {
                                lost.fetch_add(1, Ordering::SeqCst);
                                return Ok(()); // both sides close
                            }
                            client_tx.write_all(&buf[..n]).await?;
                        }
                    };
                    tokio::select! {
                        _ = requests => {}
                        _ = replies => {}
                    }
                });
            }
        });
        Forwarder {
            port,
            upstream,
            lose_next_reply,
            lost,
            refused,
            accept,
        }
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }
}

impl Drop for Forwarder {
    fn drop(&mut self) {
        self.accept.abort();
    }
}

/// Polls `done` until it holds, or panics after `limit`.
async fn wait_for(what: &str, limit: Duration, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_reply_is_retried_with_the_same_id_and_applied_once() {
    let srv = Creditd::start(&[]);
    let fwd = Forwarder::start(srv.port).await;
    let client = Client::connect(&fwd.url()).await.unwrap();
    let a = "lost-replies";
    client
        .grant(a, &OpId::new(), 1000, &GrantOptions::default())
        .await
        .unwrap();

    let hold = OpId::new();
    let debit = OpId::new();
    fwd.lose_next_reply.store(true, Ordering::SeqCst);
    assert_eq!(
        client
            .reserve(a, &hold, Charge::amount(300), None)
            .await
            .unwrap(),
        300
    );
    fwd.lose_next_reply.store(true, Ordering::SeqCst);
    assert_eq!(
        client
            .commit(a, &hold, Some(Usage::Total(200)))
            .await
            .unwrap(),
        200
    );
    fwd.lose_next_reply.store(true, Ordering::SeqCst);
    assert_eq!(
        client.debit(a, &debit, Charge::amount(50)).await.unwrap(),
        50
    );
    assert_eq!(
        fwd.lost.load(Ordering::SeqCst),
        3,
        "each first reply was lost"
    );

    let b = client.balance(a).await.unwrap();
    assert_eq!((b.available, b.held, b.spent), (750, 0, 250), "{b:?}");
    let history = client.history(a, None).await.unwrap();
    let ops: Vec<(&str, u64)> = history
        .iter()
        .rev()
        .map(|e| (e.op.as_str(), e.amount))
        .collect();
    assert_eq!(
        ops,
        [
            ("grant", 1000),
            ("reserve", 300),
            ("commit", 200),
            ("debit", 50)
        ],
        "each change once"
    );

    // Without retries the lost reply reaches the caller as an I/O error
    // (outcome unknown), and its own retry with the same id finds it applied.
    let once = Options {
        retry: RetryPolicy::never(),
        ..Options::default()
    };
    let bare = Client::connect_with(&fwd.url(), once).await.unwrap();
    bare.ping().await.unwrap();
    let debit2 = OpId::new();
    fwd.lose_next_reply.store(true, Ordering::SeqCst);
    let e = bare
        .debit(a, &debit2, Charge::amount(10))
        .await
        .unwrap_err();
    assert!(matches!(e, Error::Io(_)) && e.is_retryable(), "{e:?}");
    assert_eq!(
        bare.debit(a, &debit2, Charge::amount(10)).await.unwrap(),
        10
    );
    assert_eq!(bare.balance(a).await.unwrap().spent, 260);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_manager_and_the_typed_client_ride_out_a_kill9_and_restart() {
    let data = temp_dir("clients-rust-restart").join("data");
    let mut srv = Creditd::start_in(&data, &[]);
    let fwd = Forwarder::start(srv.port).await;
    let patient = Options {
        retry: RetryPolicy {
            max_attempts: 1000,
            initial_backoff: Duration::from_millis(20),
            max_backoff: Duration::from_millis(200),
            max_elapsed: Duration::from_secs(60),
        },
        ..Options::default()
    };
    let client = Client::connect_with(&fwd.url(), patient).await.unwrap();
    let mut manager = redis::Client::open(fwd.url())
        .unwrap()
        .get_connection_manager()
        .await
        .unwrap();
    let a = "restarts";
    client
        .grant(a, &OpId::new(), 1000, &GrantOptions::default())
        .await
        .unwrap();
    let before = OpId::new();
    assert_eq!(
        client.debit(a, &before, Charge::amount(100)).await.unwrap(),
        100
    );

    fwd.upstream.store(0, Ordering::SeqCst);
    srv.kill9();
    // A debit while creditd is down: the client keeps retrying it.
    let during = OpId::new();
    let pending = tokio::spawn({
        let (client, during) = (client.clone(), during.clone());
        async move { client.debit(a, &during, Charge::amount(50)).await }
    });
    let refused = fwd.refused.clone();
    wait_for("a refused attempt", Duration::from_secs(30), || {
        refused.load(Ordering::SeqCst) > 0
    })
    .await;
    assert!(!pending.is_finished());
    let restarted = tokio::task::spawn_blocking(move || {
        srv.restart();
        srv
    })
    .await
    .unwrap();
    fwd.upstream.store(restarted.port, Ordering::SeqCst);
    assert_eq!(pending.await.unwrap().unwrap(), 50);
    // The debit acknowledged before the kill, retried: applied once.
    assert_eq!(
        client.debit(a, &before, Charge::amount(100)).await.unwrap(),
        100
    );

    // The plain ConnectionManager reconnects by itself; a failed attempt
    // tells nothing about the command, so it is sent again with its id.
    let deadline = Instant::now() + Duration::from_secs(30);
    let debit = || {
        let mut cmd = redis::cmd("DEBIT");
        cmd.arg(a).arg("manager-1").arg(10);
        cmd
    };
    let first = loop {
        match debit().query_async::<i64>(&mut manager).await {
            Ok(n) => break n,
            Err(e) => {
                assert!(e.is_io_error(), "{e:?}");
                assert!(
                    Instant::now() < deadline,
                    "the manager did not reconnect: {e}"
                );
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    };
    assert_eq!(first, 10);
    assert_eq!(debit().query_async::<i64>(&mut manager).await.unwrap(), 10);

    let b = client.balance(a).await.unwrap();
    assert_eq!((b.available, b.spent, b.granted), (840, 160, 1000), "{b:?}");
    let debits: Vec<String> = client
        .history(a, None)
        .await
        .unwrap()
        .into_iter()
        .filter(|e| e.op == "debit")
        .map(|e| e.id)
        .collect();
    assert_eq!(debits.len(), 3, "each debit once: {debits:?}");
    drop(restarted);
}

// ---------------------------------------------------------------------------
// The gateway example of docs/clients/rust.md

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_gateway_example_runs_against_a_real_creditd() {
    use gateway::Outcome;
    let srv = Creditd::start(&[]);
    let client = Client::connect(&srv.url()).await.unwrap();
    let a = "gateway-example";
    let outcomes = gateway::tour(&client, a).await.unwrap();
    assert_eq!(
        outcomes,
        [
            Outcome::Done {
                quoted: 2500,
                seconds: 7,
                charged: 1750
            },
            Outcome::NeedsCredits {
                need: 2500,
                available: 1250
            },
            Outcome::Failed { refunded: 500 },
        ]
    );
    let b = client.balance(a).await.unwrap();
    let want = Balance {
        available: 750,
        held: 0,
        spent: 2250,
        expired: 0,
        granted: 3000,
    };
    assert_eq!(b, want);
    let history = client.history(a, None).await.unwrap();
    let count = |op: &str| history.iter().filter(|e| e.op == op).count();
    assert_eq!(count("reserve"), 2, "the unaffordable job held nothing");
    assert_eq!(count("commit"), 1, "the retried commit applied once");
    assert_eq!(count("release"), 1);
    assert_eq!(count("capture"), 9, "7 seconds, then 2 before the failure");
}
