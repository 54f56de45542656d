//! The state every connection shares: the engine, the journal, auth,
//! metrics and health.

use crate::auth::Tokens;
use crate::cli::Options;
use crate::cluster::Cluster;
use crate::config::{Role, ServerConfig, ServerSettings};
use crate::error::{ErrorCode, Failure};
use crate::metrics::Metrics;
use creditd_engine::clock::TestClock;
use creditd_engine::{Engine, EngineError, Mutation, Outcome};
use creditd_journal::Journal;
use parking_lot::RwLock;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;
use tokio::sync::watch;

/// Readiness as `/readyz` reports it.
#[derive(Default)]
pub struct Health {
    pub ready: AtomicBool,
    pub shutting_down: AtomicBool,
}

/// Status of the Redis write-behind, as the rest of the server sees it.
pub trait WriteBehindStatus: Send + Sync {
    fn connected(&self) -> bool;
    /// Changes accepted but not yet written to Redis.
    fn pending(&self) -> u64;
    /// Age of the oldest unwritten change, in ms.
    fn lag_ms(&self) -> u64;
    /// Why mutations must be refused now (`-BUSY`, and `/readyz` 503), if
    /// they must: the lease on Redis is not held, or the backlog is over its bound.
    fn refusal(&self) -> Option<String>;
    /// Appends its `INFO persistence` lines (`key:value\r\n`).
    fn write_info(&self, out: &mut String);
    /// Sets its counters and gauges (before `/metrics` renders).
    fn export_metrics(&self);
}

pub struct App {
    pub engine: Arc<Engine>,
    pub opts: Options,
    pub journal: Arc<Journal>,
    /// The highest journal seq known durable (replies wait on it).
    pub durable: watch::Sender<u64>,
    pub test_clock: Option<Arc<TestClock>>,
    pub tokens: RwLock<Tokens>,
    /// The server's settings in force (a reload replaces them; the engine's
    /// are in `engine.catalog()`).
    pub settings: Arc<RwLock<ServerSettings>>,
    pub metrics: Metrics,
    pub health: Health,
    pub started: Instant,
    pub next_client_id: AtomicU64,
    pub redis: RwLock<Option<Arc<dyn WriteBehindStatus>>>,
    /// Cluster mode (`--cluster`): slot ownership, routing and the writer
    /// whose Redis watermark replies wait for.
    pub cluster: Option<Arc<Cluster>>,
}

impl App {
    /// Applies a mutation unless persistence refuses writes now (`-BUSY`).
    pub fn execute(&self, account: &[u8], m: &Mutation) -> Result<Outcome, EngineError> {
        if let Some(problem) = self.journal.write_problem() {
            return Err(EngineError::busy(format!("{problem}; retry later")));
        }
        if let Some(redis) = self.redis.read().as_ref() {
            if let Some(reason) = redis.refusal() {
                return Err(EngineError::busy(format!("{reason}, retry later")));
            }
        }
        self.engine.execute(account, m)
    }

    pub fn auth_required(&self) -> bool {
        !self.tokens.read().is_empty()
    }

    /// Finds the role of a token (see [`Tokens::authenticate`] for the timing).
    pub fn authenticate(&self, user: Option<&[u8]>, token: &[u8]) -> Result<Role, Failure> {
        self.tokens.read().authenticate(user, token).ok_or_else(|| {
            Failure::new(
                ErrorCode::WrongPass,
                "invalid username-password pair or user is disabled.",
            )
        })
    }

    /// The role a new connection starts with: admin when no tokens are configured.
    pub fn initial_role(&self) -> Option<Role> {
        if self.auth_required() {
            None
        } else {
            Some(Role::Admin)
        }
    }

    /// Rereads the config file (or the built-in one) and puts it in force, with
    /// the checks made at start-up; on any error the old config stays. CONFIG
    /// RELOAD and SIGHUP both come here; `trigger` names which one in the log.
    pub fn reload_config(&self, trigger: &str) -> Result<(), String> {
        let checked = load_config(&self.opts).and_then(|config| {
            if open_to_anyone(&self.opts, &config) {
                return Err(format!(
                    "refusing to reload: the new config has no tokens and creditd listens on {}, beyond loopback, where anyone who can reach it could grant and spend credits. Add [[tokens]] or start with --insecure; the old config stays",
                    self.opts.listen
                ));
            }
            Ok(config)
        });
        let config = match checked {
            Ok(config) => config,
            Err(e) => {
                tracing::error!(trigger, "config not reloaded, the old config stays: {e}");
                return Err(e);
            }
        };
        tracing::info!(
            trigger,
            skus = config.engine.skus.len(),
            plans = config.engine.plans.len(),
            tokens = config.tokens.len(),
            max_clients = config.settings.max_clients,
            "config reloaded"
        );
        *self.settings.write() = config.settings;
        *self.tokens.write() = Tokens::new(&config.tokens);
        self.engine.set_config(config.engine);
        Ok(())
    }

    pub fn redis_status(&self) -> (bool, u64, u64) {
        match self.redis.read().as_ref() {
            Some(r) => (r.connected(), r.pending(), r.lag_ms()),
            None => (false, 0, 0),
        }
    }

    /// Why the server is not ready, if it isn't.
    pub fn not_ready_reason(&self) -> Option<String> {
        if self.health.shutting_down.load(Ordering::Acquire) {
            return Some("shutting down".into());
        }
        if !self.health.ready.load(Ordering::Acquire) {
            return Some("recovering".into());
        }
        if let Some(problem) = self.journal.write_problem() {
            return Some(problem);
        }
        if !self.journal.has_capacity() {
            return Some("the journal is behind its bound".into());
        }
        if let Some(cluster) = &self.cluster {
            return cluster.not_ready_reason();
        }
        self.redis.read().as_ref().and_then(|redis| redis.refusal())
    }
}

/// True when `config` would leave the RESP listener open to anyone: no tokens
/// (every connection is admin) on an address beyond loopback, without
/// `--insecure`. Start-up and every reload refuse such a config.
pub fn open_to_anyone(opts: &Options, config: &ServerConfig) -> bool {
    config.tokens.is_empty() && !opts.listen.ip().is_loopback() && !opts.insecure
}

/// Reads and validates the config named by the options (or the built-in one).
pub fn load_config(opts: &Options) -> Result<ServerConfig, String> {
    match &opts.config {
        Some(path) => ServerConfig::load(path).map_err(|e| e.to_string()),
        None => Ok(ServerConfig::builtin()),
    }
}

/// Logs what a config holds (at start and after a reload), and warns about a
/// config that serves nothing priced: a file with only settings in it is
/// almost always a mistake.
pub fn log_loaded(opts: &Options, config: &ServerConfig, what: &str) {
    let source = opts.config.as_ref().map_or_else(
        || "built-in example".to_string(),
        |p| p.display().to_string(),
    );
    tracing::info!(
        config = %source,
        skus = config.engine.skus.len(),
        plans = config.engine.plans.len(),
        tokens = config.tokens.len(),
        "{what}"
    );
    if config.engine.skus.is_empty() {
        tracing::warn!(
            config = %source,
            "the config has no rate card ([skus.*]): QUOTE and every SKU-priced RESERVE or DEBIT answer NOTFOUND"
        );
    }
}
