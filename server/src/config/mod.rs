//! The config file (PROTOCOL.md §7) as the server reads it. The server reads
//! the file, its own settings (connections, Redis, snapshots, the lease) and
//! the access tokens; the engine reads its settings, the rate card and the
//! plans from the same parsed table (`creditd_engine::config`). A top-level
//! key neither of them knows is refused, with the closest known key: the
//! config prices real money, and a misspelt key must never be ignored.

mod tokens;

#[cfg(test)]
mod tests;

use std::path::Path;

use creditd_engine::config::read::{self, check_keys, int_in, R};
use creditd_engine::config::{self as engine, BUILTIN_TOML};
use toml::Table;

pub use creditd_engine::config::ConfigError;
pub use tokens::{Role, Token};

/// The server's top-level numeric settings. Each bounds a resource so that
/// one busy or hostile client cannot exhaust connections, disk or Redis.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ServerSettings {
    /// Simultaneous client connections.
    pub max_clients: u32,
    /// Write-behind backlog before mutating commands get `-BUSY`.
    pub redis_max_pending: u64,
    /// Audit stream `MAXLEN ~`.
    pub redis_stream_maxlen: u64,
    /// Take a snapshot after this many journal records, bounding recovery time.
    pub snapshot_every_records: u64,
    /// Length of the lease by which one creditd owns a Redis keyspace; a
    /// dead owner's lease lapses after this long.
    pub cluster_lease_ms: u64,
}

impl Default for ServerSettings {
    fn default() -> Self {
        ServerSettings {
            max_clients: 10_000,
            redis_max_pending: 1_000_000,
            redis_stream_maxlen: 1_000_000,
            snapshot_every_records: 1_000_000,
            cluster_lease_ms: 3_000,
        }
    }
}

/// The server's own top-level keys: its settings (checked in this order) and `tokens`.
pub const KEYS: [&str; 6] = [
    "max_clients",
    "redis_max_pending",
    "redis_stream_maxlen",
    "snapshot_every_records",
    "cluster_lease_ms",
    "tokens",
];

/// Every top-level key of a config file: the engine's ([`engine::KEYS`]) and
/// the server's ([`KEYS`]), in the order the unknown-key message lists them.
/// A test checks that it is exactly both lists.
const FILE_KEYS: [&str; 19] = [
    "hold_ttl_ms",
    "idempotency_window_ms",
    "max_holds_per_account",
    "max_buckets_per_account",
    "history_per_account",
    "max_ids_per_account",
    "max_clients",
    "redis_max_pending",
    "redis_stream_maxlen",
    "snapshot_every_records",
    "max_accounts",
    "cluster_lease_ms",
    "max_members_per_account",
    "max_alerts_per_account",
    "max_events",
    "event_retention_ms",
    "skus",
    "plans",
    "tokens",
];

/// A parsed, validated config file.
#[derive(Clone, Debug, Default)]
pub struct ServerConfig {
    /// What the engine runs on: its limits, the rate card, the plans.
    pub engine: engine::Config,
    pub settings: ServerSettings,
    pub tokens: Vec<Token>,
}

impl ServerConfig {
    /// Parses and validates a whole config file. `file` only names the source in errors.
    pub fn parse(text: &str, file: &str) -> Result<ServerConfig, ConfigError> {
        let top = read::parse_table(text).map_err(|bad| bad.in_file(file))?;
        check_keys(&top, "", &FILE_KEYS).map_err(|bad| bad.in_file(file))?;
        let engine = engine::Config::from_table(&top, file)?;
        let read_own = || {
            let settings = settings(&top)?;
            let tokens = match top.get("tokens") {
                Some(v) => tokens::tokens(v)?,
                None => Vec::new(),
            };
            Ok((settings, tokens))
        };
        let (settings, tokens) = read_own().map_err(|bad: read::Bad| bad.in_file(file))?;
        Ok(ServerConfig {
            engine,
            settings,
            tokens,
        })
    }

    /// Reads and parses a config file; errors name the file as given.
    pub fn load(path: &Path) -> Result<ServerConfig, ConfigError> {
        let file = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
            file: file.clone(),
            key: String::new(),
            message: format!("cannot read the file: {e}"),
        })?;
        ServerConfig::parse(&text, &file)
    }

    /// The built-in example config ([`BUILTIN_TOML`]): what `creditd` runs
    /// with when no `--config` is given. It is validated by the tests, so this
    /// cannot fail in a released binary.
    pub fn builtin() -> ServerConfig {
        match ServerConfig::parse(BUILTIN_TOML, "builtin.toml") {
            Ok(c) => c,
            Err(e) => unreachable!("the built-in config is invalid: {e}"),
        }
    }
}

fn settings(top: &Table) -> R<ServerSettings> {
    let mut s = ServerSettings::default();
    for name in KEYS {
        let Some(v) = top.get(name) else { continue };
        let key = name;
        match name {
            "max_clients" => s.max_clients = int_in(v, key, 1, u64::from(u32::MAX), "")? as u32,
            "redis_max_pending" => s.redis_max_pending = int_in(v, key, 1, i64::MAX as u64, "")?,
            "redis_stream_maxlen" => {
                s.redis_stream_maxlen = int_in(v, key, 1, i64::MAX as u64, "")?
            }
            "snapshot_every_records" => {
                s.snapshot_every_records = int_in(v, key, 1, i64::MAX as u64, "")?
            }
            "cluster_lease_ms" => s.cluster_lease_ms = int_in(v, key, 100, 600_000, "")?,
            "tokens" => {}
            _ => unreachable!("every key is handled"),
        }
    }
    Ok(s)
}
