//! Helpers for the cluster tests: a Redis Cluster of real `redis-server`
//! masters made here, creditd nodes in cluster mode on it, and readers for
//! what the nodes say about the slots (CLUSTER SLOTS, MOVED).
#![allow(dead_code)]

use crate::common::{is_creditd, listening_ports, run_bounded};
use crate::redis_support::{wait_until, TempDir};
use std::collections::BTreeMap;
use std::fs;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub const SLOTS: usize = 16384;

/// The hash tag creditd gives a slot's keys in Redis (`creditd:{tag}:...`):
/// the first decimal number whose own slot is `slot`, as docs/CLUSTER.md says.
pub fn slot_tag(slot: u16) -> String {
    static TAGS: std::sync::OnceLock<Vec<String>> = std::sync::OnceLock::new();
    let tags = TAGS.get_or_init(|| {
        let mut tags = vec![String::new(); SLOTS];
        let mut missing = SLOTS;
        let mut n: u64 = 0;
        while missing > 0 {
            let text = n.to_string();
            let s = usize::from(key_slot(&text));
            if tags[s].is_empty() {
                tags[s] = text;
                missing -= 1;
            }
            n += 1;
        }
        tags
    });
    tags[usize::from(slot)].clone()
}

/// An account's hash slot, as Redis Cluster computes a key's: CRC16-XMODEM
/// of the key (or of its first non-empty `{hash tag}`) mod 16384. The tests
/// check it against `CLUSTER KEYSLOT` of a real Redis Cluster.
pub fn key_slot(key: &str) -> u16 {
    let bytes = key.as_bytes();
    let hashed = match bytes.iter().position(|&b| b == b'{') {
        Some(open) => match bytes[open + 1..].iter().position(|&b| b == b'}') {
            Some(len) if len > 0 => &bytes[open + 1..open + 1 + len],
            _ => bytes,
        },
        None => bytes,
    };
    let mut crc: u16 = 0;
    for &b in hashed {
        crc ^= (b as u16) << 8;
        for _ in 0..8 {
            crc = if crc & 0x8000 != 0 {
                (crc << 1) ^ 0x1021
            } else {
                crc << 1
            };
        }
    }
    crc % SLOTS as u16
}

/// Can a listener bind 127.0.0.1:`port` right now?
fn port_free(port: u16) -> bool {
    TcpListener::bind(("127.0.0.1", port)).is_ok()
}

/// A port for a Redis Cluster master: it and its cluster bus port (+10000)
/// both free and both below the kernel's ephemeral range (32768 up), so
/// that no server binding port 0 (every creditd of the tests) can be handed
/// one of them between this check and redis-server's bind.
fn cluster_port(seed: &mut u64) -> u16 {
    loop {
        // xorshift: a different sequence per process and call.
        *seed ^= *seed << 13;
        *seed ^= *seed >> 7;
        *seed ^= *seed << 17;
        let port = 20000 + (*seed % 2700) as u16;
        if port_free(port) && port_free(port + 10000) {
            return port;
        }
    }
}

fn seed() -> u64 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64;
    nanos ^ ((std::process::id() as u64) << 32) | 1
}

fn kill9(child: &mut Option<Child>) {
    if let Some(mut c) = child.take() {
        let _ = c.kill();
        let _ = c.wait();
    }
}

/// Does `redis-server` process `pid` answer on `port`?
fn redis_answers_as(port: u16, pid: u32) -> bool {
    let Ok(client) = redis::Client::open(format!("redis://127.0.0.1:{port}")) else {
        return false;
    };
    client
        .get_connection_with_timeout(Duration::from_millis(200))
        .and_then(|mut c| redis::cmd("INFO").arg("server").query::<String>(&mut c))
        .is_ok_and(|text| text.contains(&format!("process_id:{pid}\r\n")))
}

/// A connection to a Redis (or creditd) on loopback `port`.
pub fn connect(port: u16) -> redis::Connection {
    let client = redis::Client::open(format!("redis://127.0.0.1:{port}")).unwrap();
    let conn = client
        .get_connection_with_timeout(Duration::from_secs(5))
        .unwrap_or_else(|e| panic!("connect to 127.0.0.1:{port}: {e}"));
    conn.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    conn.set_write_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    conn
}

