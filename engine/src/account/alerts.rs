//! Alerts: low-balance thresholds on `available` (ALERT), and the rate
//! stamp of `insufficient` events.
//!
//! A threshold is armed while `available` was at or above it when last
//! looked at, and fires once when a change finds `available` below it; it
//! arms again only once `available` is back at or above it. Thresholds are
//! looked at after every change a command makes, never by reads or by the
//! sweeper: so a drop that time caused (credits expiring) fires with the
//! account's next change, and replay, which sees the same changes, fires
//! the same events.

use super::{Account, Applied, Ctx};
use crate::error::{EngineError, Result};
use crate::events::EventKind;
use serde::{Deserialize, Serialize};
use smallvec::SmallVec;

/// Thresholds an account may have at most (the contract's bound; the
/// config may lower it).
pub const MAX_ALERTS: u32 = 8;

/// One low-balance threshold.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Threshold {
    pub at: u64,
    /// `available` was at or above `at` when last looked at.
    pub armed: bool,
}

/// An account's thresholds and refusal stamp.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Alerts {
    /// Ascending by `at`.
    pub thresholds: SmallVec<[Threshold; 2]>,
    /// When the last `insufficient` event was raised.
    pub insufficient_event_ms: Option<u64>,
}

impl Account {
    /// ALERT: adds a threshold (`remove` false) or deletes one. Replies how
    /// many the account has after. Adding one it has, or deleting one it
    /// has not, changes nothing.
    pub fn alert(&mut self, ctx: &Ctx, at: u64, remove: bool) -> Result<Applied> {
        let available = self.bal.available;
        let alerts = self.alerts.get_or_insert_with(Default::default);
        let found = alerts.thresholds.binary_search_by_key(&at, |t| t.at);
        let applied = match (found, remove) {
            (Ok(_), false) | (Err(_), true) => Applied::Repeated(alerts.thresholds.len() as u64),
            (Ok(i), true) => {
                alerts.thresholds.remove(i);
                Applied::Changed(alerts.thresholds.len() as u64)
            }
            (Err(i), false) => {
                let max = ctx.limits.max_alerts;
                if !ctx.replay && alerts.thresholds.len() >= max as usize {
                    let e = EngineError::invalid(format!(
                        "too many alerts on this account (limit {max})"
                    ));
                    self.drop_empty_alerts();
                    return Err(e);
                }
                let armed = available >= at;
                alerts.thresholds.insert(i, Threshold { at, armed });
                Applied::Changed(alerts.thresholds.len() as u64)
            }
        };
        self.drop_empty_alerts();
        Ok(applied)
    }

    fn drop_empty_alerts(&mut self) {
        if self
            .alerts
            .as_ref()
            .is_some_and(|a| a.thresholds.is_empty() && a.insufficient_event_ms.is_none())
        {
            self.alerts = None;
        }
    }

    /// Looks at every threshold after a change: fires those `available`
    /// fell below (their thresholds go to `crossed`), arms those it is at
    /// or above. Returns `available`, the events' value.
    #[inline]
    pub(crate) fn raise_low(&mut self, crossed: &mut Vec<u64>) -> u64 {
        let available = self.bal.available;
        let Some(alerts) = self.alerts.as_mut() else {
            return available;
        };
        for t in alerts.thresholds.iter_mut() {
            if available >= t.at {
                t.armed = true;
            } else if t.armed {
                t.armed = false;
                crossed.push(t.at);
            }
        }
        available
    }

    /// Stamps an `insufficient` event unless one was raised less than
    /// `interval_ms` ago. True: raise it.
    pub(crate) fn stamp_insufficient(&mut self, now_ms: u64, interval_ms: u64) -> bool {
        let alerts = self.alerts.get_or_insert_with(Default::default);
        stamp_if_due(&mut alerts.insufficient_event_ms, now_ms, interval_ms)
    }

    /// Checks the thresholds: ascending, distinct, at most [`MAX_ALERTS`]
    /// (recovery refuses an account that breaks this).
    pub(crate) fn check_alerts(&self) -> std::result::Result<(), String> {
        let Some(alerts) = self.alerts.as_deref() else {
            return Ok(());
        };
        let t = &alerts.thresholds;
        if t.len() > MAX_ALERTS as usize || t.windows(2).any(|w| w[0].at >= w[1].at) {
            return Err(format!("alert thresholds out of order or too many: {t:?}"));
        }
        Ok(())
    }

    /// The account's thresholds, ascending.
    pub fn thresholds(&self) -> Vec<u64> {
        self.alerts
            .as_ref()
            .map_or_else(Vec::new, |a| a.thresholds.iter().map(|t| t.at).collect())
    }

    /// Stamps the rate limit of a refusal event. True: the refusal raises
    /// its event now.
    pub(crate) fn stamp_refusal(
        &mut self,
        kind: EventKind,
        member: Option<&[u8]>,
        now_ms: u64,
        interval_ms: u64,
    ) -> bool {
        match (kind, member) {
            (EventKind::Insufficient, _) => self.stamp_insufficient(now_ms, interval_ms),
            (EventKind::Limited, Some(m)) => self.stamp_limited(m, now_ms, interval_ms),
            _ => false,
        }
    }
}

/// A refusal event is due unless `stamp` (the last one's instant) is less
/// than `interval_ms` ago; a due one moves the stamp to `now_ms`.
pub(super) fn stamp_if_due(stamp: &mut Option<u64>, now_ms: u64, interval_ms: u64) -> bool {
    let due = stamp.is_none_or(|at| now_ms >= at.saturating_add(interval_ms));
    if due {
        *stamp = Some(now_ms);
    }
    due
}
