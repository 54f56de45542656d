//! The command line (contract §8). Every flag can also be set with a
//! `CREDITD_*` environment variable; a flag wins over the variable.

use clap::builder::{BoolishValueParser, PossibleValuesParser, TypedValueParser};
use clap::{Parser, ValueEnum};
use creditd_journal::FsyncMode;
use std::net::{SocketAddr, ToSocketAddrs};
use std::path::PathBuf;

/// creditd: a high-throughput credit reservation engine that speaks RESP.
#[derive(Debug, Clone, Parser)]
#[command(name = "creditd", version, about, long_about = None)]
pub struct Options {
    /// Address for RESP clients: IP:PORT or HOST:PORT (port 0: the kernel picks one).
    #[arg(long, env = "CREDITD_LISTEN", default_value = "127.0.0.1:6479", value_parser = parse_address)]
    pub listen: SocketAddr,

    /// Address for the HTTP probes (/healthz, /readyz, /metrics).
    #[arg(long, env = "CREDITD_HTTP", default_value = "127.0.0.1:6480", value_parser = parse_address)]
    pub http: SocketAddr,

    /// TOML config (rate card, plans, tokens, settings). Default: the built-in example.
    #[arg(long, env = "CREDITD_CONFIG")]
    pub config: Option<PathBuf>,

    /// Directory of the local journal and snapshots.
    #[arg(long, env = "CREDITD_DATA_DIR", default_value = "./creditd-data")]
    pub data_dir: PathBuf,

    /// Redis URL to write state behind to (e.g. redis://127.0.0.1:6379/0).
    #[arg(long, env = "CREDITD_REDIS", value_parser = parse_redis_url)]
    pub redis: Option<String>,

    /// Journal fsync policy.
    #[arg(long, env = "CREDITD_FSYNC", default_value = "everysec", value_parser = fsync_mode())]
    pub fsync: FsyncMode,

    /// Enable CLOCK GET/SET/ADVANCE (time under the client's control; for tests).
    /// The variable takes 1/0, true/false, yes/no, on/off.
    #[arg(long, env = "CREDITD_TEST_CLOCK", value_parser = BoolishValueParser::new())]
    pub test_clock: bool,

    /// Allow listening beyond loopback without tokens.
    /// The variable takes 1/0, true/false, yes/no, on/off.
    #[arg(long, env = "CREDITD_INSECURE", value_parser = BoolishValueParser::new())]
    pub insecure: bool,

    /// Join a cluster of creditd nodes that share the Redis of --redis (a
    /// Redis Cluster, any master's URL, or one Redis): the 16384 hash slots
    /// are split among the live nodes, and a reply to a change waits until
    /// the change is in Redis. The variable takes 1/0, true/false, yes/no, on/off.
    #[arg(long, env = "CREDITD_CLUSTER", value_parser = BoolishValueParser::new(), requires = "redis")]
    pub cluster: bool,

    /// This node's id in the cluster (40 hex digits). Default: made once
    /// and kept in the data dir.
    #[arg(long, env = "CREDITD_NODE_ID", value_parser = parse_node_id)]
    pub node_id: Option<String>,

    /// HOST:PORT that MOVED replies and CLUSTER SLOTS name for this node.
    /// Default: the --listen address.
    #[arg(long, env = "CREDITD_ANNOUNCE", value_parser = parse_announce)]
    pub announce: Option<String>,

    /// Threads that serve connections, each owning its connections (one
    /// current-thread runtime per thread); 0: one per core. On a machine the
    /// load shares (2 cores with the clients), 1 serves pipeline-1 traffic
    /// best: see docs/PERFORMANCE.md ("Thread per core").
    #[arg(long, env = "CREDITD_WORKERS", default_value_t = 0, value_parser = clap::value_parser!(u16).range(0..=1024))]
    pub workers: u16,

    /// Seconds a graceful shutdown waits for connections to finish.
    #[arg(long, env = "CREDITD_SHUTDOWN_GRACE_S", default_value_t = 10)]
    pub shutdown_grace_s: u64,

    /// Log filter (tracing EnvFilter syntax), e.g. `info`, `debug` or `creditd=debug`.
    #[arg(long, env = "CREDITD_LOG", default_value = "info")]
    pub log: String,

    /// Log lines as text (colored on a terminal) or as JSON objects (for log shippers).
    #[arg(long, env = "CREDITD_LOG_FORMAT", value_enum, default_value = "text")]
    pub log_format: LogFormat,
}

/// How log lines are written to stderr.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

