//! The config as the engine uses it: account limits, and skus priced with
//! shared names. Swapped whole by CONFIG RELOAD; holds keep their price and
//! subscriptions their terms.

use crate::account::{Limits, Terms};
use crate::config::Config;
use crate::events::EventBounds;
use crate::pricing::SkuPrice;
use std::collections::HashMap;
use std::sync::Arc;

pub struct Catalog {
    pub config: Config,
    pub limits: Limits,
    /// Accounts the engine keeps at most (commands that would add one more fail).
    pub max_accounts: u64,
    /// The event log's bounds.
    pub event_bounds: EventBounds,
    skus: HashMap<String, (Arc<str>, Arc<SkuPrice>)>,
}

impl Catalog {
    pub fn new(config: Config) -> Self {
        let s = &config.settings;
        let limits = Limits {
            hold_ttl_ms: s.hold_ttl_ms,
            max_holds: s.max_holds_per_account,
            max_buckets: s.max_buckets_per_account,
            max_members: s.max_members_per_account,
            max_alerts: s.max_alerts_per_account,
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
        let event_bounds = EventBounds {
            max_events: s.max_events,
            retention_ms: s.event_retention_ms,
        };
        Catalog {
            max_accounts: config.settings.max_accounts,
            event_bounds,
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