/// A Redis Cluster of masters without replicas, each `redis-server` in a
/// temp dir of its own, all killed on drop.
pub struct RedisCluster {
    servers: Vec<Option<Child>>,
    pub ports: Vec<u16>,
    dir: TempDir,
}

impl RedisCluster {
    /// `masters` masters, the slots spread by `redis-cli --cluster create`;
    /// returns once every master says `cluster_state:ok`.
    pub fn start(masters: usize) -> RedisCluster {
        let mut cluster = RedisCluster {
            servers: Vec::new(),
            ports: Vec::new(),
            dir: TempDir::new("rcluster"),
        };
        let mut seed = seed();
        for _ in 0..masters {
            let (child, port) = cluster.spawn_master(&mut seed);
            cluster.servers.push(Some(child));
            cluster.ports.push(port);
        }
        let mut create = Command::new("redis-cli");
        create.arg("--cluster").arg("create");
        for port in &cluster.ports {
            create.arg(format!("127.0.0.1:{port}"));
        }
        create.args(["--cluster-replicas", "0", "--cluster-yes"]);
        let (status, output) = run_bounded(create, Duration::from_secs(60));
        assert!(
            status.is_some_and(|s| s.success()),
            "redis-cli --cluster create failed ({status:?}):\n{output}"
        );
        let ok = wait_until(Duration::from_secs(30), || {
            cluster.ports.iter().all(|&port| {
                redis::Client::open(format!("redis://127.0.0.1:{port}"))
                    .and_then(|c| c.get_connection_with_timeout(Duration::from_millis(500)))
                    .and_then(|mut c| redis::cmd("CLUSTER").arg("INFO").query::<String>(&mut c))
                    .is_ok_and(|info| info.contains("cluster_state:ok"))
            })
        });
        assert!(ok, "the Redis Cluster did not reach cluster_state:ok");
        cluster
    }

    /// Starts one master on a port whose bus port is free too; tries other
    /// ports while the chosen one turns out taken.
    fn spawn_master(&self, seed: &mut u64) -> (Child, u16) {
        for _ in 0..20 {
            let port = cluster_port(seed);
            let dir = self.dir.path().join(port.to_string());
            fs::create_dir_all(&dir).unwrap();
            let mut child = Command::new("redis-server")
                .args(["--port", &port.to_string()])
                .args(["--bind", "127.0.0.1"])
                .args(["--cluster-enabled", "yes"])
                .arg("--cluster-config-file")
                .arg(dir.join(format!("nodes-{port}.conf")))
                .args(["--cluster-node-timeout", "2000"])
                .args(["--save", ""])
                .args(["--appendonly", "no"])
                .arg("--dir")
                .arg(&dir)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("redis-server is installed (apt-get install redis-server)");
            let pid = child.id();
            if wait_until(Duration::from_secs(5), || redis_answers_as(port, pid)) {
                return (child, port);
            }
            let _ = child.kill();
            let _ = child.wait();
        }
        panic!("no Redis Cluster master started on any of 20 ports");
    }

    /// The URL of master `i` (creditd takes any master).
    pub fn url(&self, i: usize) -> String {
        format!("redis://127.0.0.1:{}", self.ports[i])
    }

    pub fn conn(&self, i: usize) -> redis::Connection {
        connect(self.ports[i])
    }

    /// `CLUSTER KEYSLOT key` as Redis Cluster computes it.
    pub fn keyslot(&self, key: &str) -> u16 {
        redis::cmd("CLUSTER")
            .arg("KEYSLOT")
            .arg(key)
            .query(&mut self.conn(0))
            .expect("CLUSTER KEYSLOT")
    }
}

impl Drop for RedisCluster {
    fn drop(&mut self) {
        for child in &mut self.servers {
            kill9(child);
        }
    }
}

/// A config file: the example config (rate card and plans) with
/// `cluster_lease_ms` set.
pub fn cluster_config(dir: &Path, lease_ms: u64) -> PathBuf {
    let example = Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/examples/creditd.toml");
    let base = fs::read_to_string(&example).expect("docs/examples/creditd.toml");
    let setting = format!("cluster_lease_ms = {lease_ms}");
    let text = if base
        .lines()
        .any(|l| l.trim_start().starts_with("cluster_lease_ms"))
    {
        base.lines()
            .map(|l| {
                if l.trim_start().starts_with("cluster_lease_ms") {
                    setting.clone()
                } else {
                    l.to_string()
                }
            })
            .collect::<Vec<_>>()
            .join("\n")
            + "\n"
    } else {
        // Settings come before the first table.
        format!("{setting}\n{base}")
    };
    let path = dir.join(format!("creditd-lease-{lease_ms}.toml"));
    fs::write(&path, text).unwrap();
    path
}

