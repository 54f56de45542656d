//! Helpers for the Redis write-behind tests: a real `redis-server` and the
//! real `creditd` binary, each on free loopback ports, in temp dirs.
#![allow(dead_code)]

pub mod proxy;

use std::fs;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// A loopback port nobody listens on right now.
pub use crate::common::{free_port, is_creditd, listening_ports};

/// Polls `f` every 20 ms until it returns true or `timeout` passes.
pub fn wait_until(timeout: Duration, mut f: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if f() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A unique temp dir, removed on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(name: &str) -> TempDir {
        static COUNTER: AtomicU64 = AtomicU64::new(0);
        let dir = std::env::temp_dir().join(format!(
            "creditd-redis-test-{name}-{}-{}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).expect("create temp dir");
        TempDir(dir)
    }

    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

fn kill9(child: &mut Option<Child>) {
    if let Some(mut c) = child.take() {
        let _ = c.kill();
        let _ = c.wait();
    }
}

/// A `redis-server` without persistence on a free loopback port.
pub struct RedisServer {
    child: Option<Child>,
    pub port: u16,
    dir: TempDir,
    extra: Vec<String>,
}

impl RedisServer {
    pub fn start() -> RedisServer {
        RedisServer::start_with(&[])
    }

    /// Starts one with extra `redis-server` arguments.
    pub fn start_with(extra: &[&str]) -> RedisServer {
        let mut server = RedisServer {
            child: None,
            port: 0,
            dir: TempDir::new("redis"),
            extra: extra.iter().map(|s| s.to_string()).collect(),
        };
        // redis-server cannot bind port 0 and say which it got: try free
        // ports until one is ours (a parallel test may take one first).
        for _ in 0..20 {
            server.port = free_port();
            if server.try_start(Duration::from_secs(5)) {
                return server;
            }
        }
        panic!("redis-server did not start on any of 20 free ports");
    }

    /// Starts (again) on the same port, empty.
    pub fn restart(&mut self) {
        assert!(
            self.try_start(Duration::from_secs(10)),
            "redis-server did not start again on port {}",
            self.port
        );
    }

    /// Starts on `self.port`, retrying while the port is still held, until
    /// `limit`; true once the server answering there is the one spawned.
    fn try_start(&mut self, limit: Duration) -> bool {
        kill9(&mut self.child);
        let deadline = Instant::now() + limit;
        loop {
            let mut child = Command::new("redis-server")
                .args(["--port", &self.port.to_string()])
                .args(["--bind", "127.0.0.1"])
                .args(["--save", ""])
                .args(["--appendonly", "no"])
                .args(&self.extra)
                .arg("--dir")
                .arg(self.dir.path())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("redis-server is installed (apt-get install redis-server)");
            let pid = child.id();
            if wait_until(Duration::from_secs(5), || self.answers_as(pid)) {
                self.child = Some(child);
                return true;
            }
            // Port still held (a previous server not gone yet, or another
            // test's): try again.
            let _ = child.kill();
            let _ = child.wait();
            if Instant::now() >= deadline {
                return false;
            }
        }
    }

    /// Is the redis-server on our port the process `pid`?
    fn answers_as(&self, pid: u32) -> bool {
        let Ok(client) = redis::Client::open(self.url()) else {
            return false;
        };
        let info = client
            .get_connection_with_timeout(Duration::from_millis(200))
            .and_then(|mut c| redis::cmd("INFO").arg("server").query::<String>(&mut c));
        info.is_ok_and(|text| text.contains(&format!("process_id:{pid}\r\n")))
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    pub fn conn(&self) -> redis::Connection {
        let client = redis::Client::open(self.url()).unwrap();
        let conn = client
            .get_connection_with_timeout(Duration::from_secs(5))
            .expect("connect to redis-server");
        conn.set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        conn
    }

    /// `kill -9`.
    pub fn kill(&mut self) {
        kill9(&mut self.child);
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        kill9(&mut self.child);
    }
}

/// The real creditd binary on free loopback ports.
pub struct Creditd {
    child: Option<Child>,
    pub port: u16,
    pub http: u16,
    pub data_dir: PathBuf,
    pub log: PathBuf,
    args: Vec<String>,
}

impl Creditd {
    /// Starts creditd with `data_dir` and `args` and waits until it answers PING.
    pub fn start(data_dir: &Path, args: &[&str]) -> Creditd {
        let mut c = Creditd {
            child: None,
            port: 0,
            http: 0,
            data_dir: data_dir.to_path_buf(),
            log: data_dir.with_extension("log"),
            args: args.iter().map(|s| s.to_string()).collect(),
        };
        c.restart();
        c
    }

    /// Replaces the arguments the next `restart` passes (after the data dir).
    pub fn set_args(&mut self, args: &[&str]) {
        self.args = args.iter().map(|s| s.to_string()).collect();
    }

    /// Starts again (after `kill9`), on new ports, same data dir and args.
    pub fn restart(&mut self) {
        kill9(&mut self.child);
        let log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .expect("open creditd log");
        // Ports the kernel picks, learnt from the data dir's lock file.
        let mut child = Command::new(env!("CARGO_BIN_EXE_creditd"))
            .args(["--listen", "127.0.0.1:0", "--http", "127.0.0.1:0"])
            .arg("--data-dir")
            .arg(&self.data_dir)
            .args(&self.args)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn creditd");
        let pid = child.id();
        let mut ports = None;
        let started = wait_until(Duration::from_secs(20), || {
            if let Ok(Some(status)) = child.try_wait() {
                panic!("creditd exited with {status}:\n{}", self.log_text());
            }
            ports = listening_ports(&self.data_dir, pid).filter(|p| is_creditd(p.0));
            ports.is_some()
        });
        (self.port, self.http) = ports.unwrap_or((0, 0));
        self.child = Some(child);
        assert!(started, "creditd did not start:\n{}", self.log_text());
    }

    pub fn log_text(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The process id, while it runs.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }

    pub fn conn(&self) -> redis::Connection {
        let client = redis::Client::open(format!("redis://127.0.0.1:{}", self.port)).unwrap();
        let conn = client
            .get_connection_with_timeout(Duration::from_secs(5))
            .expect("connect to creditd");
        conn.set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        conn
    }

    /// `kill -9`.
    pub fn kill9(&mut self) {
        kill9(&mut self.child);
    }

    /// SIGTERM, then waits for the exit (graceful shutdown).
    pub fn terminate(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = Command::new("kill").arg(c.id().to_string()).status();
            let _ = c.wait();
        }
    }

    /// A GET on the HTTP probe port: (status, body).
    pub fn http_get(&self, path: &str) -> (u16, String) {
        let mut stream = TcpStream::connect(("127.0.0.1", self.http)).expect("connect http");
        stream
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        write!(
            stream,
            "GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"
        )
        .unwrap();
        let mut text = String::new();
        stream.read_to_string(&mut text).unwrap();
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
}

impl Drop for Creditd {
    fn drop(&mut self) {
        kill9(&mut self.child);
    }
}

/// Runs creditd on `data_dir` with `args` expecting it to refuse to start:
/// waits (at most `timeout`) for it to exit and returns its exit code and
/// what it logged. Panics if it starts serving or does not exit.
pub fn start_refused(data_dir: &Path, args: &[&str], timeout: Duration) -> (i32, String) {
    let log = data_dir.with_extension("refused.log");
    let _ = fs::remove_file(&log);
    let mut child = Command::new(env!("CARGO_BIN_EXE_creditd"))
        .args(["--listen", "127.0.0.1:0", "--http", "127.0.0.1:0"])
        .arg("--data-dir")
        .arg(data_dir)
        .args(args)
        .stdout(Stdio::null())
        .stderr(fs::File::create(&log).expect("create log"))
        .spawn()
        .expect("spawn creditd");
    let deadline = Instant::now() + timeout;
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait") {
            break status;
        }
        let text = fs::read_to_string(&log).unwrap_or_default();
        let serving = listening_ports(data_dir, child.id()).is_some();
        if Instant::now() >= deadline || serving {
            let _ = child.kill();
            let _ = child.wait();
            panic!("creditd did not refuse to start:\n{text}");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    (
        status.code().unwrap_or(-1),
        fs::read_to_string(&log).unwrap_or_default(),
    )
}

/// A field of `INFO persistence` as text.
pub fn info_text(conn: &mut redis::Connection, field: &str) -> String {
    let info: String = redis::cmd("INFO")
        .arg("persistence")
        .query(conn)
        .expect("INFO");
    info.lines()
        .find_map(|l| l.strip_prefix(&format!("{field}:")))
        .unwrap_or_else(|| panic!("no {field} in INFO:\n{info}"))
        .trim()
        .to_string()
}

/// Sends SIGSTOP (`pause`) or SIGCONT to a process.
pub fn signal(pid: u32, pause: bool) {
    let sig = if pause { "-STOP" } else { "-CONT" };
    let status = Command::new("kill")
        .arg(sig)
        .arg(pid.to_string())
        .status()
        .expect("kill");
    assert!(status.success(), "kill {sig} {pid}");
}

/// A numeric field of `INFO persistence`.
pub fn info_field(conn: &mut redis::Connection, field: &str) -> u64 {
    let text = info_text(conn, field);
    text.parse()
        .unwrap_or_else(|_| panic!("{field} is not a number: {text}"))
}

/// Runs a command with redis-rs, typed as the caller asks.
pub fn cmd<T: redis::FromRedisValue>(
    conn: &mut redis::Connection,
    args: &[&str],
) -> redis::RedisResult<T> {
    let mut c = redis::cmd(args[0]);
    for a in &args[1..] {
        c.arg(*a);
    }
    c.query(conn)
}

/// Runs a command expected to reply with an integer.
pub fn int(conn: &mut redis::Connection, args: &[&str]) -> i64 {
    cmd(conn, args).unwrap_or_else(|e| panic!("{args:?}: {e}"))
}

/// BALANCE as a field map.
pub fn balance(
    conn: &mut redis::Connection,
    account: &str,
) -> std::collections::HashMap<String, i64> {
    cmd(conn, &["BALANCE", account]).unwrap()
}

/// The five balance fields of `creditd:acct:<account>` in Redis.
pub fn redis_balance(
    redis: &mut redis::Connection,
    account: &str,
) -> std::collections::HashMap<String, i64> {
    let fields = ["available", "held", "spent", "expired", "granted"];
    let values: Vec<Option<i64>> = redis::cmd("HMGET")
        .arg(format!("creditd:acct:{account}"))
        .arg(&fields[..])
        .query(redis)
        .unwrap();
    fields
        .iter()
        .zip(values)
        .filter_map(|(f, v)| v.map(|v| (f.to_string(), v)))
        .collect()
}

/// Waits (at most `timeout`) until the write-behind has nothing pending.
pub fn wait_drained(creditd: &Creditd, timeout: Duration) {
    let mut conn = creditd.conn();
    assert!(
        wait_until(timeout, || info_field(&mut conn, "redis_pending") == 0),
        "the write-behind did not drain (pending {}):\n{}",
        info_field(&mut conn, "redis_pending"),
        creditd.log_text()
    );
}
