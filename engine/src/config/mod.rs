//! The engine's part of the config file (PROTOCOL.md §7): its settings
//! (per-account limits and the bound on accounts), the rate card (`skus`) and
//! the plans. The server reads the file, and the rest of it (its own settings
//! and the access tokens): the engine gets text, or the table the server parsed.
//!
//! The file is read into a plain TOML table and walked by hand rather than
//! deserialized into structs, so every mistake is reported with the file, the
//! full key path and what was expected, e.g.
//! `creditd.toml: skus."video/x".unit: "minute" is not a unit (expected image, second or use)`.
//! The config prices real money: a misspelt key must stop the server at start
//! (or fail `CONFIG RELOAD`, leaving the old config in force), never be ignored.

use std::collections::HashMap;
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use toml::Table;

use crate::calendar::Period;
use crate::pricing::SkuPrice;

mod catalog;
pub mod read;
#[cfg(test)]
mod tests;

pub use read::ConfigError;
use read::{check_keys, int_in, R};

/// The example config, the one copy of it: what `creditd` runs with when no
/// `--config` is given, what the container image ships and the docs show.
/// [`Config::builtin`] is its engine part, for tests and benchmarks.
pub const BUILTIN_TOML: &str = include_str!("../../../docs/examples/creditd.toml");

/// Longest sku, plan, feature or user name, in bytes: the protocol's id limit.
pub const MAX_NAME_LEN: usize = 128;

/// What a plan grants and allows.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PlanTerms {
    pub period: Period,
    /// Granted each cycle for each seat, as one `subscription` bucket for the
    /// whole workspace (seats pool their credits).
    pub credits_per_seat: u64,
    /// The features this plan's accounts may spend on; `None` = every feature.
    pub features: Option<Vec<String>>,
    /// Credits of one recurring add-on unit per cycle; `None` = ADDON refused.
    pub addon_unit_credits: Option<u64>,
    /// On an upgrade to this plan, whether the old subscription credits move to
    /// a `rollover` bucket for the first new cycle instead of expiring.
    pub upgrade_rollover: bool,
}

impl PlanTerms {
    /// Whether this plan entitles its accounts to skus of `feature`.
    pub fn includes(&self, feature: &str) -> bool {
        match &self.features {
            None => true,
            Some(list) => list.iter().any(|f| f == feature),
        }
    }

    /// `addon_unit_credits x units`: `None` if the plan has no add-ons or the
    /// product is above `MAX_AMOUNT`.
    pub fn addon_allowance(&self, units: u64) -> Option<u64> {
        self.addon_unit_credits?
            .checked_mul(units)
            .filter(|&a| a <= crate::MAX_AMOUNT)
    }
}

/// The engine's top-level numeric settings. Each bounds a resource so that
/// one busy or hostile tenant cannot exhaust memory.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Settings {
    /// Accounts the process keeps; a command that would create one more is
    /// refused (memory is bounded per process).
    pub max_accounts: u64,
    /// Default hold TTL when RESERVE gives none; 1..=86_400_000.
    pub hold_ttl_ms: u64,
    /// How long idempotency ids are remembered after the operation; >= 1.
    pub idempotency_window_ms: u64,
    /// Live holds per account.
    pub max_holds_per_account: u32,
    /// Live buckets per account.
    pub max_buckets_per_account: u32,
    /// HISTORY entries kept per account; >= 100 so that the default
    /// `HISTORY COUNT` is always satisfiable.
    pub history_per_account: u32,
    /// Idempotency records kept per account.
    pub max_ids_per_account: u32,
    /// Members (with a cap, usage or holds) per account.
    pub max_members_per_account: u32,
    /// Low-balance thresholds per account; 1..=8.
    pub max_alerts_per_account: u32,
    /// Events kept in memory (EVENTS); the oldest go first past it.
    pub max_events: u64,
    /// How long events are kept (EVENTS), within `max_events`.
    pub event_retention_ms: u64,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            max_accounts: 10_000_000,
            hold_ttl_ms: 900_000,
            idempotency_window_ms: 86_400_000,
            max_holds_per_account: 10_000,
            max_buckets_per_account: 1_000,
            history_per_account: 1_000,
            max_ids_per_account: 1_000_000,
            max_members_per_account: 10_000,
            max_alerts_per_account: crate::account::MAX_ALERTS,
            max_events: 1_000_000,
            event_retention_ms: 7 * 86_400_000,
        }
    }
}