/// A creditd in cluster mode. The first start binds port 0 (the kernel's
/// choice: no race with a parallel test) and learns its ports from the data
/// dir's lock file; a restart binds the same ports again, so the node comes
/// back under the address the cluster knew.
pub struct Node {
    child: Option<Child>,
    /// RESP port; the node's address is 127.0.0.1:port.
    pub port: u16,
    pub http: u16,
    pub data_dir: PathBuf,
    pub log: PathBuf,
    args: Vec<String>,
    paused: bool,
}

impl Node {
    /// Starts `--cluster --redis redis_url --config config` on `data_dir`
    /// with `extra` flags; returns once it listens (not once it owns slots).
    pub fn start(data_dir: &Path, redis_url: &str, config: &Path, extra: &[&str]) -> Node {
        let mut args: Vec<String> = vec![
            "--cluster".into(),
            "--redis".into(),
            redis_url.into(),
            "--config".into(),
            config.to_str().unwrap().into(),
        ];
        args.extend(extra.iter().map(|s| s.to_string()));
        let mut node = Node {
            child: None,
            port: 0,
            http: 0,
            data_dir: data_dir.to_path_buf(),
            log: data_dir.with_extension("log"),
            args,
            paused: false,
        };
        node.spawn();
        node
    }

    fn spawn(&mut self) {
        assert!(self.child.is_none(), "stop it first");
        let log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .expect("open creditd log");
        let mut child = Command::new(env!("CARGO_BIN_EXE_creditd"))
            .arg("--listen")
            .arg(format!("127.0.0.1:{}", self.port))
            .arg("--http")
            .arg(format!("127.0.0.1:{}", self.http))
            .arg("--data-dir")
            .arg(&self.data_dir)
            .args(&self.args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn creditd");
        let pid = child.id();
        let mut ports = None;
        let started = wait_until(Duration::from_secs(30), || {
            if let Ok(Some(status)) = child.try_wait() {
                panic!("creditd exited with {status}:\n{}", self.log_text());
            }
            ports = listening_ports(&self.data_dir, pid).filter(|p| is_creditd(p.0));
            ports.is_some()
        });
        self.child = Some(child);
        assert!(started, "creditd did not start:\n{}", self.log_text());
        (self.port, self.http) = ports.unwrap();
        self.paused = false;
    }

    /// Starts it again on its data dir and ports (after `kill9` or `terminate`).
    pub fn restart(&mut self) {
        kill9(&mut self.child);
        self.spawn();
    }

    /// The address the node announces: what MOVED and CLUSTER SLOTS name.
    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }

    pub fn conn(&self) -> redis::Connection {
        connect(self.port)
    }

