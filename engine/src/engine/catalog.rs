//! The config as the engine uses it: account limits, and skus priced with
//! shared names. Swapped whole by CONFIG RELOAD; holds keep their price and
//! subscriptions their terms.

use crate::account::{Limits, Terms};
use crate::config::Config;
use crate::pricing::SkuPrice;
use std::collections::HashMap;
use std::sync::Arc;

pub struct Catalog {
    pub config: Config,
    pub limits: Limits,
    /// Accounts the engine keeps at most (commands that would add one more fail).
    pub max_accounts: u64,
    skus: HashMap<String, (Arc<str>, Arc<SkuPrice>)>,
}

impl Catalog {
    pub fn new(config: Config) -> Self {
        let s = &config.settings;
        let limits = Limits {
            hold_ttl_ms: s.hold_ttl_ms,
            max_holds: s.max_holds_per_account,
            max_buckets: s.max_buckets_per_account,
            terms: Terms {
                idempotency_window_ms: s.idempotency_window_ms,
                max_ids: s.max_ids_per_account,
                history_len: s.history_per_account,
            },
        };
        let skus = config
            .skus
            .iter()
            .map(|(name, price)| (name.clone(), (Arc::from(name.as_str()), price.clone())))
            .collect();
        Catalog {
            max_accounts: config.settings.max_accounts,
            config,
            limits,
            skus,
        }
    }

    /// A sku's shared name and price.
    pub(crate) fn sku(&self, name: &str) -> Option<(Arc<str>, Arc<SkuPrice>)> {
        self.skus.get(name).cloned()
    }
}
