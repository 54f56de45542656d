//! The rate card: what one unit of a sku costs, and what a quantity costs after
//! the batch discount.
//!
//! Prices are integers of credits and the only rounding is one final ceiling, so
//! the engine and every client that reimplements the formula of PROTOCOL.md §7
//! agree to the credit. The rounding goes up because a fraction of a credit the
//! platform gives away on every job adds up; a customer never pays more than
//! the undiscounted `credits x qty`.

use crate::command::Charge;
use crate::error::{EngineError, Result};
use crate::hold::ChargeArgs;
use serde::{Deserialize, Serialize};
use std::sync::Arc;

/// A resolved charge: the credits and, for skus, the price used.
pub struct Priced {
    pub amount: u64,
    /// What a retry is compared with.
    pub args: ChargeArgs,
    /// A hold keeps its price, so `QTY` at COMMIT costs what RESERVE quoted.
    pub price: Option<Arc<SkuPrice>>,
}

impl Priced {
    /// Resolves a charge against the sku's price (`None`: no such sku).
    pub fn new(charge: Charge, price: Option<(Arc<str>, Arc<SkuPrice>)>) -> Result<Priced> {
        match (charge, price) {
            (Charge::Amount(amount), _) => Ok(Priced {
                amount,
                args: ChargeArgs::Amount(amount),
                price: None,
            }),
            (Charge::Sku { qty, .. }, Some((name, price))) => {
                let amount = price
                    .cost(qty)
                    .map_err(|_| EngineError::invalid("amount out of range"))?;
                Ok(Priced {
                    amount,
                    args: ChargeArgs::Sku { sku: name, qty },
                    price: Some(price),
                })
            }
            (Charge::Sku { sku, .. }, None) => {
                Err(EngineError::not_found(format!("no such sku '{sku}'")))
            }
        }
    }
}

/// What a sku is priced by.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Unit {
    /// One generated image.
    Image,
    /// One second of generated video or audio.
    Second,
    /// One run of a tool (a summary, a prompt, a background removal...).
    Use,
}

impl Unit {
    /// Every unit, in the order the docs list them.
    pub const ALL: [Unit; 3] = [Unit::Image, Unit::Second, Unit::Use];

    /// The feature a sku of this unit belongs to when the config names none.
    ///
    /// Per-second skus default to `video` because video is what the rate cards
    /// price by the second; a per-second voiceover must say `feature = "voiceover"`.
    pub fn default_feature(self) -> &'static str {
        match self {
            Unit::Image => "image",
            Unit::Second => "video",
            Unit::Use => "tool",
        }
    }

    /// The config-file spelling (`image`, `second`, `use`).
    pub fn as_str(self) -> &'static str {
        match self {
            Unit::Image => "image",
            Unit::Second => "second",
            Unit::Use => "use",
        }
    }

    /// Parses the config-file spelling, exactly (lower case), so that a config
    /// reads the same everywhere it is quoted.
    pub fn parse(s: &str) -> Option<Unit> {
        Unit::ALL.into_iter().find(|u| u.as_str() == s)
    }
}

impl std::fmt::Display for Unit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A volume discount: from `min_qty` units on, the whole quantity costs
/// `discount_pct` percent less.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BatchTier {
    /// The smallest quantity this tier applies to (at least 1).
    pub min_qty: u64,
    /// 0 to 100.
    pub discount_pct: u8,
}

/// The price of one sku.
///
/// A hold keeps its own `Arc<SkuPrice>`, so `CONFIG RELOAD` never reprices a
/// job that is already running.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SkuPrice {
    pub unit: Unit,
    /// Credits per unit, 0 (a free model) to `MAX_AMOUNT`.
    pub credits: u64,
    /// The plan feature that entitles an account to this sku.
    pub feature: String,
    /// Sorted ascending by `min_qty`, no duplicates (the config loader ensures it).
    pub batch: Vec<BatchTier>,
}

/// Why a quantity cannot be priced.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PriceError {
    /// The cost is above `MAX_AMOUNT`: no account could ever hold that much, and
    /// refusing here keeps every later sum of amounts far from `u64` overflow.
    TooLarge,
}

impl std::fmt::Display for PriceError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PriceError::TooLarge => write!(f, "cost is more than {} credits", crate::MAX_AMOUNT),
        }
    }
}

impl std::error::Error for PriceError {}

impl SkuPrice {
    /// The discount for `qty`: that of the highest tier with `min_qty <= qty`,
    /// else 0.
    ///
    /// Highest, not best: tiers are a schedule the operator wrote, and picking
    /// by `min_qty` makes the applied tier predictable from the config alone.
    pub fn discount_pct(&self, qty: u64) -> u8 {
        // `batch` is sorted ascending, so the tiers that apply are a prefix.
        let applicable = self.batch.partition_point(|t| t.min_qty <= qty);
        match applicable {
            0 => 0,
            n => self.batch[n - 1].discount_pct.min(100),
        }
    }

