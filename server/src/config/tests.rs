//! Whole config files: the server's settings and tokens, the top-level keys
//! of both the engine and the server, reading a file. The engine's own part
//! (skus, plans, its settings, the form of errors) is tested in the engine.

use super::*;
use creditd_engine::calendar::Period;
use creditd_engine::config::PlanTerms;
use creditd_engine::pricing::Unit;

fn err(text: &str) -> ConfigError {
    match ServerConfig::parse(text, "creditd.toml") {
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
    let c = ServerConfig::parse(PROTOCOL_EXAMPLE, "creditd.toml").unwrap();
    assert_eq!(c.settings, ServerSettings::default());
    assert_eq!(c.engine.settings, Default::default());
    let flux = c.engine.sku("image/flux-2-pro").unwrap();
    assert_eq!(flux.unit, Unit::Image);
    assert_eq!(flux.credits, 80);
    assert_eq!(flux.cost(4), Ok(288));
    let kling = c.engine.sku("video/kling-2.6-pro/1080/audio").unwrap();
    assert_eq!(
        (kling.unit, kling.credits, kling.feature.as_str()),
        (Unit::Second, 250, "video")
    );
    let pro = c.engine.plan("pro").unwrap();
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
fn builtin_parses_whole_and_runs_without_tokens() {
    let c = ServerConfig::builtin();
    assert!(
        c.tokens.is_empty(),
        "the builtin runs on loopback without auth"
    );
    assert_eq!(c.settings, ServerSettings::default());
    assert_eq!(c.engine.settings, Default::default());
    assert!(c.engine.sku("image/flux-2-pro").is_some() && c.engine.plan("pro").is_some());
}

#[test]
fn empty_file_is_defaults() {
    let c = ServerConfig::parse("", "x.toml").unwrap();
    assert_eq!(c.settings, ServerSettings::default());
    assert_eq!(c.engine.settings, Default::default());
    assert!(c.engine.skus.is_empty() && c.engine.plans.is_empty() && c.tokens.is_empty());
}

#[test]
fn settings_are_read_and_bounded() {
    let c = ServerConfig::parse(
        "hold_ttl_ms = 5000\nhistory_per_account = 100\nredis_max_pending = 7\nmax_clients = 3",
        "x.toml",
    )
    .unwrap();
    assert_eq!(c.engine.settings.hold_ttl_ms, 5000);
    assert_eq!(c.engine.settings.history_per_account, 100);
    assert_eq!(c.settings.redis_max_pending, 7);
    assert_eq!(c.settings.max_clients, 3);
    assert_eq!(c.engine.settings.idempotency_window_ms, 86_400_000);
    assert_eq!(
        err_str("hold_ttl_ms = 0"),
        "creditd.toml: hold_ttl_ms: 0 is less than the minimum 1"
    );
    assert_eq!(err("max_clients = 4294967296").key, "max_clients");
    assert_eq!(
        err_str("cluster_lease_ms = 99"),
        "creditd.toml: cluster_lease_ms: 99 is less than the minimum 100"
    );
    assert_eq!(
        err_str("snapshot_every_records = \"10\""),
        "creditd.toml: snapshot_every_records: expected an integer, found the string \"10\""
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
         max_members_per_account, max_alerts_per_account, max_events, event_retention_ms, \
         skus, plans, tokens"
    );
    let e = err("[skus.\"image/x\"]\nunit = \"image\"\ncredit = 80");
    assert_eq!(e.key, "skus.\"image/x\".credit");
    assert!(
        e.message.starts_with("unknown key (did you mean credits?)"),
        "{e}"
    );
    let e = err("[[tokens]]\ntoken = \"t\"\nrole = \"admin\"\nusername = \"bob\"");
    assert_eq!(e.key, "tokens[0].username");
    assert_eq!(err("[settings]\nhold_ttl_ms = 1").key, "settings");
}

/// The file's key list is the engine's and the server's, each once.
#[test]
fn file_keys_are_the_engines_and_the_servers() {
    let mut file: Vec<&str> = FILE_KEYS.to_vec();
    let mut both: Vec<&str> = engine::KEYS.iter().chain(&KEYS).copied().collect();
    file.sort_unstable();
    both.sort_unstable();
    assert_eq!(file, both);
    file.dedup();
    assert_eq!(file.len(), FILE_KEYS.len());
}

#[test]
fn token_errors() {
    let c = ServerConfig::parse(
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
fn load_names_the_file() {
    let e = ServerConfig::load(std::path::Path::new("/nonexistent/creditd.toml")).unwrap_err();
    assert_eq!(e.file, "/nonexistent/creditd.toml");
    assert!(e.message.starts_with("cannot read the file"));
}
