//! The configuration file (PROTOCOL.md §7): settings, the rate card (`skus`),
//! the plans and the access tokens.
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
use toml::{Table, Value};

use crate::calendar::Period;
use crate::pricing::{BatchTier, SkuPrice, Unit};

/// The built-in example config: what `creditd` runs with when no `--config` is
/// given. Kept identical to `docs/examples/creditd.toml` (a test checks it).
pub const BUILTIN_TOML: &str = include_str!("builtin.toml");

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

    /// `credits_per_seat x seats`, or `None` above `MAX_AMOUNT`.
    pub fn allowance(&self, seats: u64) -> Option<u64> {
        self.credits_per_seat
            .checked_mul(seats)
            .filter(|&a| a <= crate::MAX_AMOUNT)
    }

    /// `addon_unit_credits x units`: `None` if the plan has no add-ons or the
    /// product is above `MAX_AMOUNT`.
    pub fn addon_allowance(&self, units: u64) -> Option<u64> {
        self.addon_unit_credits?
            .checked_mul(units)
            .filter(|&a| a <= crate::MAX_AMOUNT)
    }
}

/// What a token may do (PROTOCOL.md §6).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Role {
    /// Everything.
    Admin,
    /// The job path and reads: what an API gateway in front of the models needs.
    Gateway,
    /// PING and INFO: for monitoring.
    Probe,
}

impl Role {
    /// The config-file spelling (`admin`, `gateway`, `probe`).
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Admin => "admin",
            Role::Gateway => "gateway",
            Role::Probe => "probe",
        }
    }

    /// Parses the config-file spelling, exactly.
    pub fn parse(s: &str) -> Option<Role> {
        match s {
            "admin" => Some(Role::Admin),
            "gateway" => Some(Role::Gateway),
            "probe" => Some(Role::Probe),
            _ => None,
        }
    }
}

/// One `[[tokens]]` entry.
///
/// `Debug` does not print the secret, so a config can be logged.
#[derive(Clone)]
pub struct Token {
    pub token: String,
    pub role: Role,
    /// When set, `AUTH user token` must name this user; when unset any user
    /// name (and the one-argument `AUTH token`) is accepted.
    pub user: Option<String>,
}

impl std::fmt::Debug for Token {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Token")
            .field("token", &"<redacted>")
            .field("role", &self.role)
            .field("user", &self.user)
            .finish()
    }
}

/// Top-level numeric settings. Each bounds a resource so that one busy or
/// hostile tenant cannot exhaust memory, disk or Redis.
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
            max_clients: 10_000,
            redis_max_pending: 1_000_000,
            redis_stream_maxlen: 1_000_000,
            snapshot_every_records: 1_000_000,
            cluster_lease_ms: 3_000,
        }
    }
}

/// A parsed, validated config. Skus and plans are behind `Arc` so that holds
/// and accounts keep the terms they were made under across `CONFIG RELOAD`.
#[derive(Clone, Debug, Default)]
pub struct Config {
    pub settings: Settings,
    pub skus: HashMap<String, Arc<SkuPrice>>,
    pub plans: HashMap<String, Arc<PlanTerms>>,
    pub tokens: Vec<Token>,
}

/// A config mistake: which file, which key (`skus."video/x".unit`; empty for
/// a TOML syntax error, whose message gives line and column) and what is wrong.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub file: String,
    pub key: String,
    pub message: String,
}

impl std::fmt::Display for ConfigError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.key.is_empty() {
            write!(f, "{}: {}", self.file, self.message)
        } else {
            write!(f, "{}: {}: {}", self.file, self.key, self.message)
        }
    }
}

impl std::error::Error for ConfigError {}

impl Config {
    /// Parses and validates a config. `file` only names the source in errors.
    pub fn parse(text: &str, file: &str) -> Result<Config, ConfigError> {
        let fail = |Bad { key, message }| ConfigError {
            file: file.to_string(),
            key,
            message,
        };
        let table: Table = text.parse().map_err(|e| fail(syntax_error(text, &e)))?;
        build(&table).map_err(fail)
    }

