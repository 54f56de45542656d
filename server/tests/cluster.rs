//! Cluster mode end to end: creditd nodes (`--cluster`) on a Redis Cluster
//! made here (or one plain Redis) share the 16384 hash slots, answer
//! CLUSTER commands and MOVED as Redis Cluster does so that a stock cluster
//! client routes by itself, and keep every acknowledged change through a
//! kill -9, a restart, a SIGTERM hand-over and a paused node.

mod cluster_support;
mod common;
mod redis_support;

use cluster_support::{
    about_even, balance_of, cluster_client, cluster_client_of, cluster_config, error_text,
    key_slot, parse_moved, retryable, run, slot_tag, tail, wait_settled, Node, RedisCluster,
    SlotMap, SLOTS,
};
use redis::cluster::{ClusterClient, ClusterConnection};
use redis_support::{start_refused, wait_until, RedisServer, TempDir};
use std::collections::{BTreeMap, HashSet};
use std::io::Write;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The nodes' `cluster_lease_ms`: short, so that failovers are quick, but
/// with room for a busy machine (a node that cannot renew within it loses
/// its slots).
const LEASE_MS: u64 = 1500;

/// How long the slots of a fresh cluster may take to settle.
const SETTLE: Duration = Duration::from_secs(30);

/// One cluster at a time: each test runs up to three Redis servers and
/// three nodes, and clusters of parallel tests on a small machine would
/// compete for its cores, so that lease timing, not what they test, would
/// decide.
fn one_at_a_time() -> std::sync::MutexGuard<'static, ()> {
    static SERIAL: Mutex<()> = Mutex::new(());
    SERIAL
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Starts `n` nodes on `redis_url`, each with a data dir under `dir`.
fn start_nodes(dir: &TempDir, redis_url: &str, lease_ms: u64, n: usize) -> Vec<Node> {
    let config = cluster_config(dir.path(), lease_ms);
    (0..n)
        .map(|i| {
            Node::start(
                &dir.path().join(format!("node{i}")),
                redis_url,
                &config,
                &[],
            )
        })
        .collect()
}

fn refs(nodes: &[Node]) -> Vec<&Node> {
    nodes.iter().collect()
}

/// Runs a command through a cluster connection, retrying errors that say
/// "not here, not now" (a node gone, TRYAGAIN, CLUSTERDOWN, BUSY, MOVED
/// storms) with the same arguments, so the same id, until `limit`. A fresh
/// connection (and slot map) after each such error. Err: an answer about
/// the command itself, or the limit passed.
fn retry_int(
    client: &ClusterClient,
    conn: &mut Option<ClusterConnection>,
    args: &[String],
    limit: Duration,
    retries: &mut u64,
) -> Result<i64, String> {
    let deadline = Instant::now() + limit;
    let mut last = String::new();
    loop {
        if Instant::now() >= deadline {
            return Err(format!("{args:?}: still failing after {limit:?}: {last}"));
        }
        if conn.is_none() {
            match client.get_connection() {
                Ok(c) => *conn = Some(c),
                Err(e) => {
                    last = format!("connect: {e}");
                    *retries += 1;
                    std::thread::sleep(Duration::from_millis(50));
                    continue;
                }
            }
        }
        let mut cmd = redis::cmd(&args[0]);
        for a in &args[1..] {
            cmd.arg(a);
        }
        match cmd.query::<i64>(conn.as_mut().unwrap()) {
            Ok(n) => return Ok(n),
            Err(e) if retryable(&e) => {
                last = error_text(&e);
                *retries += 1;
                *conn = None;
                std::thread::sleep(Duration::from_millis(50));
            }
            Err(e) => return Err(format!("{args:?}: {}", error_text(&e))),
        }
    }
}

