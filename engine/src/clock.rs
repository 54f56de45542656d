//! Time, injected. The engine never reads the wall clock itself: every
//! operation asks its [`Clock`], so tests (and `--test-clock`) can move time
//! deterministically and recovery can replay records at the instant they happened.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

/// A source of "now" in Unix milliseconds.
pub trait Clock: Send + Sync {
    fn now_ms(&self) -> u64;
}

/// The wall clock.
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now_ms(&self) -> u64 {
        wall_clock_ms()
    }
}

/// Milliseconds since the Unix epoch from the system clock (0 if it is before 1970).
pub fn wall_clock_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// A clock that only moves when told to, and never backwards.
#[derive(Debug)]
pub struct TestClock {
    now_ms: AtomicU64,
}

impl TestClock {
    pub fn new(start_ms: u64) -> Self {
        TestClock {
            now_ms: AtomicU64::new(start_ms),
        }
    }

    /// Moves the clock to `at_ms`. Returns `Err(now)` if that would go backwards.
    pub fn set(&self, at_ms: u64) -> Result<u64, u64> {
        let mut current = self.now_ms.load(Ordering::Acquire);
        loop {
            if at_ms < current {
                return Err(current);
            }
            match self
                .now_ms
                .compare_exchange(current, at_ms, Ordering::AcqRel, Ordering::Acquire)
            {
                Ok(_) => return Ok(at_ms),
                Err(seen) => current = seen,
            }
        }
    }

    /// Advances the clock by `delta_ms` (saturating). Returns the new now.
    pub fn advance(&self, delta_ms: u64) -> u64 {
        let previous = self
            .now_ms
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                Some(n.saturating_add(delta_ms))
            })
            .unwrap_or_else(|n| n);
        previous.saturating_add(delta_ms)
    }
}

impl Clock for TestClock {
    fn now_ms(&self) -> u64 {
        self.now_ms.load(Ordering::Acquire)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_clock_never_goes_backwards() {
        let clock = TestClock::new(1_000);
        assert_eq!(clock.set(2_000), Ok(2_000));
        assert_eq!(clock.set(1_500), Err(2_000));
        assert_eq!(clock.advance(10), 2_010);
        assert_eq!(clock.now_ms(), 2_010);
    }
}