    pub fn log_text(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// `kill -9`.
    pub fn kill9(&mut self) {
        kill9(&mut self.child);
        self.paused = false;
    }

    /// SIGTERM, then waits (at most 30 s) for the exit.
    pub fn terminate(&mut self) -> std::process::ExitStatus {
        let mut child = self.child.take().expect("running");
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(child.id().to_string())
            .status();
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = child.try_wait().expect("wait") {
                return status;
            }
            if Instant::now() >= deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!("creditd ignored SIGTERM for 30 s:\n{}", self.log_text());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGSTOP, then waits until every thread of the process is stopped:
    /// the kernel stops a multi-threaded process's threads one after the
    /// other (a busy machine can leave one serving for a while after `kill`
    /// returned). The process is frozen; its sockets stay open.
    pub fn pause(&mut self) {
        self.signal("-STOP");
        self.paused = true;
        let tasks = PathBuf::from(format!("/proc/{}/task", self.pid()));
        let stopped = wait_until(Duration::from_secs(10), || {
            let Ok(entries) = fs::read_dir(&tasks) else {
                return false;
            };
            entries.flatten().all(|task| {
                // The state is the field after the parenthesised name.
                fs::read_to_string(task.path().join("stat")).is_ok_and(|stat| {
                    stat.rsplit_once(')')
                        .and_then(|(_, rest)| rest.split_whitespace().next())
                        .is_some_and(|state| state == "T" || state == "t")
                })
            })
        });
        assert!(stopped, "process {} did not stop", self.pid());
    }

    /// SIGCONT.
    pub fn resume(&mut self) {
        self.signal("-CONT");
        self.paused = false;
    }

    fn signal(&self, sig: &str) {
        let status = Command::new("kill")
            .arg(sig)
            .arg(self.pid().to_string())
            .status()
            .expect("kill");
        assert!(status.success(), "kill {sig} {}", self.pid());
    }

    /// A GET on the HTTP probe port: (status, body); status 0 if it does
    /// not answer within 5 s.
    pub fn http_get(&self, path: &str) -> (u16, String) {
        use std::io::{Read, Write};
        let Ok(mut stream) = std::net::TcpStream::connect(("127.0.0.1", self.http)) else {
            return (0, String::new());
        };
        stream
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        let _ = write!(
            stream,
            "GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"
        );
        let mut text = String::new();
        let _ = stream.read_to_string(&mut text);
        let status = text
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or(0);
        let body = text
            .split_once("\r\n\r\n")
            .map(|(_, b)| b.to_string())
            .unwrap_or_default();
        (status, body)
    }

    /// `CLUSTER MYID`.
    pub fn myid(&self) -> String {
        redis::cmd("CLUSTER")
            .arg("MYID")
            .query(&mut self.conn())
            .expect("CLUSTER MYID")
    }

    /// A field of `INFO cluster`.
    pub fn info_cluster(&self, field: &str) -> String {
        let info: String = redis::cmd("INFO")
            .arg("cluster")
            .query(&mut self.conn())
            .expect("INFO cluster");
        info.lines()
            .find_map(|l| l.strip_prefix(&format!("{field}:")))
            .unwrap_or_else(|| panic!("no {field} in INFO cluster:\n{info}"))
            .trim()
            .to_string()
    }

    /// Its `CLUSTER SLOTS`, or None if it does not answer.
    pub fn slots(&self) -> Option<Vec<SlotRange>> {
        let client = redis::Client::open(self.url()).ok()?;
        let mut conn = client
            .get_connection_with_timeout(Duration::from_millis(500))
            .ok()?;
        conn.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
        let value: redis::Value = redis::cmd("CLUSTER").arg("SLOTS").query(&mut conn).ok()?;
        Some(parse_cluster_slots(&value))
    }

    /// `CLUSTER INFO` as text, or None if it does not answer.
    pub fn cluster_info(&self) -> Option<String> {
        let client = redis::Client::open(self.url()).ok()?;
        let mut conn = client
            .get_connection_with_timeout(Duration::from_millis(500))
            .ok()?;
        conn.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
        redis::cmd("CLUSTER").arg("INFO").query(&mut conn).ok()
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        // SIGKILL ends a stopped process too.
        kill9(&mut self.child);
    }
}

/// One range of `CLUSTER SLOTS`: start..=end served by master host:port
/// (node id as the third field of the master entry).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SlotRange {
    pub start: u16,
    pub end: u16,
    pub host: String,
    pub port: u16,
    pub id: String,
}

impl SlotRange {
    pub fn addr(&self) -> String {
        format!("{}:{}", self.host, self.port)
    }