/// BALANCE through a cluster connection, with the same retries.
fn retry_balance(
    client: &ClusterClient,
    conn: &mut Option<ClusterConnection>,
    account: &str,
) -> [i64; 5] {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if conn.is_none() {
            *conn = client.get_connection().ok();
        }
        if let Some(c) = conn.as_mut() {
            match redis::cmd("BALANCE").arg(account).query::<redis::Value>(c) {
                Ok(v) => return balance_of(&v),
                Err(e) if retryable(&e) => *conn = None,
                Err(e) => panic!("BALANCE {account}: {}", error_text(&e)),
            }
        }
        assert!(
            Instant::now() < deadline,
            "BALANCE {account} kept failing for 30 s"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn args(words: &[&str]) -> Vec<String> {
    words.iter().map(|s| s.to_string()).collect()
}

/// What one load thread saw acknowledged.
#[derive(Default)]
struct Ledger {
    /// Per account: credits granted and debited by acknowledged commands.
    granted: BTreeMap<String, i64>,
    spent: BTreeMap<String, i64>,
    /// Every acknowledged command with its reply.
    acks: Vec<(Vec<String>, i64)>,
    /// Per acknowledged command: account, when it was first sent, when it
    /// was acknowledged.
    timings: Vec<(String, Instant, Instant)>,
    failures: Vec<String>,
    retries: u64,
}

impl Ledger {
    fn merge(ledgers: Vec<Ledger>) -> Ledger {
        let mut all = Ledger::default();
        for l in ledgers {
            all.granted.extend(l.granted);
            all.spent.extend(l.spent);
            all.acks.extend(l.acks);
            all.timings.extend(l.timings);
            all.failures.extend(l.failures);
            all.retries += l.retries;
        }
        all
    }
}

/// Load: each thread grants its accounts, then runs RESERVE/COMMIT cycles
/// over them with fresh ids until told to stop, retrying each command with
/// the same id until it is acknowledged.
struct Load {
    stop: Arc<AtomicBool>,
    acked: Arc<AtomicU64>,
    threads: Vec<std::thread::JoinHandle<Ledger>>,
}

const GRANT: i64 = 1_000_000;

impl Load {
    fn start(urls: Vec<String>, prefix: &str, threads: usize, accounts_each: usize) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let acked = Arc::new(AtomicU64::new(0));
        let handles = (0..threads)
            .map(|t| {
                let accounts: Vec<String> = (0..accounts_each)
                    .map(|i| format!("{prefix}-{t}-{i}"))
                    .collect();
                let (stop, acked, urls) = (stop.clone(), acked.clone(), urls.clone());
                std::thread::spawn(move || load_thread(urls, accounts, stop, acked))
            })
            .collect();
        Load {
            stop,
            acked,
            threads: handles,
        }
    }

    fn acked(&self) -> u64 {
        self.acked.load(Ordering::Relaxed)
    }

    /// Waits until `more` further commands were acknowledged.
    fn wait_progress(&self, more: u64, timeout: Duration) -> bool {
        let target = self.acked() + more;
        wait_until(timeout, || self.acked() >= target)
    }

    fn finish(self) -> Ledger {
        self.stop.store(true, Ordering::Relaxed);
        Ledger::merge(
            self.threads
                .into_iter()
                .map(|t| t.join().expect("load thread"))
                .collect(),
        )
    }
}

fn load_thread(
    urls: Vec<String>,
    accounts: Vec<String>,
    stop: Arc<AtomicBool>,
    acked: Arc<AtomicU64>,
) -> Ledger {
    let client = cluster_client_of(urls);
    let mut conn = None;
    let mut ledger = Ledger::default();
    let limit = Duration::from_secs(40);
    let ack = |ledger: &mut Ledger,
               conn: &mut Option<ClusterConnection>,
               account: &str,
               command: Vec<String>|
     -> Option<i64> {
        let started = Instant::now();
        match retry_int(&client, conn, &command, limit, &mut ledger.retries) {
            Ok(n) => {
                ledger
                    .timings
                    .push((account.to_string(), started, Instant::now()));
                ledger.acks.push((command, n));
                acked.fetch_add(1, Ordering::Relaxed);
                Some(n)
            }
            Err(e) => {
                ledger.failures.push(e);
                None
            }
        }
    };
    for a in &accounts {
        let grant = args(&["GRANT", a, &format!("g-{a}"), &GRANT.to_string()]);
        match ack(&mut ledger, &mut conn, a, grant) {
            Some(GRANT) => {
                ledger.granted.insert(a.clone(), GRANT);
                ledger.spent.insert(a.clone(), 0);
            }
            Some(other) => {
                ledger
                    .failures
                    .push(format!("GRANT {a}: available {other}, expected {GRANT}"));
                return ledger;
            }
            None => return ledger,
        }
    }
    let mut round = 0u64;
    while !stop.load(Ordering::Relaxed) {
        for (i, a) in accounts.iter().enumerate() {
            let amount = 1 + (round as i64 * 7 + i as i64) % 13;
            // Every third cycle commits less than it held (the rest is released).
            let total = if round.is_multiple_of(3) {
                amount - 1
            } else {
                amount
            };
            let hold = format!("h-{a}-{round}");
            let reserve = args(&["RESERVE", a, &hold, &amount.to_string()]);
            match ack(&mut ledger, &mut conn, a, reserve) {
                Some(n) if n == amount => {}
                Some(n) => {
                    ledger
                        .failures
                        .push(format!("RESERVE {a} {hold} {amount}: held {n}"));
                    return ledger;
                }
                None => return ledger,
            }
            let commit = args(&["COMMIT", a, &hold, &total.to_string()]);
            match ack(&mut ledger, &mut conn, a, commit) {
                Some(n) if n == total => *ledger.spent.get_mut(a).unwrap() += total,
                Some(n) => {
                    ledger
                        .failures
                        .push(format!("COMMIT {a} {hold} {total}: debited {n}"));
                    return ledger;
                }
                None => return ledger,
            }
        }
        round += 1;
    }
    ledger
}

/// Every acknowledged change is there exactly once: per account granted and
/// spent are what was acknowledged, nothing is held, conservation holds.
/// Then a sample of acknowledged commands sent again (same ids) answers the
/// first reply and changes nothing.
fn verify(client: &ClusterClient, ledger: &Ledger, logs: &dyn Fn() -> String) {
    assert!(
        ledger.failures.is_empty(),
        "load failures: {:?}\n{}",
        &ledger.failures[..ledger.failures.len().min(10)],
        logs()
    );
    let mut conn = None;
    let mut before = BTreeMap::new();
    for (account, granted) in &ledger.granted {
        let b = retry_balance(client, &mut conn, account);
        let spent = ledger.spent[account];
        assert_eq!(
            b,
            [granted - spent, 0, spent, 0, *granted],
            "{account}: BALANCE [available, held, spent, expired, granted] is not what was \
             acknowledged\n{}",
            logs()
        );
        common::assert_conserved(b);
        before.insert(account.clone(), b);
    }
    let mut retries = 0;
    let sample = ledger
        .acks
        .iter()
        .enumerate()
        .filter(|(i, (command, _))| command[0] == "GRANT" || i % 7 == 0);
    for (_, (command, reply)) in sample {
        let again = retry_int(
            client,
            &mut conn,
            command,
            Duration::from_secs(30),
            &mut retries,
        );
        assert_eq!(
            again.as_ref(),
            Ok(reply),
            "{command:?} sent again answers otherwise"
        );
    }
    for (account, b) in &before {
        assert_eq!(
            retry_balance(client, &mut conn, account),
            *b,
            "{account}: changed by commands sent again"
        );
    }
}

fn all_logs(nodes: &[&Node]) -> String {
    nodes
        .iter()
        .map(|n| format!("--- {} log:\n{}\n", n.addr(), tail(&n.log_text(), 60)))
        .collect()
}

#[test]
fn a_redis_cluster_made_here_comes_up() {
    let _serial = one_at_a_time();
    let cluster = RedisCluster::start(3);
    let value: redis::Value = redis::cmd("CLUSTER")
        .arg("SLOTS")
        .query(&mut cluster.conn(1))
        .unwrap();
    let ranges = cluster_support::parse_cluster_slots(&value);
    let owners = cluster_support::slot_owners(&ranges).expect("every slot served once");
    let masters: HashSet<&String> = owners.iter().collect();
    assert_eq!(masters.len(), 3, "{ranges:?}");
    // The tests' slot function is Redis Cluster's.
    for key in [
        "a",
        "acct-1",
        "{user1000}.following",
        "foo{}{bar}",
        "x{y}",
        "{}",
    ] {
        assert_eq!(key_slot(key), cluster.keyslot(key), "{key}");
    }
    for i in 0..200 {
        let key = format!("k9-{i}");
        assert_eq!(key_slot(&key), cluster.keyslot(&key), "{key}");
    }
}

#[test]
fn three_nodes_share_the_slots_and_route_stock_clients() {
    let _serial = one_at_a_time();
    let redis = RedisCluster::start(3);
    let dir = TempDir::new("cluster-share");
    let nodes = start_nodes(&dir, &redis.url(0), LEASE_MS, 3);
    let live = refs(&nodes);
    let logs = || all_logs(&live);
    let map = wait_settled(&live, SETTLE);

    // About a third each.
    let counts = map.counts();
    assert_eq!(counts.len(), 3, "{counts:?}");
    for (addr, n) in &counts {
        assert!(about_even(*n, 3), "{addr} owns {n} slots: {counts:?}");
    }

    for node in &nodes {
        let info = node.cluster_info().unwrap();
        assert!(info.contains("cluster_state:ok"), "{info}");
        assert!(info.contains("cluster_slots_assigned:16384"), "{info}");
        assert!(info.contains("cluster_known_nodes:3"), "{info}");
        // MYID is the id its own CLUSTER SLOTS entries carry.
        let myid = node.myid();
        assert_eq!(myid.len(), 40, "{myid}");
        assert!(myid.bytes().all(|b| b.is_ascii_hexdigit()), "{myid}");
        let ranges = node.slots().unwrap();
        let mine: Vec<_> = ranges.iter().filter(|r| r.addr() == node.addr()).collect();
        assert!(!mine.is_empty());
        assert!(mine.iter().all(|r| r.id == myid), "{myid}: {mine:?}");
        let owned: usize = mine.iter().map(|r| r.len()).sum();
        assert_eq!(owned, counts[&node.addr()]);
        // INFO cluster says the same.
        assert_eq!(node.info_cluster("cluster_enabled"), "1");
        assert_eq!(node.info_cluster("cluster_node_id"), myid);
        assert_eq!(node.info_cluster("cluster_slots_owned"), owned.to_string());
        assert_eq!(node.info_cluster("cluster_slots_loading"), "0");
        assert_eq!(
            node.http_get("/readyz").0,
            200,
            "{}",
            node.http_get("/readyz").1
        );
        // CLUSTER NODES: three masters, this one marked myself.
        let text: String = redis::cmd("CLUSTER")
            .arg("NODES")
            .query(&mut node.conn())
            .unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 3, "{text}");
        assert!(lines.iter().all(|l| l.contains("master")), "{text}");
        let me: Vec<&&str> = lines.iter().filter(|l| l.contains("myself")).collect();
        assert_eq!(me.len(), 1, "{text}");
        assert!(me[0].starts_with(&myid), "{text}");
        assert!(me[0].contains(&node.addr()), "{text}");
        // CLUSTER SHARDS: three shards.
        let shards: redis::Value = redis::cmd("CLUSTER")
            .arg("SHARDS")
            .query(&mut node.conn())
            .unwrap();
        match &shards {
            redis::Value::Array(s) => assert_eq!(s.len(), 3, "{shards:?}"),
            other => panic!("CLUSTER SHARDS: {other:?}"),
        }
        // Cluster clients' handshake commands.
        let mut c = node.conn();
        for command in ["READONLY", "READWRITE", "ASKING"] {
            assert_eq!(run(&mut c, &[command]), Ok(redis::Value::Okay), "{command}");
        }
    }

    // A keyed command on a node that does not own the slot: MOVED to the owner.
    for i in 0..30 {
        let account = format!("moved-{i}");
        let owner = map.owner_of(&account).to_string();
        let slot = key_slot(&account);
        assert_eq!(slot, redis.keyslot(&account));
        for node in nodes.iter().filter(|n| n.addr() != owner) {
            let error = run(&mut node.conn(), &["GRANT", &account, "g", "5"]).unwrap_err();
            assert_eq!(
                parse_moved(&error),
                Some((slot, owner.clone())),
                "{account} on {}: {error}",
                node.addr()
            );
            let error = run(&mut node.conn(), &["BALANCE", &account]).unwrap_err();
            assert_eq!(parse_moved(&error), Some((slot, owner.clone())), "{error}");
        }
        let owner = nodes.iter().find(|n| n.addr() == owner).unwrap();
        assert_eq!(
            run(&mut owner.conn(), &["GRANT", &account, "g", "5"]),
            Ok(redis::Value::Int(5))
        );
    }

    // A stock cluster client routes by itself.
    let client = cluster_client(&live);
    let mut c = client.get_connection().expect("cluster connection");
    let q = |c: &mut ClusterConnection, words: &[&str]| -> i64 {
        let mut cmd = redis::cmd(words[0]);
        for w in &words[1..] {
            cmd.arg(*w);
        }
        cmd.query(c)
            .unwrap_or_else(|e| panic!("{words:?}: {e}\n{}", logs()))
    };
    let accounts: Vec<String> = (0..300).map(|i| format!("acct-{i}")).collect();
    for (i, a) in accounts.iter().enumerate() {
        let granted = 1000 + i as i64;
        assert_eq!(
            q(&mut c, &["GRANT", a, "g-1", &granted.to_string()]),
            granted
        );
        assert_eq!(q(&mut c, &["RESERVE", a, "h-1", "100"]), 100);
        assert_eq!(q(&mut c, &["COMMIT", a, "h-1", "60"]), 60);
        assert_eq!(q(&mut c, &["RESERVE", a, "h-2", "10"]), 10);
        // Retries of the same ids apply nothing.
        assert_eq!(
            q(&mut c, &["GRANT", a, "g-1", &granted.to_string()]),
            granted
        );
        assert_eq!(q(&mut c, &["COMMIT", a, "h-1", "60"]), 60);
    }
    for (i, a) in accounts.iter().enumerate() {
        let granted = 1000 + i as i64;
        let b: redis::Value = redis::cmd("BALANCE").arg(a).query(&mut c).unwrap();
        assert_eq!(balance_of(&b), [granted - 70, 10, 60, 0, granted], "{a}");
    }
    // Each account lives on its owner: asked directly, the owner answers it.
    let mut served = BTreeMap::new();
    for (i, a) in accounts.iter().enumerate() {
        let owner = nodes.iter().find(|n| n.addr() == map.owner_of(a)).unwrap();
        let b = run(&mut owner.conn(), &["BALANCE", a]).unwrap();
        assert_eq!(balance_of(&b)[4], 1000 + i as i64, "{a}");
        *served.entry(owner.addr()).or_insert(0) += 1;
    }
    assert_eq!(
        served.len(),
        3,
        "every node served some of the accounts: {served:?}"
    );
}

