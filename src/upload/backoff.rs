//! Exponential backoff with full jitter, as the reference's state machine retries
//! (docs/kvs-protocol.md §7.3): wait a random time in `[0, min(cap, base × 2^n))`.

use std::time::Duration;

use rand::RngExt;

#[derive(Debug, Clone)]
pub struct Backoff {
    base: Duration,
    cap: Duration,
    attempt: u32,
}

impl Default for Backoff {
    fn default() -> Self {
        Self::new(Duration::from_millis(100), Duration::from_secs(10))
    }
}

impl Backoff {
    pub fn new(base: Duration, cap: Duration) -> Self {
        Self {
            base,
            cap,
            attempt: 0,
        }
    }

    /// Number of waits handed out since the last reset.
    pub fn attempts(&self) -> u32 {
        self.attempt
    }

    /// The upper bound of the next wait.
    pub fn ceiling(&self) -> Duration {
        let factor = 1u32.checked_shl(self.attempt.min(30)).unwrap_or(u32::MAX);
        self.base.saturating_mul(factor).min(self.cap)
    }

    /// The next wait: uniformly random below the ceiling, which then doubles.
    pub fn next_delay(&mut self) -> Duration {
        let ceiling = self.ceiling();
        self.attempt = self.attempt.saturating_add(1);
        let nanos = ceiling.as_nanos() as u64;
        if nanos == 0 {
            return Duration::ZERO;
        }
        Duration::from_nanos(rand::rng().random_range(0..nanos))
    }

    pub fn reset(&mut self) {
        self.attempt = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ceiling_doubles_up_to_the_cap_and_delays_stay_below() {
        let mut b = Backoff::default();
        let mut ceilings = Vec::new();
        for _ in 0..10 {
            let c = b.ceiling();
            ceilings.push(c.as_millis());
            assert!(b.next_delay() < c);
        }
        assert_eq!(
            ceilings,
            vec![100, 200, 400, 800, 1600, 3200, 6400, 10_000, 10_000, 10_000]
        );
        b.reset();
        assert_eq!(b.ceiling(), Duration::from_millis(100));
        assert_eq!(b.attempts(), 0);
    }

    #[test]
    fn jitter_spreads_delays() {
        let mut b = Backoff::new(Duration::from_secs(1), Duration::from_secs(1));
        let delays: std::collections::HashSet<_> = (0..20).map(|_| b.next_delay()).collect();
        assert!(delays.len() > 10, "full jitter gives different delays");
    }
}
