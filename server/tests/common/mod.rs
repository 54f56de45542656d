//! Test support: start the real `creditd` binary on free loopback ports with
//! its own data dir, talk to it with the `redis` crate or raw sockets.
#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// Is the server on `port` a creditd? (A port from `free_port` can be handed
/// to a parallel test's server before ours binds it: a bare connect or PING
/// could reach that one.)
pub fn is_creditd(port: u16) -> bool {
    let Ok(mut s) = TcpStream::connect(("127.0.0.1", port)) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
    if s.write_all(b"INFO server\r\n").is_err() {
        return false;
    }
    let mut reply = Vec::new();
    let mut buf = [0u8; 1024];
    while reply.len() < 8192 {
        match s.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => reply.extend_from_slice(&buf[..n]),
        }
        // With tokens configured, INFO before AUTH is NOAUTH: only creditd has them here.
        if reply.starts_with(b"-NOAUTH") || reply.windows(16).any(|w| w == b"creditd_version:") {
            return true;
        }
    }
    false
}

/// The RESP and HTTP ports that process `pid` recorded in `data_dir`'s lock
/// file, once it listens.
pub fn listening_ports(data_dir: &Path, pid: u32) -> Option<(u16, u16)> {
    let text = std::fs::read_to_string(data_dir.join("creditd.lock")).ok()?;
    // The file is rewritten in place: trust it only once it is whole (its
    // last line, `http=`, ends with a newline).
    if !text.ends_with('\n') || !text.contains("\nhttp=") {
        return None;
    }
    let field = |key: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(key)?.strip_prefix('='))
            .map(str::to_string)
    };
    if field("pid")?.parse::<u32>().ok()? != pid {
        return None;
    }
    let port = |key: &str| field(key)?.rsplit(':').next()?.parse::<u16>().ok();
    Some((port("listen")?, port("http")?))
}

/// A loopback port that was free a moment ago. Only for servers other than
/// creditd that cannot bind port 0 and report it (callers retry on a clash).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