/// The journal's fsync modes, by the journal's own words (listed in `--help`
/// and in the error for any other word).
fn fsync_mode() -> impl TypedValueParser<Value = FsyncMode> {
    PossibleValuesParser::new(FsyncMode::ALL.map(FsyncMode::as_str))
        .try_map(|word| word.parse::<FsyncMode>())
}

/// `IP:PORT`, or `HOST:PORT` resolved now (the first address it resolves to).
fn parse_address(text: &str) -> Result<SocketAddr, String> {
    if let Ok(addr) = text.parse() {
        return Ok(addr);
    }
    let mut resolved = text
        .to_socket_addrs()
        .map_err(|e| format!("expected IP:PORT or HOST:PORT, e.g. 127.0.0.1:6479 ({e})"))?;
    resolved
        .next()
        .ok_or_else(|| format!("{text} resolves to no address"))
}

/// A node id: 40 hex digits, as Redis Cluster's.
fn parse_node_id(text: &str) -> Result<String, String> {
    if text.len() == 40 && text.bytes().all(|b| b.is_ascii_hexdigit()) {
        Ok(text.to_ascii_lowercase())
    } else {
        Err(format!("expected 40 hex digits, not {text:?}"))
    }
}

/// `HOST:PORT` as clients are to reach this node (not resolved: it is
/// handed to clients as it is).
fn parse_announce(text: &str) -> Result<String, String> {
    match text.rsplit_once(':') {
        Some((host, port))
            if !host.is_empty()
                && !host.contains(char::is_whitespace)
                && port.parse::<u16>().is_ok_and(|p| p > 0) =>
        {
            Ok(text.to_string())
        }
        _ => Err(format!(
            "expected HOST:PORT, e.g. 10.0.0.5:6479, not {text:?}"
        )),
    }
}

/// A Redis URL: `redis://[user:password@]host:port[/db]` (or
/// `redis+unix://`, `unix://`). A bare `host:port` is refused with the form
/// to use, rather than misread; `rediss://` too, since this build has no TLS.
fn parse_redis_url(text: &str) -> Result<String, String> {
    const SCHEMES: [&str; 3] = ["redis://", "redis+unix://", "unix://"];
    if text.starts_with("rediss://") {
        return Err(
            "rediss:// (TLS) is not supported by this build: use redis:// on a trusted network, or a TLS tunnel to Redis".into(),
        );
    }
    if SCHEMES.iter().any(|s| text.starts_with(s)) {
        return Ok(text.to_string());
    }
    Err(format!(
        "expected a URL like redis://host:port/db (e.g. redis://{text}/0), not {text:?}"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_take_host_names() {
        assert_eq!(
            parse_address("127.0.0.1:7000"),
            Ok("127.0.0.1:7000".parse().unwrap())
        );
        let local = parse_address("localhost:7000").expect("localhost resolves");
        assert!(local.ip().is_loopback() && local.port() == 7000);
        assert!(parse_address("localhost").is_err());
    }

    #[test]
    fn redis_urls_need_a_scheme() {
        assert!(parse_redis_url("redis://127.0.0.1:6379/0").is_ok());
        let e = parse_redis_url("127.0.0.1:6379").unwrap_err();
        assert!(e.contains("redis://127.0.0.1:6379/0"), "{e}");
        let e = parse_redis_url("rediss://127.0.0.1:6379").unwrap_err();
        assert!(e.contains("TLS"), "{e}");
    }

    #[test]
    fn fsync_takes_the_journals_words() {
        for mode in FsyncMode::ALL {
            let opts = Options::try_parse_from(["creditd", "--fsync", mode.as_str()]);
            assert_eq!(opts.expect("parses").fsync, mode);
        }
        let default = Options::try_parse_from(["creditd"]).expect("parses");
        assert_eq!(default.fsync, FsyncMode::EverySec);
        let e = Options::try_parse_from(["creditd", "--fsync", "sometimes"]).unwrap_err();
        assert!(
            e.to_string()
                .contains("[possible values: always, everysec, no]"),
            "{e}"
        );
    }

    #[test]
    fn boolean_variables_take_the_usual_words() {
        // The only test that sets CREDITD_* variables in this process.
        for (word, on) in [
            ("1", true),
            ("0", false),
            ("yes", true),
            ("no", false),
            ("true", true),
            ("off", false),
        ] {
            std::env::set_var("CREDITD_TEST_CLOCK", word);
            let opts = Options::try_parse_from(["creditd"]).expect("parses");
            assert_eq!(opts.test_clock, on, "CREDITD_TEST_CLOCK={word}");
        }
        std::env::remove_var("CREDITD_TEST_CLOCK");
    }
}