    /// Reads and parses a config file; errors name the file as given.
    pub fn load(path: &std::path::Path) -> Result<Config, ConfigError> {
        let file = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
            file: file.clone(),
            key: String::new(),
            message: format!("cannot read the file: {e}"),
        })?;
        Config::parse(&text, &file)
    }

    /// The built-in example config ([`BUILTIN_TOML`]). It is validated by the
    /// tests, so this cannot fail in a released binary.
    pub fn builtin() -> Config {
        match Config::parse(BUILTIN_TOML, "builtin.toml") {
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

// ---------------------------------------------------------------------------
// Validation

/// An error before the file name is attached.
struct Bad {
    key: String,
    message: String,
}

type R<T> = Result<T, Bad>;

fn bad<T>(key: &str, message: impl Into<String>) -> R<T> {
    Err(Bad {
        key: key.to_string(),
        message: message.into(),
    })
}

const SETTINGS_KEYS: [&str; 12] = [
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
];
const TOP_KEYS: [&str; 15] = [
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
    "skus",
    "plans",
    "tokens",
];
const SKU_KEYS: [&str; 4] = ["unit", "credits", "feature", "batch"];
const TIER_KEYS: [&str; 2] = ["min_qty", "discount_pct"];
const PLAN_KEYS: [&str; 5] = [
    "period",
    "credits_per_seat",
    "features",
    "addon_unit_credits",
    "upgrade_rollover",
];
const TOKEN_KEYS: [&str; 3] = ["token", "role", "user"];

fn build(top: &Table) -> R<Config> {
    check_keys(top, "", &TOP_KEYS)?;
    let mut config = Config {
        settings: settings(top)?,
        ..Config::default()
    };
    if let Some(v) = top.get("skus") {
        for (name, v) in table(v, "skus")? {
            let key = join("skus", name);
            check_name(name, &key, "sku")?;
            config.skus.insert(name.clone(), Arc::new(sku(v, &key)?));
        }
    }
    if let Some(v) = top.get("plans") {
        for (name, v) in table(v, "plans")? {
            let key = join("plans", name);
            check_name(name, &key, "plan")?;
            if name.eq_ignore_ascii_case("none") {
                return bad(
                    &key,
                    "no plan may be named none: `PLAN account NONE` cancels an account's plan",
                );
            }
            config.plans.insert(name.clone(), Arc::new(plan(v, &key)?));
        }
    }
    if let Some(v) = top.get("tokens") {
        config.tokens = tokens(v)?;
    }
    check_plan_features(&config)?;
    Ok(config)
}

/// Every feature a plan lists must be a default feature (`image`, `video`,
/// `tool`) or one some sku has: a typo such as `features = ["imgae"]` would
/// otherwise refuse every image to the plan's accounts.
fn check_plan_features(config: &Config) -> R<()> {
    let defaults = [Unit::Image, Unit::Second, Unit::Use].map(Unit::default_feature);
    let known: std::collections::BTreeSet<&str> = config
        .skus
        .values()
        .map(|s| s.feature.as_str())
        .chain(defaults)
        .collect();
    let mut plans: Vec<_> = config.plans.iter().collect();
    plans.sort_by(|a, b| a.0.cmp(b.0));
    for (name, plan) in plans {
        for (i, feature) in plan.features.iter().flatten().enumerate() {
            if known.contains(feature.as_str()) {
                continue;
            }
            let hint = known
                .iter()
                .map(|k| (edit_distance(feature, k), *k))
                .filter(|(d, _)| *d <= 2)
                .min()
                .map(|(_, k)| format!(" (did you mean {k}?)"))
                .unwrap_or_default();
            let listed = known.iter().copied().collect::<Vec<_>>().join(", ");
            return bad(
                &format!("{}[{i}]", join(&join("plans", name), "features")),
                format!(
                    "no sku has the feature {}{hint}; known features: {listed}",
                    quote(feature),
                ),
            );
        }
    }
    Ok(())
}

fn settings(top: &Table) -> R<Settings> {
    let mut s = Settings::default();
    for name in SETTINGS_KEYS {
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
            "max_clients" => s.max_clients = int_in(v, key, 1, u32max, "")? as u32,
            "redis_max_pending" => s.redis_max_pending = int_in(v, key, 1, i64::MAX as u64, "")?,
            "redis_stream_maxlen" => {
                s.redis_stream_maxlen = int_in(v, key, 1, i64::MAX as u64, "")?
            }
            "snapshot_every_records" => {
                s.snapshot_every_records = int_in(v, key, 1, i64::MAX as u64, "")?
            }
            "cluster_lease_ms" => s.cluster_lease_ms = int_in(v, key, 100, 600_000, "")?,
            _ => unreachable!("every settings key is handled"),
        }
    }
    Ok(s)
}

fn sku(v: &Value, key: &str) -> R<SkuPrice> {
    let t = table(v, key)?;
    check_keys(t, key, &SKU_KEYS)?;
    let unit_key = join(key, "unit");
    let unit = match t.get("unit") {
        None => return bad(&unit_key, "missing (expected image, second or use)"),
        Some(v) => {
            let s = string(v, &unit_key)?;
            Unit::parse(s).ok_or_else(|| Bad {
                key: unit_key.clone(),
                message: format!("{} is not a unit (expected image, second or use)", quote(s)),
            })?
        }
    };
    let credits_key = join(key, "credits");
    let credits = match t.get("credits") {
        None => return bad(&credits_key, "missing (credits per unit, 0 for a free sku)"),
        Some(v) => int_in(v, &credits_key, 0, crate::MAX_AMOUNT, "amount ")?,
    };
    let feature = match t.get("feature") {
        None => unit.default_feature().to_string(),
        Some(v) => {
            let fkey = join(key, "feature");
            let f = string(v, &fkey)?;
            check_name(f, &fkey, "feature")?;
            f.to_string()
        }
    };
    let batch = match t.get("batch") {
        None => Vec::new(),
        Some(v) => batch(v, &join(key, "batch"))?,
    };
    Ok(SkuPrice {
        unit,
        credits,
        feature,
        batch,
    })
}

fn batch(v: &Value, key: &str) -> R<Vec<BatchTier>> {
    let Value::Array(items) = v else {
        return bad(
            key,
            format!(
                "expected an array of {{ min_qty, discount_pct }} tables, found {}",
                describe(v)
            ),
        );
    };
    let mut tiers = Vec::with_capacity(items.len());
    for (i, item) in items.iter().enumerate() {
        let ikey = format!("{key}[{i}]");
        let t = table(item, &ikey)?;
        check_keys(t, &ikey, &TIER_KEYS)?;
        let qkey = join(&ikey, "min_qty");
        let min_qty = match t.get("min_qty") {
            None => return bad(&qkey, "missing"),
            Some(v) => int_in(v, &qkey, 1, i64::MAX as u64, "")?,
        };
        let dkey = join(&ikey, "discount_pct");
        let discount_pct = match t.get("discount_pct") {
            None => return bad(&dkey, "missing"),
            Some(v) => int_in(v, &dkey, 0, 100, "")? as u8,
        };
        tiers.push((
            i,
            BatchTier {
                min_qty,
                discount_pct,
            },
        ));
    }
    // Tiers may be written in any order; pricing needs them ascending.
    tiers.sort_by_key(|(_, t)| t.min_qty);
    for pair in tiers.windows(2) {
        let ((_, a), (j, b)) = (&pair[0], &pair[1]);
        if a.min_qty == b.min_qty {
            return bad(
                &join(&format!("{key}[{j}]"), "min_qty"),
                format!(
                    "min_qty {} appears twice; each tier needs its own min_qty",
                    b.min_qty
                ),
            );
        }
    }
    Ok(tiers.into_iter().map(|(_, t)| t).collect())
}

fn plan(v: &Value, key: &str) -> R<PlanTerms> {
    let t = table(v, key)?;
    check_keys(t, key, &PLAN_KEYS)?;
    // A plan without `period` is monthly, the common case in every rate card.
    let period = match t.get("period") {
        None => Period::Month,
        Some(v) => {
            let pkey = join(key, "period");
            let s = string(v, &pkey)?;
            Period::parse(s).ok_or_else(|| Bad {
                key: pkey.clone(),
                message: format!("{} is not a period (expected month or year)", quote(s)),
            })?
        }
    };
    let ckey = join(key, "credits_per_seat");
    let credits_per_seat = match t.get("credits_per_seat") {
        None => return bad(&ckey, "missing (credits granted per seat each cycle)"),
        Some(v) => int_in(v, &ckey, 0, crate::MAX_AMOUNT, "amount ")?,
    };
    let features = match t.get("features") {
        None => None,
        Some(v) => Some(features(v, &join(key, "features"))?),
    };
    let addon_unit_credits = match t.get("addon_unit_credits") {
        None => None,
        Some(v) => Some(int_in(
            v,
            &join(key, "addon_unit_credits"),
            0,
            crate::MAX_AMOUNT,
            "amount ",
        )?),
    };
    let upgrade_rollover = match t.get("upgrade_rollover") {
        None => false,
        Some(v) => boolean(v, &join(key, "upgrade_rollover"))?,
    };
    Ok(PlanTerms {
        period,
        credits_per_seat,
        features,
        addon_unit_credits,
        upgrade_rollover,
    })
}

fn features(v: &Value, key: &str) -> R<Vec<String>> {
    let Value::Array(items) = v else {
        return bad(
            key,
            format!("expected an array of feature names, found {}", describe(v)),
        );
    };
    if items.is_empty() {
        // `[]` would refuse every sku; more likely meant as "no restriction".
        return bad(
            key,
            "an empty list would refuse every sku; omit `features` to allow every feature",
        );
    }
    let mut out: Vec<String> = Vec::with_capacity(items.len());
    for (i, item) in items.iter().enumerate() {
        let ikey = format!("{key}[{i}]");
        let f = string(item, &ikey)?;
        check_name(f, &ikey, "feature")?;
        if out.iter().any(|o| o == f) {
            return bad(&ikey, format!("{} is listed twice", quote(f)));
        }
        out.push(f.to_string());
    }
    Ok(out)
}

fn tokens(v: &Value) -> R<Vec<Token>> {
    let Value::Array(items) = v else {
        return bad(
            "tokens",
            format!(
                "expected an array of tables ([[tokens]]), found {}",
                describe(v)
            ),
        );
    };
    let mut out: Vec<Token> = Vec::with_capacity(items.len());
    for (i, item) in items.iter().enumerate() {
        let key = format!("tokens[{i}]");
        let t = table(item, &key)?;
        check_keys(t, &key, &TOKEN_KEYS)?;
        let tkey = join(&key, "token");
        let token = match t.get("token") {
            None => return bad(&tkey, "missing"),
            // Never echo a secret into an error message or a log.
            Some(Value::String(s)) => s.clone(),
            Some(other) => return bad(&tkey, format!("expected a string, found {}", kind(other))),
        };
        if token.is_empty() {
            return bad(&tkey, "is empty; a token must be at least one byte");
        }
        if let Some(j) = out.iter().position(|o| o.token == token) {
            return bad(&tkey, format!("the same token as tokens[{j}]"));
        }
        let rkey = join(&key, "role");
        let role = match t.get("role") {
            None => return bad(&rkey, "missing (expected admin, gateway or probe)"),
            Some(v) => {
                let s = string(v, &rkey)?;
                Role::parse(s).ok_or_else(|| Bad {
                    key: rkey.clone(),
                    message: format!(
                        "{} is not a role (expected admin, gateway or probe)",
                        quote(s)
                    ),
                })?
            }
        };
        let user = match t.get("user") {
            None => None,
            Some(v) => {
                let ukey = join(&key, "user");
                let u = string(v, &ukey)?;
                check_name(u, &ukey, "user")?;
                Some(u.to_string())
            }
        };
        out.push(Token { token, role, user });
    }
    Ok(out)
}

// ---------------------------------------------------------------------------
// Helpers

/// Maps a TOML syntax error to "line L, column C: what" (1-based, columns in
/// characters), the form editors jump to.
fn syntax_error(text: &str, e: &toml::de::Error) -> Bad {
    let what = e
        .message()
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect::<Vec<_>>()
        .join("; ");
    let message = match e.span() {
        Some(span) => {
            let start = floor_char_boundary(text, span.start.min(text.len()));
            let before = &text[..start];
            let line = before.matches('\n').count() + 1;
            let line_start = before.rfind('\n').map_or(0, |p| p + 1);
            let column = before[line_start..].chars().count() + 1;
            format!("TOML syntax error at line {line}, column {column}: {what}")
        }
        None => format!("TOML syntax error: {what}"),
    };
    Bad {
        key: String::new(),
        message,
    }
}

fn floor_char_boundary(s: &str, mut i: usize) -> usize {
    while !s.is_char_boundary(i) {
        i -= 1;
    }
    i
}

/// A key path segment as TOML would write it: bare when it can be, else quoted.
fn segment(k: &str) -> String {
    let bare = !k.is_empty()
        && k.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
    if bare {
        k.to_string()
    } else {
        quote(k)
    }
}

/// A TOML basic string literal of `s`.
fn quote(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\t' => out.push_str("\\t"),
            '\r' => out.push_str("\\r"),
            c if c.is_control() => out.push_str(&format!("\\u{:04X}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

fn join(parent: &str, k: &str) -> String {
    if parent.is_empty() {
        segment(k)
    } else {
        format!("{parent}.{}", segment(k))
    }
}

fn kind(v: &Value) -> &'static str {
    match v {
        Value::String(_) => "a string",
        Value::Integer(_) => "an integer",
        Value::Float(_) => "a float",
        Value::Boolean(_) => "a boolean",
        Value::Datetime(_) => "a date-time",
        Value::Array(_) => "an array",
        Value::Table(_) => "a table",
    }
}

/// The kind of a value, with the value itself when it is short and scalar.
fn describe(v: &Value) -> String {
    match v {
        Value::String(s) if s.len() <= 40 => format!("the string {}", quote(s)),
        Value::Integer(i) => format!("the integer {i}"),
        Value::Float(f) => format!("the float {f}"),
        Value::Boolean(b) => format!("the boolean {b}"),
        other => kind(other).to_string(),
    }
}

fn table<'a>(v: &'a Value, key: &str) -> R<&'a Table> {
    match v {
        Value::Table(t) => Ok(t),
        other => bad(key, format!("expected a table, found {}", describe(other))),
    }
}

fn string<'a>(v: &'a Value, key: &str) -> R<&'a str> {
    match v {
        Value::String(s) => Ok(s),
        other => bad(key, format!("expected a string, found {}", describe(other))),
    }
}

