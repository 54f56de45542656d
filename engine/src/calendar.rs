//! Billing cycles on the UTC calendar.
//!
//! Cycle `k` of a subscription starts at its anchor plus `k` calendar months (or
//! years), always counted from the anchor rather than from the previous cycle,
//! with the day clamped to the end of the month. Counting from the anchor is what
//! keeps a Jan 31 subscriber on the 31st: Jan 31 -> Feb 28 -> Mar 31, where
//! stepping month by month would drift to the 28th for good. UTC, because a
//! workspace's seats may sit in many time zones and the server's own zone must
//! not change when credits renew.
//!
//! Every function here is pure and total: out-of-range inputs give `None`, never
//! a panic, because anchors come from clients.

use jiff::civil::{Date, DateTime};
use jiff::tz::Offset;
use jiff::Timestamp;
use serde::{Deserialize, Serialize};

/// The length of a plan's cycle.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Period {
    Month,
    Year,
}

impl Period {
    /// The config-file spelling (`month`, `year`).
    pub fn as_str(self) -> &'static str {
        match self {
            Period::Month => "month",
            Period::Year => "year",
        }
    }

    /// Parses the config-file spelling, exactly.
    pub fn parse(s: &str) -> Option<Period> {
        match s {
            "month" => Some(Period::Month),
            "year" => Some(Period::Year),
            _ => None,
        }
    }

    /// Calendar months in one cycle.
    fn months(self) -> i64 {
        match self {
            Period::Month => 1,
            Period::Year => 12,
        }
    }
}