    pub fn len(&self) -> usize {
        (self.end - self.start) as usize + 1
    }
}

fn text(v: &redis::Value) -> String {
    match v {
        redis::Value::BulkString(b) => String::from_utf8_lossy(b).into_owned(),
        redis::Value::SimpleString(s) => s.clone(),
        redis::Value::Int(n) => n.to_string(),
        other => format!("{other:?}"),
    }
}

/// A `CLUSTER SLOTS` reply as ranges; panics on a malformed one.
pub fn parse_cluster_slots(value: &redis::Value) -> Vec<SlotRange> {
    let redis::Value::Array(ranges) = value else {
        panic!("CLUSTER SLOTS: expected an array, got {value:?}");
    };
    ranges
        .iter()
        .map(|range| {
            let redis::Value::Array(items) = range else {
                panic!("CLUSTER SLOTS: a range is not an array: {range:?}");
            };
            assert!(items.len() >= 3, "CLUSTER SLOTS: short range {items:?}");
            let int = |v: &redis::Value| match v {
                redis::Value::Int(n) => *n,
                other => panic!("CLUSTER SLOTS: expected an integer, got {other:?}"),
            };
            let redis::Value::Array(master) = &items[2] else {
                panic!("CLUSTER SLOTS: the master is not an array: {:?}", items[2]);
            };
            assert!(master.len() >= 3, "CLUSTER SLOTS: short master {master:?}");
            SlotRange {
                start: int(&items[0]) as u16,
                end: int(&items[1]) as u16,
                host: text(&master[0]),
                port: int(&master[1]) as u16,
                id: text(&master[2]),
            }
        })
        .collect()
}

/// The owner address of each slot per `ranges`; Err if a slot is missing or
/// covered twice.
pub fn slot_owners(ranges: &[SlotRange]) -> Result<Vec<String>, String> {
    let mut owners: Vec<Option<String>> = vec![None; SLOTS];
    for r in ranges {
        if r.start > r.end || r.end as usize >= SLOTS {
            return Err(format!("bad range {r:?}"));
        }
        for owner in &mut owners[r.start as usize..=r.end as usize] {
            if owner.is_some() {
                return Err(format!("slot covered twice by {r:?}"));
            }
            *owner = Some(r.addr());
        }
    }
    owners
        .into_iter()
        .enumerate()
        .map(|(slot, o)| o.ok_or_else(|| format!("slot {slot} has no owner")))
        .collect()
}

/// The settled view of a cluster: which node (by address) owns each slot.
#[derive(Clone, Debug)]
pub struct SlotMap {
    pub owners: Vec<String>,
}

impl SlotMap {
    pub fn owner_of(&self, account: &str) -> &str {
        &self.owners[key_slot(account) as usize]
    }

    /// Slots per owner address.
    pub fn counts(&self) -> BTreeMap<String, usize> {
        let mut counts = BTreeMap::new();
        for o in &self.owners {
            *counts.entry(o.clone()).or_insert(0) += 1;
        }
        counts
    }

