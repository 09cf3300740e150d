//! Exponential backoff with jitter, for reconnecting to a feed or probing a database.

use rand::Rng;
use std::time::Duration;

/// Delays that double from `initial` up to `max`, each drawn uniformly from half to the whole
/// of the current step (so many clients that failed together do not retry together).
#[derive(Debug, Clone)]
pub struct Backoff {
    initial: Duration,
    max: Duration,
    step: Duration,
}

impl Backoff {
    /// Returns a backoff starting at `initial` and capped at `max`.
    pub fn new(initial: Duration, max: Duration) -> Self {
        let initial = initial.max(Duration::from_millis(1));
        Self {
            initial,
            max: max.max(initial),
            step: initial,
        }
    }

    /// Returns the next delay and doubles the step.
    pub fn next_delay(&mut self) -> Duration {
        let d = self.step.mul_f64(rand::rng().random_range(0.5..=1.0));
        self.step = (self.step * 2).min(self.max);
        d
    }

    /// Starts again from the initial step (after a success).
    pub fn reset(&mut self) {
        self.step = self.initial;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doubles_within_jitter_up_to_the_cap_and_resets() {
        let ms = Duration::from_millis;
        let mut b = Backoff::new(ms(100), ms(1000));
        for step in [100, 200, 400, 800, 1000, 1000] {
            let d = b.next_delay();
            assert!(
                d >= ms(step / 2) && d <= ms(step),
                "{d:?} outside [{}, {step}] ms",
                step / 2
            );
        }
        b.reset();
        assert!(b.next_delay() <= ms(100));
    }
}