impl std::fmt::Display for Period {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// UTC civil date-time of a Unix millisecond, if jiff can represent it.
fn civil(ms: u64) -> Option<DateTime> {
    let ms = i64::try_from(ms).ok()?;
    let ts = Timestamp::from_millisecond(ms).ok()?;
    Some(Offset::UTC.to_datetime(ts))
}

/// Months since year 0 of a date: a single number to add cycle lengths to.
fn month_index(d: Date) -> i64 {
    i64::from(d.year()) * 12 + i64::from(d.month()) - 1
}

/// Start of cycle `k` given the anchor already in civil form.
fn start_from(anchor: DateTime, period: Period, k: u32) -> Option<u64> {
    let index = month_index(anchor.date()).checked_add(i64::from(k) * period.months())?;
    let year = i16::try_from(index.div_euclid(12)).ok()?;
    // 1..=12, so the cast cannot truncate.
    let month = (index.rem_euclid(12) + 1) as i8;
    let first = Date::new(year, month, 1).ok()?;
    let day = anchor.day().min(first.days_in_month());
    let date = Date::new(year, month, day).ok()?;
    let ts = Offset::UTC
        .to_timestamp(DateTime::from_parts(date, anchor.time()))
        .ok()?;
    u64::try_from(ts.as_millisecond()).ok()
}

/// Start of cycle `k`: anchor + k months (or years) in UTC, counted from the
/// anchor, day clamped to the month's end, time of day (to the millisecond)
/// kept. `k = 0` is the anchor itself. `None` beyond jiff's range (year 9999).
///
/// Anchor Jan 31 10:00 -> k=1 Feb 28 (29 in a leap year) 10:00 -> k=2 Mar 31
/// 10:00. Yearly from Feb 29 2028 -> Feb 28 2029 -> ... -> Feb 29 2032.
pub fn cycle_start_ms(anchor_ms: u64, period: Period, k: u32) -> Option<u64> {
    start_from(civil(anchor_ms)?, period, k)
}

/// The cycle that contains `now_ms`: the largest `k` with
/// `cycle_start_ms(k) <= now_ms`. A cycle includes its start and excludes its
/// end, which is the next cycle's start. `None` if `now_ms` is before the
/// anchor or out of range.
///
/// Constant time: cycle `k` starts in the calendar month `anchor month + k`
/// (clamping moves the day, never the month), so the month difference between
/// anchor and now is right or one too many; no walking k cycles from an anchor
/// decades back.
pub fn cycle_containing(anchor_ms: u64, period: Period, now_ms: u64) -> Option<u32> {
    if now_ms < anchor_ms {
        return None;
    }
    let anchor = civil(anchor_ms)?;
    let now = civil(now_ms)?;
    let months = month_index(now.date()) - month_index(anchor.date());
    // now >= anchor, so months >= 0.
    let estimate = u32::try_from(months / period.months()).ok()?;
    let mut k = estimate;
    // The estimate's cycle starts in now's month (or year); it can be later
    // in that month than now, never earlier than the previous cycle. A start
    // beyond jiff's range is certainly after now.
    while k > 0 && start_from(anchor, period, k).is_none_or(|s| s > now_ms) {
        k -= 1;
    }
    // Defensive: should the estimate ever be low, step up; at most once in
    // practice, and bounded by reaching a start past now (or past the range).
    while let Some(next) = k.checked_add(1) {
        match start_from(anchor, period, next) {
            Some(s) if s <= now_ms => k = next,
            _ => break,
        }
    }
    Some(k)
}

/// The cycle that contains `now_ms` with its bounds: `(k, start, end)`, where
/// `end` is the start of cycle `k + 1` (exclusive). `None` as for
/// [`cycle_containing`], or if that end is out of range.
pub fn cycle_bounds(anchor_ms: u64, period: Period, now_ms: u64) -> Option<(u32, u64, u64)> {
    let k = cycle_containing(anchor_ms, period, now_ms)?;
    let anchor = civil(anchor_ms)?;
    let start = start_from(anchor, period, k)?;
    let end = start_from(anchor, period, k.checked_add(1)?)?;
    Some((k, start, end))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Milliseconds of a UTC date-time written as "2026-01-31T10:00:00".
    fn ms(s: &str) -> u64 {
        let dt: DateTime = s.parse().unwrap();
        Offset::UTC.to_timestamp(dt).unwrap().as_millisecond() as u64
    }

    #[test]
    fn month_end_clamps_and_recovers() {
        let a = ms("2026-01-31T10:00:00");
        assert_eq!(cycle_start_ms(a, Period::Month, 0), Some(a));
        assert_eq!(
            cycle_start_ms(a, Period::Month, 1),
            Some(ms("2026-02-28T10:00:00"))
        );
        assert_eq!(
            cycle_start_ms(a, Period::Month, 2),
            Some(ms("2026-03-31T10:00:00"))
        );
        assert_eq!(
            cycle_start_ms(a, Period::Month, 3),
            Some(ms("2026-04-30T10:00:00"))
        );
        assert_eq!(
            cycle_start_ms(a, Period::Month, 12),
            Some(ms("2027-01-31T10:00:00"))
        );
        let leap = ms("2028-01-31T10:00:00");
        assert_eq!(
            cycle_start_ms(leap, Period::Month, 1),
            Some(ms("2028-02-29T10:00:00"))
        );
        assert_eq!(
            cycle_start_ms(leap, Period::Month, 2),
            Some(ms("2028-03-31T10:00:00"))
        );
    }

    #[test]
    fn yearly_from_leap_day() {
        let a = ms("2028-02-29T00:00:00");
        assert_eq!(
            cycle_start_ms(a, Period::Year, 1),
            Some(ms("2029-02-28T00:00:00"))
        );
        assert_eq!(
            cycle_start_ms(a, Period::Year, 3),
            Some(ms("2031-02-28T00:00:00"))
        );
        assert_eq!(
            cycle_start_ms(a, Period::Year, 4),
            Some(ms("2032-02-29T00:00:00"))
        );
    }

    #[test]
    fn time_of_day_is_kept_to_the_millisecond() {
        let a = ms("2026-05-15T23:59:59.123");
        assert_eq!(
            cycle_start_ms(a, Period::Month, 1),
            Some(ms("2026-06-15T23:59:59.123"))
        );
        assert_eq!(
            cycle_start_ms(a, Period::Year, 2),
            Some(ms("2028-05-15T23:59:59.123"))
        );
        // Across the year boundary
        let d = ms("2026-12-31T12:34:56.789");
        assert_eq!(
            cycle_start_ms(d, Period::Month, 2),
            Some(ms("2027-02-28T12:34:56.789"))
        );
    }

    #[test]
    fn boundaries_start_in_end_out() {
        let a = ms("2026-01-31T10:00:00");
        let feb = ms("2026-02-28T10:00:00");
        assert_eq!(cycle_containing(a, Period::Month, a - 1), None);
        assert_eq!(cycle_containing(a, Period::Month, a), Some(0));
        assert_eq!(cycle_containing(a, Period::Month, feb - 1), Some(0));
        assert_eq!(cycle_containing(a, Period::Month, feb), Some(1));
        // Same month as the k=1 start but earlier in it: still cycle 0.
        assert_eq!(
            cycle_containing(a, Period::Month, ms("2026-02-01T00:00:00")),
            Some(0)
        );
        assert_eq!(
            cycle_containing(a, Period::Month, ms("2026-03-31T09:59:59.999")),
            Some(1)
        );
        assert_eq!(
            cycle_containing(a, Period::Month, ms("2026-03-31T10:00:00")),
            Some(2)
        );
        assert_eq!(
            cycle_bounds(a, Period::Month, feb),
            Some((1, feb, ms("2026-03-31T10:00:00")))
        );

        let y = ms("2028-02-29T00:00:00");
        assert_eq!(
            cycle_containing(y, Period::Year, ms("2029-02-27T23:59:59.999")),
            Some(0)
        );
        assert_eq!(
            cycle_containing(y, Period::Year, ms("2029-02-28T00:00:00")),
            Some(1)
        );
        assert_eq!(
            cycle_containing(y, Period::Year, ms("2029-12-31T00:00:00")),
            Some(1)
        );
    }

    #[test]
    fn far_past_anchor_is_direct() {
        let a = ms("1976-03-31T08:00:00");
        let now = ms("2026-03-30T12:00:00");
        let t = std::time::Instant::now();
        for _ in 0..10_000 {
            assert_eq!(cycle_containing(a, Period::Month, now), Some(599));
            assert_eq!(cycle_containing(a, Period::Year, now), Some(49));
        }
        // 20 000 lookups of a 50-year-old anchor: a linear walk would be 6 M steps.
        assert!(t.elapsed() < std::time::Duration::from_secs(2));
        assert_eq!(
            cycle_start_ms(a, Period::Month, 599),
            Some(ms("2026-02-28T08:00:00"))
        );
        assert_eq!(
            cycle_containing(a, Period::Month, ms("2026-03-31T08:00:00")),
            Some(600)
        );
        assert_eq!(cycle_containing(0, Period::Month, now), Some(674));
    }

    #[test]
    fn out_of_range_is_none() {
        assert_eq!(cycle_start_ms(u64::MAX, Period::Month, 0), None);
        assert_eq!(cycle_start_ms(0, Period::Month, u32::MAX), None);
        assert_eq!(cycle_start_ms(0, Period::Year, 8_030), None); // year 10000
        assert!(cycle_start_ms(0, Period::Year, 8_029).is_some());
        assert!(cycle_start_ms(0, Period::Year, 7_000).is_some());
        assert_eq!(cycle_containing(0, Period::Month, u64::MAX), None);
        let last = ms("9999-06-15T00:00:00");
        assert!(cycle_containing(0, Period::Month, last).is_some());
        assert_eq!(cycle_bounds(last, Period::Year, last), None);
    }

    fn period() -> impl Strategy<Value = Period> {
        prop_oneof![Just(Period::Month), Just(Period::Year)]
    }

    proptest! {
        #[test]
        fn starts_are_found_again_and_increase(
            // 1970 .. about 2100, any millisecond
            anchor in 0u64..4_102_444_800_000,
            p in period(),
            k in 0u32..1_200,
        ) {
            let k = if p == Period::Year { k / 12 } else { k };
            let s = cycle_start_ms(anchor, p, k).unwrap();
            let next = cycle_start_ms(anchor, p, k + 1).unwrap();
            prop_assert!(next > s);
            prop_assert_eq!(cycle_containing(anchor, p, s), Some(k));
            prop_assert_eq!(cycle_containing(anchor, p, next - 1), Some(k));
            prop_assert_eq!(cycle_containing(anchor, p, next), Some(k + 1));
        }

        #[test]
        fn containing_brackets_now(
            anchor in 0u64..4_102_444_800_000,
            p in period(),
            delta in 0u64..3_000_000_000_000,
        ) {
            let now = anchor + delta;
            let (k, start, end) = cycle_bounds(anchor, p, now).unwrap();
            prop_assert!(start <= now && now < end);
            prop_assert_eq!(cycle_start_ms(anchor, p, k), Some(start));
        }
    }
}