    pub fn slots_of(&self, addr: &str) -> Vec<u16> {
        (0..SLOTS as u16)
            .filter(|&s| self.owners[s as usize] == addr)
            .collect()
    }
}

/// How long a settled view must stay the same (longer than the nodes'
/// view interval, 250 ms at most).
const STABLE: Duration = Duration::from_millis(600);

/// Is `n` slots about an even share among `nodes` live nodes? The nodes
/// share by rendezvous hashing over 1024 blocks: even within a few percent.
pub fn about_even(n: usize, nodes: usize) -> bool {
    let even = SLOTS / nodes;
    n * 100 >= even * 85 && n * 100 <= even * 115
}

/// Waits (at most `timeout`) until every node in `live` answers CLUSTER
/// SLOTS with all 16384 slots, each owned by exactly one node of `live`,
/// split about evenly among them, all of them agreeing and still agreeing
/// on the same split a view interval later, CLUSTER INFO `cluster_state:ok`
/// and `/readyz` 200 on each. Panics with the last views and the logs if
/// that does not happen.
pub fn wait_settled(live: &[&Node], timeout: Duration) -> SlotMap {
    let addrs: Vec<String> = live.iter().map(|n| n.addr()).collect();
    let mut last = String::new();
    let mut settled = None;
    let mut stable_since: Option<(Instant, Vec<String>)> = None;
    let ok = wait_until(timeout, || {
        let mut agreed: Option<Vec<String>> = None;
        for node in live {
            let Some(ranges) = node.slots() else {
                last = format!("{} does not answer CLUSTER SLOTS", node.addr());
                return false;
            };
            let owners = match slot_owners(&ranges) {
                Ok(o) => o,
                Err(e) => {
                    last = format!("{}: {e}", node.addr());
                    return false;
                }
            };
            if let Some(stranger) = owners.iter().find(|o| !addrs.contains(o)) {
                last = format!("{} names {stranger}, not a live node", node.addr());
                return false;
            }
            // Live nodes share the slots about evenly: a lopsided split is
            // a rebalance still under way.
            for a in &addrs {
                let n = owners.iter().filter(|o| *o == a).count();
                if !about_even(n, addrs.len()) {
                    last = format!("{} gives {a} {n} slots", node.addr());
                    return false;
                }
            }
            match &agreed {
                Some(first) if *first != owners => {
                    last = format!("{} disagrees with {}", node.addr(), live[0].addr());
                    return false;
                }
                _ => agreed = Some(owners),
            }
            if !node
                .cluster_info()
                .is_some_and(|i| i.contains("cluster_state:ok"))
            {
                last = format!("{} is not cluster_state:ok", node.addr());
                return false;
            }
            let (status, body) = node.http_get("/readyz");
            if status != 200 {
                last = format!("{} /readyz: {status} {body}", node.addr());
                return false;
            }
        }
        // And the same a view interval later: not a split passing by.
        let now = Instant::now();
        match &stable_since {
            Some((since, owners)) if Some(owners) == agreed.as_ref() => {
                if now.duration_since(*since) < STABLE {
                    return false;
                }
            }
            _ => {
                last = "the slots are still moving".to_string();
                stable_since = Some((now, agreed.clone().unwrap()));
                return false;
            }
        }
        settled = agreed;
        true
    });
    if !ok {
        let logs: String = live
            .iter()
            .map(|n| format!("--- {} log:\n{}\n", n.addr(), tail(&n.log_text(), 40)))
            .collect();
        panic!("the slots did not settle over {addrs:?} in {timeout:?}: {last}\n{logs}");
    }
    SlotMap {
        owners: settled.unwrap(),
    }
}

/// The last `lines` lines of a log.
pub fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// `MOVED <slot> <host:port>` parsed from an error text.
pub fn parse_moved(error: &str) -> Option<(u16, String)> {
    let mut words = error.split_whitespace();
    if words.next()? != "MOVED" {
        return None;
    }
    let slot = words.next()?.parse().ok()?;
    let addr = words.next()?.to_string();
    Some((slot, addr))
}

/// A redis-rs error as the server sent it: "CODE detail"; other errors as text.
pub fn error_text(e: &redis::RedisError) -> String {
    match (e.code(), e.detail()) {
        (Some(code), Some(detail)) => format!("{code} {detail}"),
        (Some(code), None) => code.to_string(),
        _ => e.to_string(),
    }
}

/// Runs one command on a plain connection; errors as their text.
pub fn run(conn: &mut redis::Connection, args: &[&str]) -> Result<redis::Value, String> {
    let mut c = redis::cmd(args[0]);
    for a in &args[1..] {
        c.arg(*a);
    }
    c.query::<redis::Value>(conn).map_err(|e| error_text(&e))
}

/// Is this an error a client retries with the same id (the cluster moving,
/// a node gone, persistence behind), rather than an answer about the
/// command itself?
pub fn retryable(e: &redis::RedisError) -> bool {
    match e.code() {
        None => true,
        Some(code) => matches!(
            code,
            "MOVED" | "ASK" | "TRYAGAIN" | "CLUSTERDOWN" | "BUSY" | "LOADING" | "MASTERDOWN"
        ),
    }
}

/// A stock cluster client over these nodes' addresses.
pub fn cluster_client(nodes: &[&Node]) -> redis::cluster::ClusterClient {
    cluster_client_of(nodes.iter().map(|n| n.url()).collect())
}

/// A stock cluster client over these URLs, with short timeouts and a few
/// quick retries of its own.
pub fn cluster_client_of(urls: Vec<String>) -> redis::cluster::ClusterClient {
    redis::cluster::ClusterClient::builder(urls)
        .connection_timeout(Duration::from_secs(1))
        .response_timeout(Duration::from_secs(10))
        .retries(4)
        .min_retry_wait(20)
        .max_retry_wait(200)
        .build()
        .expect("cluster client")
}

/// The five BALANCE fields (available, held, spent, expired, granted) from
/// a reply.
pub fn balance_of(value: &redis::Value) -> [i64; 5] {
    let pairs: Vec<(String, redis::Value)> = match value {
        redis::Value::Array(items) => items
            .chunks(2)
            .map(|kv| (text(&kv[0]), kv[1].clone()))
            .collect(),
        redis::Value::Map(pairs) => pairs.iter().map(|(k, v)| (text(k), v.clone())).collect(),
        other => panic!("BALANCE: expected fields, got {other:?}"),
    };
    ["available", "held", "spent", "expired", "granted"].map(|k| {
        pairs
            .iter()
            .find(|(f, _)| f == k)
            .and_then(|(_, v)| match v {
                redis::Value::Int(n) => Some(*n),
                _ => None,
            })
            .unwrap_or_else(|| panic!("BALANCE: field {k} missing in {value:?}"))
    })
}