#[test]
fn two_nodes_on_one_plain_redis_split_the_slots() {
    let _serial = one_at_a_time();
    let redis = RedisServer::start();
    let dir = TempDir::new("cluster-plain");
    let nodes = start_nodes(&dir, &redis.url(), LEASE_MS, 2);
    let live = refs(&nodes);
    let map = wait_settled(&live, SETTLE);
    let counts = map.counts();
    assert_eq!(counts.len(), 2, "{counts:?}");
    assert!(counts.values().all(|&n| about_even(n, 2)), "{counts:?}");
    for i in 0..20 {
        let account = format!("plain-{i}");
        let owner = map.owner_of(&account).to_string();
        let other = nodes.iter().find(|n| n.addr() != owner).unwrap();
        let error = run(&mut other.conn(), &["GRANT", &account, "g", "7"]).unwrap_err();
        assert_eq!(
            parse_moved(&error),
            Some((key_slot(&account), owner.clone())),
            "{error}"
        );
    }
    let client = cluster_client(&live);
    let mut c = client.get_connection().expect("cluster connection");
    for i in 0..100 {
        let a = format!("plain-{i}");
        let n: i64 = redis::cmd("GRANT")
            .arg(&a)
            .arg("g")
            .arg(7)
            .query(&mut c)
            .unwrap();
        assert_eq!(n, 7, "{a}");
        let n: i64 = redis::cmd("DEBIT")
            .arg(&a)
            .arg("d")
            .arg(2)
            .query(&mut c)
            .unwrap();
        assert_eq!(n, 2, "{a}");
        let b: redis::Value = redis::cmd("BALANCE").arg(&a).query(&mut c).unwrap();
        assert_eq!(balance_of(&b), [5, 0, 2, 0, 7], "{a}");
    }
    for node in &nodes {
        assert_eq!(node.http_get("/readyz").0, 200);
        assert_eq!(node.info_cluster("cluster_enabled"), "1");
    }
    events_reach_the_stream_once(&redis, &nodes, &map, &mut c);
}

