//! The rate card (`[skus.*]`) and the plans (`[plans.*]`) of the config file.

use std::collections::HashMap;
use std::sync::Arc;

use toml::{Table, Value};

use super::read::{
    bad, boolean, check_keys, check_name, describe, edit_distance, int_in, join, quote, string,
    table, Bad, R,
};
use super::{Config, PlanTerms};
use crate::calendar::Period;
use crate::pricing::{BatchTier, SkuPrice, Unit};

const SKU_KEYS: [&str; 4] = ["unit", "credits", "feature", "batch"];
const TIER_KEYS: [&str; 2] = ["min_qty", "discount_pct"];
const PLAN_KEYS: [&str; 5] = [
    "period",
    "credits_per_seat",
    "features",
    "addon_unit_credits",
    "upgrade_rollover",
];

/// The `skus` table: each sku by name.
pub(super) fn skus(top: &Table) -> R<HashMap<String, Arc<SkuPrice>>> {
    let mut skus = HashMap::new();
    if let Some(v) = top.get("skus") {
        for (name, v) in table(v, "skus")? {
            let key = join("skus", name);
            check_name(name, &key, "sku")?;
            skus.insert(name.clone(), Arc::new(sku(v, &key)?));
        }
    }
    Ok(skus)
}

/// The `plans` table: each plan by name.
pub(super) fn plans(top: &Table) -> R<HashMap<String, Arc<PlanTerms>>> {
    let mut plans = HashMap::new();
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
            plans.insert(name.clone(), Arc::new(plan(v, &key)?));
        }
    }
    Ok(plans)
}

/// Every feature a plan lists must be a default feature (`image`, `video`,
/// `tool`) or one some sku has: a typo such as `features = ["imgae"]` would
/// otherwise refuse every image to the plan's accounts.
pub(super) fn check_plan_features(config: &Config) -> R<()> {
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
