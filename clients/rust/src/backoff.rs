//! Full-jitter exponential backoff: a random wait up to a doubling, capped ceiling, so clients
//! refused together do not come back together.

use std::time::Duration;

/// Waits before reconnect attempts.
#[derive(Debug, Clone)]
pub struct Backoff {
    base: Duration,
    max: Duration,
    ceiling: Duration,
}

impl Backoff {
    /// Ceilings start at `base` and double up to `max`.
    pub fn new(base: Duration, max: Duration) -> Self {
        Backoff {
            base,
            max,
            ceiling: base,
        }
    }

    /// The next wait: uniform in `[0, ceiling]`; the ceiling then doubles (capped).
    pub fn next_delay(&mut self) -> Duration {
        let d = self.ceiling.mul_f64(rand::random::<f64>());
        self.ceiling = (self.ceiling * 2).min(self.max);
        d
    }

    /// Back to the first ceiling (after a success).
    pub fn reset(&mut self) {
        self.ceiling = self.base;
    }
}

impl Default for Backoff {
    /// 50 ms doubling to 5 s.
    fn default() -> Self {
        Backoff::new(Duration::from_millis(50), Duration::from_secs(5))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_stay_under_a_doubling_capped_ceiling() {
        let mut b = Backoff::new(Duration::from_millis(10), Duration::from_millis(80));
        for ceiling in [10, 20, 40, 80, 80, 80] {
            let d = b.next_delay();
            assert!(d <= Duration::from_millis(ceiling), "{d:?} > {ceiling} ms");
        }
        b.reset();
        assert!(b.next_delay() <= Duration::from_millis(10));
    }
}