    /// `ceil(credits * qty * (100 - discount_pct) / 100)`, the formula of
    /// PROTOCOL.md §7, in `u128` so that no intermediate product can overflow
    /// (`1e15 * u64::MAX * 100 < u128::MAX`). A quantity of 0 costs 0.
    pub fn cost(&self, qty: u64) -> Result<u64, PriceError> {
        let pct = 100 - u128::from(self.discount_pct(qty));
        let gross = u128::from(self.credits) * u128::from(qty);
        let net = (gross * pct).div_ceil(100);
        if net > u128::from(crate::MAX_AMOUNT) {
            return Err(PriceError::TooLarge);
        }
        // Fits: net <= MAX_AMOUNT < u64::MAX.
        Ok(net as u64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn sku(credits: u64, tiers: &[(u64, u8)]) -> SkuPrice {
        SkuPrice {
            unit: Unit::Image,
            credits,
            feature: "image".into(),
            batch: tiers
                .iter()
                .map(|&(min_qty, discount_pct)| BatchTier {
                    min_qty,
                    discount_pct,
                })
                .collect(),
        }
    }

    #[test]
    fn units_round_trip_and_default_features() {
        for u in Unit::ALL {
            assert_eq!(Unit::parse(u.as_str()), Some(u));
        }
        assert_eq!(Unit::parse("Image"), None);
        assert_eq!(Unit::parse("minute"), None);
        assert_eq!(Unit::Image.default_feature(), "image");
        assert_eq!(Unit::Second.default_feature(), "video");
        assert_eq!(Unit::Use.default_feature(), "tool");
    }

    #[test]
    fn no_tiers_is_price_times_qty() {
        let s = sku(80, &[]);
        assert_eq!(s.cost(0), Ok(0));
        assert_eq!(s.cost(1), Ok(80));
        assert_eq!(s.cost(7), Ok(560));
    }

    #[test]
    fn highest_applicable_tier_wins() {
        let s = sku(80, &[(4, 10), (16, 20)]);
        assert_eq!(s.discount_pct(3), 0);
        assert_eq!(s.discount_pct(4), 10);
        assert_eq!(s.discount_pct(15), 10);
        assert_eq!(s.discount_pct(16), 20);
        assert_eq!(s.discount_pct(u64::MAX), 20);
        assert_eq!(s.cost(3), Ok(240));
        assert_eq!(s.cost(4), Ok(288)); // 320 * 0.9
        assert_eq!(s.cost(16), Ok(1024)); // 1280 * 0.8
    }

    #[test]
    fn rounds_up() {
        // 7 * 1 * 90 / 100 = 6.3 -> 7
        assert_eq!(sku(7, &[(1, 10)]).cost(1), Ok(7));
        // 10 * 3 * 67 / 100 = 20.1 -> 21
        assert_eq!(sku(10, &[(2, 33)]).cost(3), Ok(21));
        // exact results are not bumped: 10 * 4 * 90 / 100 = 36
        assert_eq!(sku(10, &[(4, 10)]).cost(4), Ok(36));
        // 1 credit at 99 % off is still 1 credit
        assert_eq!(sku(1, &[(1, 99)]).cost(1), Ok(1));
    }

    #[test]
    fn full_discount_and_free_sku_cost_nothing() {
        assert_eq!(sku(500, &[(10, 100)]).cost(10), Ok(0));
        assert_eq!(sku(500, &[(10, 100)]).cost(9), Ok(4500));
        assert_eq!(sku(0, &[]).cost(u64::MAX), Ok(0));
    }

    #[test]
    fn too_large_is_an_error_not_a_wrap() {
        let max = crate::MAX_AMOUNT;
        assert_eq!(sku(max, &[]).cost(1), Ok(max));
        assert_eq!(sku(max, &[]).cost(2), Err(PriceError::TooLarge));
        assert_eq!(sku(max, &[]).cost(u64::MAX), Err(PriceError::TooLarge));
        assert_eq!(sku(1, &[]).cost(max + 1), Err(PriceError::TooLarge));
        // A discount can bring a large quantity back under the limit.
        assert_eq!(sku(max, &[(2, 50)]).cost(2), Ok(max));
    }

    fn tiers() -> impl Strategy<Value = Vec<(u64, u8)>> {
        proptest::collection::btree_map(1u64..1_000, 0u8..=100, 0..4)
            .prop_map(|m| m.into_iter().collect())
    }

    proptest! {
        #[test]
        fn monotone_within_a_tier_and_never_above_list_price(
            credits in 0u64..=1_000_000,
            t in tiers(),
            qty in 0u64..2_000,
        ) {
            let s = sku(credits, &t);
            let here = s.cost(qty).unwrap();
            prop_assert!(here <= credits * qty);
            let next = s.cost(qty + 1).unwrap();
            if s.discount_pct(qty) == s.discount_pct(qty + 1) {
                prop_assert!(next >= here);
            }
            // The exact formula, computed another way.
            let pct = 100 - u64::from(s.discount_pct(qty));
            let exact = credits * qty * pct;
            prop_assert_eq!(here, exact / 100 + u64::from(exact % 100 != 0));
        }

        #[test]
        fn never_panics_and_respects_max(credits in 0u64..=crate::MAX_AMOUNT, qty: u64, t in tiers()) {
            match sku(credits, &t).cost(qty) {
                Ok(c) => prop_assert!(c <= crate::MAX_AMOUNT),
                Err(PriceError::TooLarge) => {
                    prop_assert!(u128::from(credits) * u128::from(qty) > u128::from(crate::MAX_AMOUNT));
                }
            }
        }
    }
}