/// A crossing raised on the account's node is in EVENTS there and in the
/// stream `creditd:events` once, naming the node.
fn events_reach_the_stream_once(
    redis: &RedisServer,
    nodes: &[Node],
    map: &SlotMap,
    c: &mut ClusterConnection,
) {
    let account = "plain-0";
    let n: i64 = redis::cmd("ALERT").arg(account).arg(5).query(c).unwrap();
    assert_eq!(n, 1);
    let n: i64 = redis::cmd("DEBIT")
        .arg(account)
        .arg("d-low")
        .arg(1)
        .query(c)
        .unwrap();
    assert_eq!(n, 1);
    let owner = nodes
        .iter()
        .find(|n| n.addr() == map.owner_of(account))
        .expect("the owner is one of the nodes");
    let events = run(&mut owner.conn(), &["EVENTS"]).expect("EVENTS");
    let text = format!("{events:?}");
    assert!(text.contains("low") && text.contains(account), "{text}");
    let mut r = redis::Client::open(redis.url())
        .unwrap()
        .get_connection()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    let entries = loop {
        let entries: Vec<(String, Vec<(String, String)>)> = redis::cmd("XRANGE")
            .arg("creditd:events")
            .arg("-")
            .arg("+")
            .query(&mut r)
            .unwrap();
        if !entries.is_empty() || Instant::now() > deadline {
            break entries;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    std::thread::sleep(Duration::from_millis(500));
    let again: Vec<(String, Vec<(String, String)>)> = redis::cmd("XRANGE")
        .arg("creditd:events")
        .arg("-")
        .arg("+")
        .query(&mut r)
        .unwrap();
    assert_eq!(entries.len(), 1, "{entries:?}");
    assert_eq!(again, entries, "appended once");
    let fields: std::collections::HashMap<_, _> = entries[0].1.iter().cloned().collect();
    assert_eq!(fields["type"], "low");
    assert_eq!(fields["account"], account);
    assert_eq!(fields["value"], "4");
    assert_eq!(fields["threshold"], "5");
    assert!(!fields["node"].is_empty(), "{fields:?}");
    assert!(
        text.contains(&fields["seq"]),
        "EVENTS and the stream agree: {text} {fields:?}"
    );
}

#[test]
fn cluster_flags_are_checked_before_anything_starts() {
    let dir = TempDir::new("cluster-flags");
    let data = dir.path().join("data");
    let (code, log) = start_refused(&data, &["--cluster"], Duration::from_secs(20));
    assert_eq!(code, 2, "{log}");
    assert!(log.contains("--redis"), "{log}");
    let (code, log) = start_refused(
        &data,
        &["--cluster", "--redis", "unix:///tmp/creditd-no.sock"],
        Duration::from_secs(20),
    );
    assert_ne!(code, 0, "{log}");
    assert!(
        log.contains("--cluster needs a redis://host:port URL"),
        "{log}"
    );
    let (code, log) = start_refused(
        &data,
        &[
            "--cluster",
            "--redis",
            "redis://127.0.0.1:1",
            "--node-id",
            "xyz",
        ],
        Duration::from_secs(20),
    );
    assert_eq!(code, 2, "{log}");
    assert!(log.contains("40 hex digits"), "{log}");
}

#[test]
fn a_flushed_redis_is_written_again() {
    let _serial = one_at_a_time();
    let redis = RedisServer::start();
    let dir = TempDir::new("cluster-flush");
    let nodes = start_nodes(&dir, &redis.url(), LEASE_MS, 2);
    let live = refs(&nodes);
    wait_settled(&live, SETTLE);
    let client = cluster_client(&live);
    let mut c = client.get_connection().expect("cluster connection");
    let accounts: Vec<String> = (0..60).map(|i| format!("flush-{i}")).collect();
    for a in &accounts {
        let n: i64 = redis::cmd("GRANT")
            .arg(a)
            .arg("g")
            .arg(10)
            .query(&mut c)
            .unwrap();
        assert_eq!(n, 10, "{a}");
    }
    // Redis loses everything while both nodes live; nobody writes after.
    let _: () = redis::cmd("FLUSHALL").query(&mut redis.conn()).unwrap();
    let mut r = redis.conn();
    let rewritten = wait_until(Duration::from_secs(10), || {
        accounts.iter().all(|a| {
            let key = format!("creditd:{{{}}}:acct:{a}", slot_tag(key_slot(a)));
            redis::cmd("HGET")
                .arg(&key)
                .arg("available")
                .query::<Option<i64>>(&mut r)
                .ok()
                .flatten()
                == Some(10)
        })
    });
    assert!(
        rewritten,
        "every account is in Redis again\n{}",
        all_logs(&live)
    );
    // Nothing was taken from under its owner: balances and ownership hold.
    let map = wait_settled(&live, SETTLE);
    assert_eq!(map.counts().len(), 2);
    for a in &accounts {
        let b: redis::Value = redis::cmd("BALANCE").arg(a).query(&mut c).unwrap();
        assert_eq!(balance_of(&b), [10, 0, 0, 0, 10], "{a}");
    }
}

#[test]
fn kill_nine_loses_no_acknowledged_change() {
    let _serial = one_at_a_time();
    let redis = RedisCluster::start(3);
    let dir = TempDir::new("cluster-kill9");
    let mut nodes = start_nodes(&dir, &redis.url(0), LEASE_MS, 3);
    let map = wait_settled(&refs(&nodes), SETTLE);
    let urls: Vec<String> = nodes.iter().map(|n| n.url()).collect();
    let victim = 1;
    let dead_slots: HashSet<u16> = map.slots_of(&nodes[victim].addr()).into_iter().collect();

    let load = Load::start(urls.clone(), "k9", 6, 50);
    assert!(
        load.wait_progress(1500, Duration::from_secs(30)),
        "the load made no progress:\n{}",
        all_logs(&refs(&nodes))
    );
    nodes[victim].kill9();
    let killed = Instant::now();
    // Wait for the survivors to serve the dead node's slots, then let the
    // load run on a while.
    let survivors: Vec<&Node> = nodes.iter().filter(|n| n.is_running()).collect();
    let after = wait_settled(&survivors, Duration::from_millis(LEASE_MS) + SETTLE);
    assert!(
        load.wait_progress(3000, Duration::from_secs(30)),
        "the load made no progress after the failover:\n{}",
        all_logs(&survivors)
    );
    let ledger = load.finish();

    let first = ledger
        .timings
        .iter()
        .filter(|(a, started, _)| *started >= killed && dead_slots.contains(&key_slot(a)))
        .map(|(_, _, done)| *done)
        .min()
        .expect("an account of the dead node's slots was served after the kill");
    let failover = first - killed;
    // Commands sent before the kill and acknowledged after it: retried
    // with their ids across the failover.
    let across = ledger
        .timings
        .iter()
        .filter(|(_, started, done)| *started < killed && *done > killed)
        .count();
    println!("{across} commands were sent before the kill and acknowledged after it");
    println!(
        "kill -9 to the first acknowledged command on the dead node's slots: {failover:?} \
         (lease {LEASE_MS} ms); {} commands acknowledged, {} retried",
        ledger.acks.len(),
        ledger.retries
    );
    assert!(
        failover < Duration::from_millis(LEASE_MS) + Duration::from_secs(10),
        "failover took {failover:?}"
    );
    let counts = after.counts();
    assert_eq!(counts.len(), 2, "{counts:?}");
    // Only the dead node's slots moved.
    let dead_addr = nodes[victim].addr();
    for slot in 0..SLOTS {
        if map.owners[slot] != dead_addr {
            assert_eq!(
                after.owners[slot], map.owners[slot],
                "slot {slot} moved from a survivor"
            );
        }
    }
    let client = cluster_client(&survivors);
    verify(&client, &ledger, &|| all_logs(&survivors));
}

#[test]
fn rejoin_and_sigterm_hand_over() {
    let _serial = one_at_a_time();
    let redis = RedisCluster::start(3);
    let dir = TempDir::new("cluster-rejoin");
    let mut nodes = start_nodes(&dir, &redis.url(0), LEASE_MS, 3);
    let before = wait_settled(&refs(&nodes), SETTLE);
    let urls: Vec<String> = nodes.iter().map(|n| n.url()).collect();

    // Killed, failed over, restarted on its data dir: it rejoins and gets
    // its share back.
    let load = Load::start(urls.clone(), "rj", 2, 40);
    assert!(load.wait_progress(300, Duration::from_secs(30)));
    let id = nodes[2].myid();
    nodes[2].kill9();
    wait_settled(
        &[&nodes[0], &nodes[1]],
        Duration::from_millis(LEASE_MS) + SETTLE,
    );
    assert!(load.wait_progress(300, Duration::from_secs(30)));
    nodes[2].restart();
    let map = wait_settled(&refs(&nodes), SETTLE);
    assert_eq!(nodes[2].myid(), id, "the node id is kept in the data dir");
    let owned = map.counts()[&nodes[2].addr()];
    assert!(about_even(owned, 3), "the rejoined node owns {owned} slots");
    assert_eq!(
        map.slots_of(&nodes[2].addr()),
        before.slots_of(&nodes[2].addr()),
        "the rejoined node got its own slots back"
    );
    assert!(wait_until(Duration::from_secs(10), || nodes[2]
        .http_get("/readyz")
        .0
        == 200));
    assert!(load.wait_progress(300, Duration::from_secs(30)));

    // SIGTERM under load: it hands its slots over first.
    let stopping = Instant::now();
    let status = nodes[0].terminate();
    assert!(status.success(), "exit after SIGTERM: {status}");
    let survivors = [&nodes[1], &nodes[2]];
    wait_settled(&survivors, SETTLE);
    println!("SIGTERM to settled slots: {:?}", stopping.elapsed());
    assert!(load.wait_progress(300, Duration::from_secs(30)));
    let ledger = load.finish();
    let client = cluster_client(&survivors);
    verify(&client, &ledger, &|| all_logs(&survivors));
}

#[test]
fn a_paused_node_is_fenced() {
    let _serial = one_at_a_time();
    let redis = RedisCluster::start(3);
    let dir = TempDir::new("cluster-paused");
    let mut nodes = start_nodes(&dir, &redis.url(0), LEASE_MS, 3);
    let map = wait_settled(&refs(&nodes), SETTLE);
    let victim = 2;
    let victim_addr = nodes[victim].addr();

    // Accounts on every node, some on the one to be paused.
    let client = cluster_client(&refs(&nodes));
    let mut conn = None;
    let mut retries = 0;
    let accounts: Vec<String> = (0..90).map(|i| format!("fence-{i}")).collect();
    let theirs: Vec<&String> = accounts
        .iter()
        .filter(|a| map.owner_of(a) == victim_addr)
        .collect();
    assert!(theirs.len() >= 10, "{}", theirs.len());
    for a in &accounts {
        let n = retry_int(
            &client,
            &mut conn,
            &args(&["GRANT", a, "g-1", "100"]),
            Duration::from_secs(10),
            &mut retries,
        );
        assert_eq!(n, Ok(100));
    }

    // A connection to it opened before the pause; a write sent on it while
    // it is stopped waits in its socket.
    let mut raw = std::net::TcpStream::connect(("127.0.0.1", nodes[victim].port)).unwrap();
    raw.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let stale = theirs[0].clone();
    nodes[victim].pause();
    let paused = Instant::now();
    let paused_at_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis();
    write!(raw, "GRANT {stale} g-stale 1000\r\n").unwrap();

    // The others take its slots (and wait out its lease to do so).
    let survivors = [&nodes[0], &nodes[1]];
    wait_settled(&survivors, Duration::from_millis(LEASE_MS) + SETTLE);
    println!("paused to settled without it: {:?}", paused.elapsed());
    let survivor_client = cluster_client(&survivors);
    let mut sconn = None;
    for a in &theirs {
        let n = retry_int(
            &survivor_client,
            &mut sconn,
            &args(&["GRANT", a, "g-2", "5"]),
            Duration::from_secs(10),
            &mut retries,
        );
        if n != Ok(105) {
            let history: redis::Value = redis::cmd("HISTORY")
                .arg(a.as_str())
                .query(sconn.as_mut().unwrap())
                .unwrap();
            panic!(
                "GRANT {a} g-2 5 through the survivors: {n:?}, expected Ok(105); paused at \
                 {paused_at_ms} ms; HISTORY {a}: {history:?}\n{}",
                all_logs(&refs(&nodes))
            );
        }
    }
    // Paused for at least three lease lengths in all.
    let pause_for = Duration::from_millis(3 * LEASE_MS);
    if paused.elapsed() < pause_for {
        std::thread::sleep(pause_for - paused.elapsed());
    }
    nodes[victim].resume();

    // The write that waited in its socket is refused, not applied.
    let mut reader = std::io::BufReader::new(raw.try_clone().unwrap());
    let reply = common::read_one(&mut reader);
    let code = reply
        .trim_start_matches('-')
        .split(' ')
        .next()
        .unwrap_or("");
    assert!(
        reply.starts_with('-') && ["MOVED", "TRYAGAIN", "CLUSTERDOWN"].contains(&code),
        "the resumed node answered a write for a slot it lost with {reply:?}\n{}",
        all_logs(&refs(&nodes))
    );
    // A new write on a new connection for each of its old accounts: refused,
    // or, should the node have rejoined and taken the slot back already,
    // applied on the state its successor left (never on its own stale copy).
    let mut expected: BTreeMap<&String, i64> = accounts
        .iter()
        .map(|a| (a, if theirs.contains(&a) { 105 } else { 100 }))
        .collect();
    let mut c = nodes[victim].conn();
    for a in &theirs {
        match run(&mut c, &["GRANT", a, "g-late", "1000"]) {
            Ok(redis::Value::Int(1105)) => *expected.get_mut(a).unwrap() += 1000,
            Ok(v) => panic!(
                "the resumed node applied GRANT {a} g-late on stale state: {v:?}\n{}",
                all_logs(&refs(&nodes))
            ),
            Err(e) => {
                let code = e.split(' ').next().unwrap();
                assert!(
                    ["MOVED", "TRYAGAIN", "CLUSTERDOWN"].contains(&code),
                    "GRANT {a} on the resumed node: {e}"
                );
            }
        }
    }

    // Nothing lost or doubled: the survivors' writes are there once, the
    // paused node's never.
    let everyone = cluster_client(&refs(&nodes));
    let mut econn = None;
    for a in &accounts {
        let b = retry_balance(&everyone, &mut econn, a);
        let granted = expected[a];
        assert_eq!(b, [granted, 0, 0, 0, granted], "{a}");
    }
    // The resumed node is live again: it rejoins and gets its share back.
    let resumed = Instant::now();
    wait_settled(&refs(&nodes), SETTLE);
    println!("resumed to settled with it: {:?}", resumed.elapsed());
    // The fenced write sent again now is applied once, by the owner.
    let n = retry_int(
        &everyone,
        &mut econn,
        &args(&["GRANT", &stale, "g-stale", "1000"]),
        Duration::from_secs(10),
        &mut retries,
    );
    assert_eq!(n, Ok(expected[&stale] + 1000));
}

/// redis-py's RedisCluster routes by itself (clients/python/cluster.py).
/// Needs redis-py in target/clients-venv, which scripts/test installs.
#[test]
fn redis_py_cluster_client_routes_by_itself() {
    let _serial = one_at_a_time();
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf();
    let python = root.join("target/clients-venv/bin/python");
    assert!(
        python.exists(),
        "{} is missing: run scripts/test (it makes the venv and installs redis-py \
         from clients/python/requirements.txt)",
        python.display()
    );
    let redis = RedisServer::start();
    let dir = TempDir::new("cluster-py");
    let nodes = start_nodes(&dir, &redis.url(), LEASE_MS, 3);
    wait_settled(&refs(&nodes), SETTLE);
    let ports: Vec<String> = nodes.iter().map(|n| n.port.to_string()).collect();
    let mut cmd = std::process::Command::new(python);
    cmd.current_dir(&root)
        .arg("clients/python/cluster.py")
        .arg("--ports")
        .arg(ports.join(","));
    let (status, output) = common::run_bounded(cmd, Duration::from_secs(60));
    println!("clients/python/cluster.py:\n{output}");
    assert!(
        status.is_some_and(|s| s.success()),
        "clients/python/cluster.py failed ({status:?}):\n{output}\n{}",
        all_logs(&refs(&nodes))
    );
}