/// A fresh temp directory for one test.
pub fn temp_dir(tag: &str) -> PathBuf {
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let dir = std::env::temp_dir().join(format!("creditd-test-{tag}-{}-{n}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("temp dir");
    dir
}

/// A running creditd.
pub struct Creditd {
    child: Option<Child>,
    pub port: u16,
    pub http_port: u16,
    pub data_dir: PathBuf,
    pub args: Vec<String>,
    pub log: PathBuf,
}

impl Creditd {
    /// Starts creditd with a fresh data dir and `extra` flags; waits until it answers PING.
    pub fn start(extra: &[&str]) -> Creditd {
        let dir = temp_dir("srv");
        Creditd::start_in(&dir.join("data"), extra)
    }

    /// Starts creditd on `data_dir` (kept between restarts).
    pub fn start_in(data_dir: &Path, extra: &[&str]) -> Creditd {
        let mut c = Creditd {
            child: None,
            port: 0,
            http_port: 0,
            data_dir: data_dir.to_path_buf(),
            args: extra.iter().map(|s| s.to_string()).collect(),
            log: data_dir.with_extension("log"),
        };
        c.spawn();
        c
    }

    /// Starts the binary on ports the kernel picks (port 0: no race with a
    /// parallel test for a "free" port) and learns them from the data dir's
    /// lock file, where creditd records them once it listens.
    fn spawn(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .expect("log file");
        let child = Command::new(env!("CARGO_BIN_EXE_creditd"))
            .arg("--listen")
            .arg("127.0.0.1:0")
            .arg("--http")
            .arg("127.0.0.1:0")
            .arg("--data-dir")
            .arg(&self.data_dir)
            .args(&self.args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn creditd");
        self.child = Some(child);
        self.wait_ready(Duration::from_secs(60));
    }

    /// Starts it again (same data dir and flags, new ports).
    pub fn restart(&mut self) {
        assert!(self.child.is_none(), "stop it first");
        self.spawn();
    }

    fn wait_ready(&mut self, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        let pid = self.pid();
        loop {
            if let Some((port, http_port)) = listening_ports(&self.data_dir, pid) {
                if is_creditd(port) {
                    (self.port, self.http_port) = (port, http_port);
                    return;
                }
            }
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                panic!("creditd exited early ({status}); log:\n{}", self.log_text());
            }
            assert!(
                Instant::now() < deadline,
                "creditd did not start; log:\n{}",
                self.log_text()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }

    /// A redis-rs connection (RESP2).
    pub fn client(&self) -> redis::Connection {
        let c = redis::Client::open(self.url()).expect("client");
        let conn = c.get_connection().expect("connect");
        conn.set_read_timeout(Some(Duration::from_secs(30)))
            .unwrap();
        conn
    }

    /// A raw socket.
    pub fn raw(&self) -> TcpStream {
        let s = TcpStream::connect(("127.0.0.1", self.port)).expect("connect");
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        s
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }

    /// kill -9.
    pub fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// SIGTERM and wait for the exit status.
    pub fn terminate(&mut self) -> ExitStatus {
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
            assert!(Instant::now() < deadline, "creditd ignored SIGTERM");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn is_running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| c.try_wait().ok().flatten().is_none())
    }

    /// GET on the probe port: (status, body).
    pub fn http_get(&self, path: &str) -> (u16, String) {
        http_get(self.http_port, path)
    }
}

impl Drop for Creditd {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// A minimal HTTP/1.1 GET (the tests need no HTTP client crate).
pub fn http_get(port: u16, path: &str) -> (u16, String) {
    let mut s = TcpStream::connect(("127.0.0.1", port)).expect("connect http");
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut resp = String::new();
    s.read_to_string(&mut resp).expect("http response");
    let status: u16 = resp
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .expect("status code");
    let body = resp
        .split_once("\r\n\r\n")
        .map(|x| x.1)
        .unwrap_or("")
        .to_string();
    (status, body)
}

/// Reads exactly `n` RESP replies from a raw socket (lines for simple types, bulk bodies).
pub fn read_replies(s: &mut TcpStream, n: usize) -> Vec<String> {
    let mut reader = std::io::BufReader::new(s.try_clone().unwrap());
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        out.push(read_one(&mut reader));
    }
    out
}

fn read_line(r: &mut impl std::io::BufRead) -> String {
    let mut line = String::new();
    r.read_line(&mut line).expect("read line");
    assert!(!line.is_empty(), "connection closed");
    line.trim_end_matches("\r\n").to_string()
}

/// One reply, flattened to a string (arrays as `[a,b]`).
pub fn read_one(r: &mut impl std::io::BufRead) -> String {
    let line = read_line(r);
    match line.as_bytes()[0] {
        b'$' => {
            let n: i64 = line[1..].parse().unwrap();
            if n < 0 {
                return "(nil)".into();
            }
            let mut body = vec![0u8; n as usize + 2];
            r.read_exact(&mut body).unwrap();
            String::from_utf8_lossy(&body[..n as usize]).into_owned()
        }
        b'*' | b'%' => {
            let n: i64 = line[1..].parse().unwrap();
            let n = if line.starts_with('%') { n * 2 } else { n };
            let items: Vec<String> = (0..n.max(0)).map(|_| read_one(r)).collect();
            format!("[{}]", items.join(","))
        }
        _ => line,
    }
}

/// Runs a command with redis-rs and returns the result (errors as Err(text)).
pub fn cmd(conn: &mut redis::Connection, args: &[&str]) -> Result<redis::Value, String> {
    let mut c = redis::cmd(args[0]);
    for a in &args[1..] {
        c.arg(*a);
    }
    c.query::<redis::Value>(conn).map_err(|e| {
        // "CODE message" as the server sent it.
        match (e.code(), e.detail()) {
            (Some(code), Some(detail)) => format!("{code} {detail}"),
            (Some(code), None) => code.to_string(),
            _ => e.to_string(),
        }
    })
}

/// Runs a command expected to reply with an integer.
pub fn int(conn: &mut redis::Connection, args: &[&str]) -> i64 {
    match cmd(conn, args) {
        Ok(redis::Value::Int(n)) => n,
        other => panic!("{args:?}: expected an integer, got {other:?}"),
    }
}

/// Runs a command expected to fail; returns the error text.
pub fn err(conn: &mut redis::Connection, args: &[&str]) -> String {
    match cmd(conn, args) {
        Err(e) => e,
        Ok(v) => panic!("{args:?}: expected an error, got {v:?}"),
    }
}

/// BALANCE as (available, held, spent, expired, granted).
pub fn balance(conn: &mut redis::Connection, account: &str) -> [i64; 5] {
    let fields = fields(conn, &["BALANCE", account]);
    ["available", "held", "spent", "expired", "granted"].map(|k| {
        fields
            .iter()
            .find(|(f, _)| f == k)
            .and_then(|(_, v)| match v {
                redis::Value::Int(n) => Some(*n),
                _ => None,
            })
            .unwrap_or_else(|| panic!("field {k} missing"))
    })
}

/// A fields reply (flat array in RESP2, map in RESP3) as pairs.
pub fn fields(conn: &mut redis::Connection, args: &[&str]) -> Vec<(String, redis::Value)> {
    match cmd(conn, args).unwrap_or_else(|e| panic!("{args:?}: {e}")) {
        redis::Value::Array(items) => items
            .chunks(2)
            .map(|kv| (as_string(&kv[0]), kv[1].clone()))
            .collect(),
        redis::Value::Map(pairs) => pairs.into_iter().map(|(k, v)| (as_string(&k), v)).collect(),
        other => panic!("{args:?}: expected fields, got {other:?}"),
    }
}

pub fn as_string(v: &redis::Value) -> String {
    match v {
        redis::Value::BulkString(b) => String::from_utf8_lossy(b).into_owned(),
        redis::Value::SimpleString(s) => s.clone(),
        redis::Value::Int(n) => n.to_string(),
        other => format!("{other:?}"),
    }
}

/// Conservation: granted = available + held + spent + expired.
pub fn assert_conserved(b: [i64; 5]) {
    assert_eq!(
        b[4],
        b[0] + b[1] + b[2] + b[3],
        "conservation broken: {b:?}"
    );
}

/// Runs `cmd` for at most `limit`: its exit status (None: still running at
/// `limit`, then killed) and its output (stdout and stderr together).
pub fn run_bounded(mut cmd: Command, limit: Duration) -> (Option<ExitStatus>, String) {
    let out_path = temp_dir("run").join("output");
    let out = std::fs::File::create(&out_path).expect("output file");
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(out.try_clone().expect("output file"))
        .stderr(out)
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {cmd:?}: {e}"));
    let deadline = Instant::now() + limit;
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait") {
            break Some(status);
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    (
        status,
        std::fs::read_to_string(&out_path).unwrap_or_default(),
    )
}

/// Starts creditd on loopback ports the kernel picks, with `args` (a
/// config, a data dir, flags), expects it to refuse to start within 20 s,
/// and returns what it printed.
pub fn refused_start<S: AsRef<std::ffi::OsStr>>(args: &[S]) -> String {
    let mut creditd = Command::new(env!("CARGO_BIN_EXE_creditd"));
    creditd
        .args(["--listen", "127.0.0.1:0", "--http", "127.0.0.1:0"])
        .args(args);
    let (status, output) = run_bounded(creditd, Duration::from_secs(20));
    assert!(
        status.is_some_and(|s| !s.success()),
        "started anyway ({status:?}): {output}"
    );
    output
}