/// The engine's part of a parsed, validated config. Skus and plans are behind
/// `Arc` so that holds and accounts keep the terms they were made under across
/// `CONFIG RELOAD`.
#[derive(Clone, Debug, Default)]
pub struct Config {
    pub settings: Settings,
    pub skus: HashMap<String, Arc<SkuPrice>>,
    pub plans: HashMap<String, Arc<PlanTerms>>,
}

/// Every top-level key the engine reads: its settings (checked in this
/// order), `skus` and `plans`. A whole config file has the server's keys besides.
pub const KEYS: [&str; 13] = [
    "hold_ttl_ms",
    "idempotency_window_ms",
    "max_holds_per_account",
    "max_buckets_per_account",
    "history_per_account",
    "max_ids_per_account",
    "max_accounts",
    "max_members_per_account",
    "max_alerts_per_account",
    "max_events",
    "event_retention_ms",
    "skus",
    "plans",
];

impl Config {
    /// Parses and validates a config of the engine's keys alone ([`KEYS`]):
    /// any other top-level key is refused, the server's too (the server
    /// parses whole files). `file` only names the source in errors.
    pub fn parse(text: &str, file: &str) -> Result<Config, ConfigError> {
        let parse = || {
            let top = read::parse_table(text)?;
            check_keys(&top, "", &KEYS)?;
            read_table(&top)
        };
        parse().map_err(|bad| bad.in_file(file))
    }

    /// Reads and validates the engine's keys of a parsed config file. Other
    /// top-level keys are left alone: the caller owns them and must refuse
    /// the ones nobody knows (the contract: an unknown key is an error).
    pub fn from_table(top: &Table, file: &str) -> Result<Config, ConfigError> {
        read_table(top).map_err(|bad| bad.in_file(file))
    }

    /// The engine's part of the example config ([`BUILTIN_TOML`]). The
    /// tests validate the whole file, so this cannot fail in a released binary.
    pub fn builtin() -> Config {
        let parsed = read::parse_table(BUILTIN_TOML).map_err(|bad| bad.in_file("builtin.toml"));
        match parsed.and_then(|top| Config::from_table(&top, "builtin.toml")) {
            Ok(c) => c,
            Err(e) => unreachable!("the built-in config is invalid: {e}"),
        }
    }

    pub fn sku(&self, name: &str) -> Option<&Arc<SkuPrice>> {
        self.skus.get(name)
    }

    pub fn plan(&self, name: &str) -> Option<&Arc<PlanTerms>> {
        self.plans.get(name)
    }
}

fn read_table(top: &Table) -> R<Config> {
    let config = Config {
        settings: settings(top)?,
        skus: catalog::skus(top)?,
        plans: catalog::plans(top)?,
    };
    catalog::check_plan_features(&config)?;
    Ok(config)
}

fn settings(top: &Table) -> R<Settings> {
    let mut s = Settings::default();
    for name in KEYS {
        let Some(v) = top.get(name) else { continue };
        let key = name;
        let u32max = u64::from(u32::MAX);
        match name {
            "max_accounts" => s.max_accounts = int_in(v, key, 1, i64::MAX as u64, "")?,
            "hold_ttl_ms" => s.hold_ttl_ms = int_in(v, key, 1, 86_400_000, "")?,
            "idempotency_window_ms" => {
                s.idempotency_window_ms = int_in(v, key, 1, i64::MAX as u64, "")?
            }
            "max_holds_per_account" => {
                s.max_holds_per_account = int_in(v, key, 1, u32max, "")? as u32
            }
            "max_buckets_per_account" => {
                s.max_buckets_per_account = int_in(v, key, 1, u32max, "")? as u32
            }
            "history_per_account" => {
                s.history_per_account = int_in(v, key, 100, u32max, "")? as u32
            }
            "max_ids_per_account" => s.max_ids_per_account = int_in(v, key, 1, u32max, "")? as u32,
            "max_members_per_account" => {
                s.max_members_per_account = int_in(v, key, 1, u32max, "")? as u32
            }
            "max_alerts_per_account" => {
                let max = u64::from(crate::account::MAX_ALERTS);
                s.max_alerts_per_account = int_in(v, key, 1, max, "")? as u32
            }
            "max_events" => s.max_events = int_in(v, key, 1, i64::MAX as u64, "")?,
            "event_retention_ms" => s.event_retention_ms = int_in(v, key, 1, i64::MAX as u64, "")?,
            "skus" | "plans" => {}
            _ => unreachable!("every key is handled"),
        }
    }
    Ok(s)
}