fn boolean(v: &Value, key: &str) -> R<bool> {
    match v {
        Value::Boolean(b) => Ok(*b),
        other => bad(
            key,
            format!("expected true or false, found {}", describe(other)),
        ),
    }
}

/// An integer in `min..=max`. `noun` ("amount ") makes the bound readable.
fn int_in(v: &Value, key: &str, min: u64, max: u64, noun: &str) -> R<u64> {
    let i = match v {
        Value::Integer(i) => *i,
        other => {
            return bad(
                key,
                format!("expected an integer, found {}", describe(other)),
            )
        }
    };
    match u64::try_from(i) {
        Ok(n) if n > max => bad(key, format!("{n} is more than the maximum {noun}{max}")),
        Ok(n) if n < min => bad(key, format!("{n} is less than the minimum {min}")),
        Ok(n) => Ok(n),
        Err(_) => bad(key, format!("{i} is negative (expected {min} to {max})")),
    }
}

/// Sku, plan, feature and user names: 1 to 128 bytes (the protocol's id
/// limit), without whitespace or control characters, which an inline command
/// (`QUOTE image/x 4` typed into `nc`) could not carry.
fn check_name(name: &str, key: &str, what: &str) -> R<()> {
    if name.is_empty() {
        return bad(key, format!("a {what} name cannot be empty"));
    }
    if name.len() > MAX_NAME_LEN {
        return bad(
            key,
            format!(
                "the {what} name is {} bytes long; at most {MAX_NAME_LEN}",
                name.len()
            ),
        );
    }
    if name.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return bad(
            key,
            format!(
                "the {what} name {} contains whitespace or a control character",
                quote(name)
            ),
        );
    }
    Ok(())
}

