//! The command line (contract §8). Every flag can also be set with a
//! `CREDITD_*` environment variable; a flag wins over the variable.

use clap::{Parser, ValueEnum};
use std::net::SocketAddr;
use std::path::PathBuf;

/// When the journal fsyncs, as Redis AOF means these words.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Fsync {
    Always,
    Everysec,
    No,
}

impl Fsync {
    pub fn as_str(self) -> &'static str {
        match self {
            Fsync::Always => "always",
            Fsync::Everysec => "everysec",
            Fsync::No => "no",
        }
    }
}

/// creditd: a high-throughput credit reservation engine that speaks RESP.
#[derive(Debug, Clone, Parser)]
#[command(name = "creditd", version, about, long_about = None)]
pub struct Options {
    /// Address for RESP clients.
    #[arg(long, env = "CREDITD_LISTEN", default_value = "127.0.0.1:6479")]
    pub listen: SocketAddr,

    /// Address for the HTTP probes (/healthz, /readyz, /metrics).
    #[arg(long, env = "CREDITD_HTTP", default_value = "127.0.0.1:6480")]
    pub http: SocketAddr,

    /// TOML config (rate card, plans, tokens, settings). Default: the built-in example.
    #[arg(long, env = "CREDITD_CONFIG")]
    pub config: Option<PathBuf>,

    /// Directory of the local journal and snapshots.
    #[arg(long, env = "CREDITD_DATA_DIR", default_value = "./creditd-data")]
    pub data_dir: PathBuf,

    /// Redis URL to write state behind to (e.g. redis://127.0.0.1:6379/0).
    #[arg(long, env = "CREDITD_REDIS")]
    pub redis: Option<String>,

    /// Journal fsync policy.
    #[arg(long, env = "CREDITD_FSYNC", value_enum, default_value = "everysec")]
    pub fsync: Fsync,

    /// Enable CLOCK GET/SET/ADVANCE (time under the client's control; for tests).
    #[arg(long, env = "CREDITD_TEST_CLOCK")]
    pub test_clock: bool,

    /// Allow listening beyond loopback without tokens.
    #[arg(long, env = "CREDITD_INSECURE")]
    pub insecure: bool,

    /// Seconds a graceful shutdown waits for connections to finish.
    #[arg(long, env = "CREDITD_SHUTDOWN_GRACE_S", default_value_t = 10)]
    pub shutdown_grace_s: u64,

    /// Log filter (tracing EnvFilter syntax), e.g. `info` or `creditd=debug`.
    #[arg(long, env = "CREDITD_LOG", default_value = "info")]
    pub log: String,
}
