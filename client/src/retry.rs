//! When and how long to retry a command.

use std::time::Duration;

/// Bounded exponential backoff for commands that failed with a retryable
/// error ([`crate::Error::is_retryable`]: I/O failures, timeouts, `BUSY`).
///
/// Retrying every command is safe because every creditd mutation carries an
/// id: a retry of a change that was applied (its reply lost) applies nothing
/// and returns the first reply. CAPTURE is cumulative, EXTEND moves the
/// expiry to now plus the TTL, plan commands set state, and reads change
/// nothing, so these repeat harmlessly as well.
///
/// Both the number of attempts and the total time are bounded, so a gateway
/// request never hangs on a creditd that is down: past the budget the last
/// error is returned, and the caller decides (fail the job, or keep the id and
/// retry later from a queue).
#[derive(Clone, Debug)]
pub struct RetryPolicy {
    /// Attempts in all, the first one included (at least 1).
    pub max_attempts: u32,
    /// The wait before the first retry; each later wait doubles.
    pub initial_backoff: Duration,
    /// The longest single wait.
    pub max_backoff: Duration,
    /// The time all attempts and waits may take together. An attempt still
    /// running when it ends is abandoned with an [`crate::Error::Io`]
    /// timeout (its outcome unknown, as for any timeout).
    pub max_elapsed: Duration,
}

impl Default for RetryPolicy {
    /// 6 attempts, waits of about 50 ms, 100 ms, 200 ms, 400 ms and 800 ms,
    /// at most 20 s in all: enough to ride out a creditd restart or a short
    /// `BUSY` spell, short enough for a request path.
    fn default() -> Self {
        RetryPolicy {
            max_attempts: 6,
            initial_backoff: Duration::from_millis(50),
            max_backoff: Duration::from_secs(1),
            max_elapsed: Duration::from_secs(20),
        }
    }
}

impl RetryPolicy {
    /// One attempt, no retries.
    pub fn never() -> Self {
        RetryPolicy {
            max_attempts: 1,
            ..RetryPolicy::default()
        }
    }

    /// The wait before retry number `retry` (1 for the first retry): the
    /// capped exponential step, of which the upper half is random, so that
    /// many gateways retrying after the same failure spread out instead of
    /// arriving together.
    pub fn backoff(&self, retry: u32) -> Duration {
        let doublings = retry.saturating_sub(1).min(31);
        let step = self
            .initial_backoff
            .saturating_mul(1 << doublings)
            .min(self.max_backoff);
        let half = step / 2;
        half + half.mul_f64(rand::random::<f64>())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn waits_double_up_to_the_cap_with_jitter_in_the_upper_half() {
        let p = RetryPolicy {
            max_attempts: 10,
            initial_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_millis(700),
            max_elapsed: Duration::from_secs(10),
        };
        for (retry, step_ms) in [
            (1, 100),
            (2, 200),
            (3, 400),
            (4, 700),
            (9, 700),
            (1000, 700),
        ] {
            for _ in 0..100 {
                let wait = p.backoff(retry);
                let step = Duration::from_millis(step_ms);
                assert!(wait >= step / 2 && wait <= step, "retry {retry}: {wait:?}");
            }
        }
    }

    #[test]
    fn never_is_one_attempt() {
        assert_eq!(RetryPolicy::never().max_attempts, 1);
    }
}