/// Rejects keys not in `allowed`, suggesting the closest one: a typo such as
/// `credit = 80` must not silently leave a sku without its price.
fn check_keys(t: &Table, path: &str, allowed: &[&str]) -> R<()> {
    for k in t.keys() {
        if allowed.contains(&k.as_str()) {
            continue;
        }
        let hint = allowed
            .iter()
            .map(|a| (edit_distance(k, a), *a))
            .filter(|(d, a)| *d <= 2 || (k.len() >= 4 && a.starts_with(k.as_str())))
            .min()
            .map(|(_, a)| format!(" (did you mean {a}?)"))
            .unwrap_or_default();
        return bad(
            &join(path, k),
            format!("unknown key{hint}; expected one of: {}", allowed.join(", ")),
        );
    }
    Ok(())
}

fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = vec![i + 1; b.len() + 1];
        for (j, cb) in b.iter().enumerate() {
            let sub = prev[j] + usize::from(ca != *cb);
            cur[j + 1] = sub.min(prev[j + 1] + 1).min(cur[j] + 1);
        }
        prev = cur;
    }
    prev[b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(text: &str) -> ConfigError {
        match Config::parse(text, "creditd.toml") {
            Ok(_) => panic!("accepted:\n{text}"),
            Err(e) => e,
        }
    }

    fn err_str(text: &str) -> String {
        err(text).to_string()
    }

    /// The example of PROTOCOL.md §7, verbatim.
    const PROTOCOL_EXAMPLE: &str = r#"hold_ttl_ms = 900000
idempotency_window_ms = 86400000

[skus."image/flux-2-pro"]
unit = "image"            # image | second | use
credits = 80              # per unit
feature = "image"         # optional; default image for image, video for second, tool for use
batch = [ { min_qty = 4, discount_pct = 10 } ]   # optional; highest min_qty <= qty applies

[skus."video/kling-2.6-pro/1080/audio"]
unit = "second"
credits = 250
feature = "video"

[plans.pro]
period = "month"          # month | year
credits_per_seat = 500
features = ["image", "video", "tool"]   # optional; omitted = every feature
addon_unit_credits = 60   # optional; ADDON refused without it
upgrade_rollover = false  # optional

[[tokens]]
token = "s3cret"
role = "gateway"
"#;

    #[test]
    fn protocol_example_parses() {
        let c = Config::parse(PROTOCOL_EXAMPLE, "creditd.toml").unwrap();
        assert_eq!(c.settings, Settings::default());
        let flux = c.sku("image/flux-2-pro").unwrap();
        assert_eq!(flux.unit, Unit::Image);
        assert_eq!(flux.credits, 80);
        assert_eq!(flux.cost(4), Ok(288));
        let kling = c.sku("video/kling-2.6-pro/1080/audio").unwrap();
        assert_eq!(
            (kling.unit, kling.credits, kling.feature.as_str()),
            (Unit::Second, 250, "video")
        );
        let pro = c.plan("pro").unwrap();
        assert_eq!(
            **pro,
            PlanTerms {
                period: Period::Month,
                credits_per_seat: 500,
                features: Some(vec!["image".into(), "video".into(), "tool".into()]),
                addon_unit_credits: Some(60),
                upgrade_rollover: false,
            }
        );
        assert_eq!(c.tokens.len(), 1);
        assert_eq!(c.tokens[0].token, "s3cret");
        assert_eq!(c.tokens[0].role, Role::Gateway);
        assert_eq!(c.tokens[0].user, None);
        assert!(!format!("{:?}", c.tokens[0]).contains("s3cret"));
    }

    #[test]
    fn builtin_parses_and_has_the_catalogue() {
        let c = Config::builtin();
        assert!(
            c.tokens.is_empty(),
            "the builtin runs on loopback without auth"
        );
        assert_eq!(c.settings, Settings::default());
        let price = |n: &str| {
            let s = c.sku(n).unwrap_or_else(|| panic!("missing sku {n}"));
            (s.unit, s.credits, s.feature.clone())
        };
        let img = |c: u64| (Unit::Image, c, "image".to_string());
        let vid = |c: u64| (Unit::Second, c, "video".to_string());
        let tool = |c: u64| (Unit::Use, c, "tool".to_string());
        assert_eq!(price("image/flux-2-pro"), img(80));
        assert_eq!(price("image/nano-banana-pro/4k"), img(700));
        assert_eq!(price("image/z-image-turbo/1k"), img(10));
        assert_eq!(price("image/basic"), img(0));
        assert_eq!(price("video/veo-3.1/720"), vid(300));
        assert_eq!(price("video/veo-3.1/720/audio"), vid(500));
        assert_eq!(price("video/kling-2.6-pro/1080/audio"), vid(250));
        assert_eq!(price("video/sora-2-pro/720"), vid(650));
        assert_eq!(price("video/sora-2-pro/1080"), vid(950));
        assert_eq!(price("tool/summarizer"), tool(3));
        assert_eq!(price("tool/topic-prompt"), tool(1));
        assert_eq!(c.sku("image/flux-2-pro").unwrap().cost(4), Ok(288));
        assert!(c.skus.values().any(|s| s.feature == "voiceover"));
        assert!(c.skus.values().any(|s| s.batch.len() >= 2));

        let plan = |n: &str| c.plan(n).unwrap_or_else(|| panic!("missing plan {n}"));
        let free = plan("free");
        assert_eq!((free.period, free.credits_per_seat), (Period::Month, 60));
        assert!(free.includes("image") && free.includes("tool") && !free.includes("video"));
        assert_eq!(plan("pro").credits_per_seat, 500);
        assert_eq!(plan("pro").addon_unit_credits, Some(60));
        assert!(plan("pro").includes("voiceover"));
        assert_eq!(plan("team").credits_per_seat, 150);
        assert_eq!(plan("team").addon_unit_credits, Some(200));
        assert_eq!(plan("business").credits_per_seat, 1000);
        assert_eq!(
            (
                plan("pro-annual").period,
                plan("pro-annual").credits_per_seat
            ),
            (Period::Year, 6000)
        );
        let vo = c
            .plans
            .values()
            .find(|p| p.features.as_deref() == Some(&["voiceover".to_string()][..]));
        assert!(vo.is_some(), "a voiceover-only plan");
        assert!(c.plans.values().any(|p| p.upgrade_rollover));
        for (name, s) in &c.skus {
            assert!(
                s.batch.windows(2).all(|w| w[0].min_qty < w[1].min_qty),
                "{name}"
            );
        }
    }

    #[test]
    fn builtin_is_the_documented_example() {
        assert_eq!(
            BUILTIN_TOML,
            include_str!("../../docs/examples/creditd.toml")
        );
    }

    #[test]
    fn empty_file_is_defaults() {
        let c = Config::parse("", "x.toml").unwrap();
        assert_eq!(c.settings, Settings::default());
        assert!(c.skus.is_empty() && c.plans.is_empty() && c.tokens.is_empty());
    }

    #[test]
    fn settings_are_read_and_bounded() {
        let c = Config::parse(
            "hold_ttl_ms = 5000\nhistory_per_account = 100\nredis_max_pending = 7\nmax_clients = 3",
            "x.toml",
        )
        .unwrap();
        assert_eq!(c.settings.hold_ttl_ms, 5000);
        assert_eq!(c.settings.history_per_account, 100);
        assert_eq!(c.settings.redis_max_pending, 7);
        assert_eq!(c.settings.max_clients, 3);
        assert_eq!(c.settings.idempotency_window_ms, 86_400_000);
        assert_eq!(
            err_str("hold_ttl_ms = 0"),
            "creditd.toml: hold_ttl_ms: 0 is less than the minimum 1"
        );
        assert_eq!(
            err_str("hold_ttl_ms = 86400001"),
            "creditd.toml: hold_ttl_ms: 86400001 is more than the maximum 86400000"
        );
        assert_eq!(
            err("idempotency_window_ms = 0").key,
            "idempotency_window_ms"
        );
        assert_eq!(err("history_per_account = 99").key, "history_per_account");
        assert_eq!(err("max_clients = 4294967296").key, "max_clients");
        assert_eq!(
            err_str("hold_ttl_ms = \"900000\""),
            "creditd.toml: hold_ttl_ms: expected an integer, found the string \"900000\""
        );
        assert_eq!(
            err_str("hold_ttl_ms = -5"),
            "creditd.toml: hold_ttl_ms: -5 is negative (expected 1 to 86400000)"
        );
    }

    #[test]
    fn unknown_keys_are_rejected_everywhere() {
        assert_eq!(
            err_str("hold_ttl = 5"),
            "creditd.toml: hold_ttl: unknown key (did you mean hold_ttl_ms?); expected one of: \
             hold_ttl_ms, idempotency_window_ms, max_holds_per_account, max_buckets_per_account, \
             history_per_account, max_ids_per_account, max_clients, redis_max_pending, \
             redis_stream_maxlen, snapshot_every_records, max_accounts, cluster_lease_ms, \
             skus, plans, tokens"
        );
        let e = err("[skus.\"image/x\"]\nunit = \"image\"\ncredit = 80");
        assert_eq!(e.key, "skus.\"image/x\".credit");
        assert!(
            e.message.starts_with("unknown key (did you mean credits?)"),
            "{e}"
        );
        let e =
            err("[skus.a]\nunit = \"image\"\ncredits = 1\nbatch = [{ min_qty = 2, discount = 5 }]");
        assert_eq!(e.key, "skus.a.batch[0].discount");
        let e = err("[plans.pro]\ncredits_per_seat = 1\nfeature = [\"image\"]");
        assert_eq!(e.key, "plans.pro.feature");
        assert!(e.message.contains("did you mean features?"), "{e}");
        let e = err("[[tokens]]\ntoken = \"t\"\nrole = \"admin\"\nusername = \"bob\"");
        assert_eq!(e.key, "tokens[0].username");
        assert_eq!(err("[settings]\nhold_ttl_ms = 1").key, "settings");
    }

    #[test]
    fn sku_errors() {
        assert_eq!(
            err_str("[skus.\"video/x\"]\nunit = \"minute\"\ncredits = 5"),
            "creditd.toml: skus.\"video/x\".unit: \"minute\" is not a unit (expected image, second or use)"
        );
        assert_eq!(err("[skus.a]\ncredits = 5").key, "skus.a.unit");
        assert_eq!(err("[skus.a]\nunit = \"use\"").key, "skus.a.credits");
        assert_eq!(
            err_str("[skus.a]\nunit = \"use\"\ncredits = 1000000000000001"),
            "creditd.toml: skus.a.credits: 1000000000000001 is more than the maximum amount 1000000000000000"
        );
        assert_eq!(
            err_str("[skus.a]\nunit = \"use\"\ncredits = 2.5"),
            "creditd.toml: skus.a.credits: expected an integer, found the float 2.5"
        );
        assert_eq!(
            err_str("[skus.a]\nunit = \"use\"\ncredits = -1"),
            "creditd.toml: skus.a.credits: -1 is negative (expected 0 to 1000000000000000)"
        );
        assert_eq!(
            err_str("[skus.a]\nunit = \"use\"\ncredits = 1\nfeature = \"\""),
            "creditd.toml: skus.a.feature: a feature name cannot be empty"
        );
        assert_eq!(err("skus = 5").key, "skus");
        assert_eq!(err("skus.a = 5").key, "skus.a");
        assert_eq!(err("[skus.a]\nunit = 1\ncredits = 1").key, "skus.a.unit");
        assert_eq!(
            err("[skus.a]\nunit = \"Image\"\ncredits = 1").key,
            "skus.a.unit"
        );
    }

    #[test]
    fn sku_features_default_from_the_unit() {
        let c = Config::parse(
            "[skus.i]\nunit = \"image\"\ncredits = 1\n[skus.s]\nunit = \"second\"\ncredits = 1\n\
             [skus.u]\nunit = \"use\"\ncredits = 1\n\
             [skus.v]\nunit = \"second\"\ncredits = 20\nfeature = \"voiceover\"",
            "x.toml",
        )
        .unwrap();
        assert_eq!(c.sku("i").unwrap().feature, "image");
        assert_eq!(c.sku("s").unwrap().feature, "video");
        assert_eq!(c.sku("u").unwrap().feature, "tool");
        assert_eq!(c.sku("v").unwrap().feature, "voiceover");
    }

    #[test]
    fn sku_names_are_bounded() {
        assert_eq!(
            err_str("[skus.\"\"]\nunit = \"use\"\ncredits = 1"),
            "creditd.toml: skus.\"\": a sku name cannot be empty"
        );
        let long = "x".repeat(129);
        let e = err(&format!("[skus.{long}]\nunit = \"use\"\ncredits = 1"));
        assert_eq!(e.message, "the sku name is 129 bytes long; at most 128");
        let ok = "x".repeat(128);
        assert!(Config::parse(&format!("[skus.{ok}]\nunit = \"use\"\ncredits = 1"), "x").is_ok());
        let e = err("[skus.\"a b\"]\nunit = \"use\"\ncredits = 1");
        assert_eq!(e.key, "skus.\"a b\"");
        let e = err(&format!("[plans.{long}]\ncredits_per_seat = 1"));
        assert_eq!(e.message, "the plan name is 129 bytes long; at most 128");
        assert_eq!(
            err("[plans.\"\"]\ncredits_per_seat = 1").message,
            "a plan name cannot be empty"
        );
    }

    #[test]
    fn batch_tiers_are_sorted_and_checked() {
        let c = Config::parse(
            "[skus.a]\nunit = \"image\"\ncredits = 10\n\
             batch = [{ min_qty = 16, discount_pct = 20 }, { min_qty = 4, discount_pct = 10 }]",
            "x.toml",
        )
        .unwrap();
        let a = c.sku("a").unwrap();
        assert_eq!(
            a.batch,
            vec![
                BatchTier {
                    min_qty: 4,
                    discount_pct: 10
                },
                BatchTier {
                    min_qty: 16,
                    discount_pct: 20
                }
            ]
        );
        assert_eq!(a.cost(16), Ok(128));
        let sku = |b: &str| format!("[skus.a]\nunit = \"image\"\ncredits = 10\nbatch = {b}");
        assert_eq!(
            err_str(&sku("[{ min_qty = 4, discount_pct = 101 }]")),
            "creditd.toml: skus.a.batch[0].discount_pct: 101 is more than the maximum 100"
        );
        assert_eq!(
            err_str(&sku("[{ min_qty = 0, discount_pct = 5 }]")),
            "creditd.toml: skus.a.batch[0].min_qty: 0 is less than the minimum 1"
        );
        assert_eq!(
            err_str(&sku(
                "[{ min_qty = 4, discount_pct = 5 }, { min_qty = 8, discount_pct = 6 }, { min_qty = 4, discount_pct = 7 }]"
            )),
            "creditd.toml: skus.a.batch[2].min_qty: min_qty 4 appears twice; each tier needs its own min_qty"
        );
        assert_eq!(
            err(&sku("[{ discount_pct = 5 }]")).key,
            "skus.a.batch[0].min_qty"
        );
        assert_eq!(
            err(&sku("[{ min_qty = 5 }]")).key,
            "skus.a.batch[0].discount_pct"
        );
        assert_eq!(err(&sku("[5]")).key, "skus.a.batch[0]");
        assert_eq!(
            err(&sku("{ min_qty = 4, discount_pct = 5 }")).key,
            "skus.a.batch"
        );
        // 100 % off is a valid (free in bulk) tier.
        assert!(Config::parse(&sku("[{ min_qty = 100, discount_pct = 100 }]"), "x").is_ok());
    }

    #[test]
    fn plan_features_must_exist_and_typos_get_a_hint() {
        let text = "[skus.\"v/x\"]\nunit = \"second\"\ncredits = 5\nfeature = \"voiceover\"\n\
                    [plans.p]\ncredits_per_seat = 1\nfeatures = [\"video\", \"imgae\"]\n";
        let e = err(text);
        assert_eq!(e.key, "plans.p.features[1]");
        assert!(e.message.contains("did you mean image?"), "{e}");
        assert!(e.message.contains("image, tool, video, voiceover"), "{e}");
        let ok = text.replace("imgae", "voiceover");
        assert!(Config::parse(&ok, "x.toml").is_ok());
    }

    #[test]
    fn plan_errors_and_defaults() {
        let c = Config::parse("[plans.p]\ncredits_per_seat = 0", "x.toml").unwrap();
        let p = c.plan("p").unwrap();
        assert_eq!(
            **p,
            PlanTerms {
                period: Period::Month,
                credits_per_seat: 0,
                features: None,
                addon_unit_credits: None,
                upgrade_rollover: false,
            }
        );
        assert!(p.includes("anything"));
        assert_eq!(
            err_str("[plans.p]\nperiod = \"week\"\ncredits_per_seat = 1"),
            "creditd.toml: plans.p.period: \"week\" is not a period (expected month or year)"
        );
        assert_eq!(
            err_str("[plans.p]\ncredits_per_seat = 1000000000000001"),
            "creditd.toml: plans.p.credits_per_seat: 1000000000000001 is more than the maximum amount 1000000000000000"
        );
        assert_eq!(
            err("[plans.p]\nperiod = \"year\"").key,
            "plans.p.credits_per_seat"
        );
        assert_eq!(
            err("[plans.p]\ncredits_per_seat = 1\naddon_unit_credits = 1000000000000001").key,
            "plans.p.addon_unit_credits"
        );
        assert_eq!(
            err_str("[plans.p]\ncredits_per_seat = 1\nupgrade_rollover = \"yes\""),
            "creditd.toml: plans.p.upgrade_rollover: expected true or false, found the string \"yes\""
        );
        assert_eq!(
            err("[plans.p]\ncredits_per_seat = 1\nfeatures = \"image\"").key,
            "plans.p.features"
        );
        assert_eq!(
            err("[plans.p]\ncredits_per_seat = 1\nfeatures = []").key,
            "plans.p.features"
        );
        assert_eq!(
            err_str("[plans.p]\ncredits_per_seat = 1\nfeatures = [\"image\", \"image\"]"),
            "creditd.toml: plans.p.features[1]: \"image\" is listed twice"
        );
        assert_eq!(
            err("[plans.p]\ncredits_per_seat = 1\nfeatures = [\"image\", 3]").key,
            "plans.p.features[1]"
        );
        assert_eq!(
            err("[plans.p]\ncredits_per_seat = 1\nfeatures = [\"\"]").key,
            "plans.p.features[0]"
        );
    }

    #[test]
    fn plan_allowances() {
        let p = PlanTerms {
            period: Period::Month,
            credits_per_seat: 500,
            features: Some(vec!["voiceover".into()]),
            addon_unit_credits: Some(60),
            upgrade_rollover: false,
        };
        assert!(p.includes("voiceover") && !p.includes("image"));
        assert_eq!(p.allowance(3), Some(1500));
        assert_eq!(p.allowance(u64::MAX), None);
        assert_eq!(p.addon_allowance(2), Some(120));
        let none = PlanTerms {
            addon_unit_credits: None,
            ..p
        };
        assert_eq!(none.addon_allowance(1), None);
    }

    #[test]
    fn token_errors() {
        let c = Config::parse(
            "[[tokens]]\ntoken = \"a\"\nrole = \"admin\"\nuser = \"ops\"\n\
             [[tokens]]\ntoken = \"p\"\nrole = \"probe\"",
            "x.toml",
        )
        .unwrap();
        assert_eq!(c.tokens[0].role, Role::Admin);
        assert_eq!(c.tokens[0].user.as_deref(), Some("ops"));
        assert_eq!(c.tokens[1].role, Role::Probe);
        assert_eq!(
            err_str("[[tokens]]\ntoken = \"x\"\nrole = \"root\""),
            "creditd.toml: tokens[0].role: \"root\" is not a role (expected admin, gateway or probe)"
        );
        assert_eq!(
            err_str("[[tokens]]\ntoken = \"\"\nrole = \"admin\""),
            "creditd.toml: tokens[0].token: is empty; a token must be at least one byte"
        );
        assert_eq!(err("[[tokens]]\nrole = \"admin\"").key, "tokens[0].token");
        assert_eq!(err("[[tokens]]\ntoken = \"x\"").key, "tokens[0].role");
        let e = err("[[tokens]]\ntoken = 12345\nrole = \"admin\"");
        assert_eq!(e.message, "expected a string, found an integer");
        let e = err("[[tokens]]\ntoken = \"dup\"\nrole = \"admin\"\n[[tokens]]\ntoken = \"dup\"\nrole = \"probe\"");
        assert_eq!(e.key, "tokens[1].token");
        assert!(!e.to_string().contains("dup"));
        assert_eq!(err("[tokens]\ntoken = \"x\"").key, "tokens");
        assert_eq!(
            err("[[tokens]]\ntoken = \"x\"\nrole = \"admin\"\nuser = \"\"").key,
            "tokens[0].user"
        );
    }

    #[test]
    fn syntax_errors_have_line_and_column() {
        let e = err("hold_ttl_ms = 5\n[skus.a]\nunit = \"image\ncredits = 1\n");
        assert_eq!(e.key, "");
        assert!(
            e.message
                .starts_with("TOML syntax error at line 3, column "),
            "{e}"
        );
        let e = err("a = 1\nb = = 2");
        assert!(
            e.message
                .starts_with("TOML syntax error at line 2, column "),
            "{e}"
        );
        assert!(
            e.to_string()
                .starts_with("creditd.toml: TOML syntax error at line 2"),
            "{e}"
        );
        // Duplicate keys are a TOML error too.
        let e = err("[skus.a]\nunit = \"use\"\nunit = \"image\"\ncredits = 1");
        assert!(e.message.contains("line 3"), "{e}");
        let e = err("[skus.a]\nunit = \"use\"\ncredits = 1\n[skus.a]\nunit = \"use\"");
        assert!(e.message.contains("line 4"), "{e}");
    }

    #[test]
    fn key_paths_quote_like_toml() {
        assert_eq!(segment("pro-annual"), "pro-annual");
        assert_eq!(segment("image/x"), "\"image/x\"");
        assert_eq!(segment("a\"b"), "\"a\\\"b\"");
        assert_eq!(segment("veo-3.1"), "\"veo-3.1\"");
        assert_eq!(edit_distance("credit", "credits"), 1);
        assert_eq!(edit_distance("", "abc"), 3);
    }

    #[test]
    fn load_names_the_file() {
        let e = Config::load(std::path::Path::new("/nonexistent/creditd.toml")).unwrap_err();
        assert_eq!(e.file, "/nonexistent/creditd.toml");
        assert!(e.message.starts_with("cannot read the file"));
    }
}
