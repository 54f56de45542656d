//! The engine's part of the config file: settings, skus, plans, and the form
//! of every error. Whole files (the server's keys, tokens, reading a file)
//! are tested with the server's config.

use super::read::{edit_distance, segment};
use super::*;
use crate::pricing::{BatchTier, Unit};

fn err(text: &str) -> ConfigError {
    match Config::parse(text, "creditd.toml") {
        Ok(_) => panic!("accepted:\n{text}"),
        Err(e) => e,
    }
}

fn err_str(text: &str) -> String {
    err(text).to_string()
}

#[test]
fn builtin_parses_and_has_the_catalogue() {
    let c = Config::builtin();
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
fn empty_file_is_defaults() {
    let c = Config::parse("", "x.toml").unwrap();
    assert_eq!(c.settings, Settings::default());
    assert!(c.skus.is_empty() && c.plans.is_empty());
}

#[test]
fn settings_are_read_and_bounded() {
    let c = Config::parse(
        "hold_ttl_ms = 5000\nhistory_per_account = 100\nmax_accounts = 3",
        "x.toml",
    )
    .unwrap();
    assert_eq!(c.settings.hold_ttl_ms, 5000);
    assert_eq!(c.settings.history_per_account, 100);
    assert_eq!(c.settings.max_accounts, 3);
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
    assert_eq!(
        err_str("max_alerts_per_account = 9"),
        "creditd.toml: max_alerts_per_account: 9 is more than the maximum 8"
    );
    assert_eq!(
        err("max_members_per_account = 0").key,
        "max_members_per_account"
    );
    assert_eq!(err("max_events = 0").key, "max_events");
    assert_eq!(err("event_retention_ms = 0").key, "event_retention_ms");
    assert_eq!(
        err("max_holds_per_account = 4294967296").key,
        "max_holds_per_account"
    );
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
         history_per_account, max_ids_per_account, max_accounts, max_members_per_account, \
         max_alerts_per_account, max_events, event_retention_ms, skus, plans"
    );
    let e = err("[skus.\"image/x\"]\nunit = \"image\"\ncredit = 80");
    assert_eq!(e.key, "skus.\"image/x\".credit");
    assert!(
        e.message.starts_with("unknown key (did you mean credits?)"),
        "{e}"
    );
    let e = err("[skus.a]\nunit = \"image\"\ncredits = 1\nbatch = [{ min_qty = 2, discount = 5 }]");
    assert_eq!(e.key, "skus.a.batch[0].discount");
    let e = err("[plans.pro]\ncredits_per_seat = 1\nfeature = [\"image\"]");
    assert_eq!(e.key, "plans.pro.feature");
    assert!(e.message.contains("did you mean features?"), "{e}");
    assert_eq!(err("[settings]\nhold_ttl_ms = 1").key, "settings");
}

/// A file of the engine's keys alone refuses the server's: they are read
/// only where the whole file is (the server), never ignored.
#[test]
fn engine_files_refuse_the_servers_keys() {
    for key in [
        "max_clients = 3",
        "cluster_lease_ms = 3000",
        "[[tokens]]\ntoken = \"t\"\nrole = \"admin\"",
    ] {
        let e = err(key);
        assert!(e.message.starts_with("unknown key"), "{e}");
    }
}

/// The engine reads its keys from a whole file and leaves the rest to the
/// server: the example config has both.
#[test]
fn from_table_reads_only_the_engines_keys() {
    let top: Table = "max_clients = 3\nhold_ttl_ms = 5000\n[[tokens]]\nrole = 5"
        .parse()
        .unwrap();
    let c = Config::from_table(&top, "x.toml").unwrap();
    assert_eq!(c.settings.hold_ttl_ms, 5000);
    let top: Table = "max_clients = 3\nhold_ttl_ms = 0".parse().unwrap();
    assert_eq!(
        Config::from_table(&top, "x.toml").unwrap_err().to_string(),
        "x.toml: hold_ttl_ms: 0 is less than the minimum 1"
    );
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
fn plan_addon_allowances() {
    let p = PlanTerms {
        period: Period::Month,
        credits_per_seat: 500,
        features: Some(vec!["voiceover".into()]),
        addon_unit_credits: Some(60),
        upgrade_rollover: false,
    };
    assert!(p.includes("voiceover") && !p.includes("image"));
    assert_eq!(p.addon_allowance(2), Some(120));
    let none = PlanTerms {
        addon_unit_credits: None,
        ..p
    };
    assert_eq!(none.addon_allowance(1), None);
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
