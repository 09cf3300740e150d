//! The circuit breaker between the persister and its database. Closed: writes go through and a
//! failed one is retried after a short backoff. After `threshold` consecutive connection
//! failures it opens: the caller pauses its consumer (the data waits in Kafka) and only probes
//! the database, half-open, after an exponentially growing, jittered delay. A successful probe
//! closes it again and the consumer resumes and catches up.

use std::time::Duration;
use tick_core::backoff::Backoff;

/// The breaker's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BreakerState {
    /// Writes go through.
    Closed,
    /// The database is being probed with one write.
    HalfOpen,
    /// The database is considered down: intake is paused until the next probe.
    Open,
}

impl BreakerState {
    /// The value of the `tickflow_persister_breaker_state` gauge: 0 closed, 1 half-open, 2 open.
    pub fn gauge(self) -> f64 {
        match self {
            BreakerState::Closed => 0.0,
            BreakerState::HalfOpen => 1.0,
            BreakerState::Open => 2.0,
        }
    }

    /// Its name in logs.
    pub fn as_str(self) -> &'static str {
        match self {
            BreakerState::Closed => "closed",
            BreakerState::HalfOpen => "half-open",
            BreakerState::Open => "open",
        }
    }
}

/// When the breaker opens and how it probes.
#[derive(Debug, Clone, Copy, clap::Args)]
pub struct BreakerArgs {
    /// Consecutive connection failures that open the circuit breaker.
    #[arg(long, env = "TICKFLOW_BREAKER_FAILURES", default_value_t = 3)]
    pub breaker_failures: u32,
    /// First delay before a half-open probe; it doubles (with jitter) up to --breaker-max-delay.
    #[arg(long, env = "TICKFLOW_BREAKER_DELAY", value_parser = humantime::parse_duration, default_value = "500ms")]
    pub breaker_delay: Duration,
    /// Longest delay between half-open probes.
    #[arg(long, env = "TICKFLOW_BREAKER_MAX_DELAY", value_parser = humantime::parse_duration, default_value = "15s")]
    pub breaker_max_delay: Duration,
}

impl Default for BreakerArgs {
    fn default() -> Self {
        Self {
            breaker_failures: 3,
            breaker_delay: Duration::from_millis(500),
            breaker_max_delay: Duration::from_secs(15),
        }
    }
}

/// The state machine; the caller performs the writes, the waits and the pausing.
#[derive(Debug, Clone)]
pub struct Breaker {
    state: BreakerState,
    threshold: u32,
    failures: u32,
    /// Between retries while still closed.
    retry: Backoff,
    /// Between half-open probes.
    probe: Backoff,
}

impl Breaker {
    /// Returns a closed breaker.
    pub fn new(args: BreakerArgs) -> Self {
        Self {
            state: BreakerState::Closed,
            threshold: args.breaker_failures.max(1),
            failures: 0,
            retry: Backoff::new(Duration::from_millis(50), Duration::from_secs(1)),
            probe: Backoff::new(args.breaker_delay, args.breaker_max_delay),
        }
    }

    /// Returns the current state.
    pub fn state(&self) -> BreakerState {
        self.state
    }

    /// Records a successful write. Returns the state it left when that closes the breaker.
    pub fn on_success(&mut self) -> Option<BreakerState> {
        self.failures = 0;
        self.retry.reset();
        self.probe.reset();
        let was = std::mem::replace(&mut self.state, BreakerState::Closed);
        (was != BreakerState::Closed).then_some(was)
    }

    /// Records a connection failure. Returns how long to wait before the next attempt, and
    /// `true` when the breaker has just opened (from closed or from a failed probe).
    pub fn on_failure(&mut self) -> (Duration, bool) {
        self.failures = self.failures.saturating_add(1);
        match self.state {
            BreakerState::Closed if self.failures < self.threshold => {
                (self.retry.next_delay(), false)
            }
            BreakerState::Closed | BreakerState::HalfOpen => {
                self.state = BreakerState::Open;
                (self.probe.next_delay(), true)
            }
            BreakerState::Open => (self.probe.next_delay(), false),
        }
    }

    /// Called when the wait after a failure is over, before the next attempt: an open breaker
    /// turns half-open (the attempt is a probe). Returns whether the state changed.
    pub fn before_attempt(&mut self) -> bool {
        if self.state == BreakerState::Open {
            self.state = BreakerState::HalfOpen;
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use BreakerState::*;

    fn breaker() -> Breaker {
        Breaker::new(BreakerArgs {
            breaker_failures: 3,
            breaker_delay: Duration::from_millis(400),
            breaker_max_delay: Duration::from_millis(1600),
        })
    }

    #[test]
    fn opens_after_the_threshold_of_consecutive_failures() {
        let mut b = breaker();
        assert!(!b.on_failure().1);
        assert!(!b.before_attempt());
        assert!(!b.on_failure().1);
        assert_eq!(b.state(), Closed);
        let (wait, opened) = b.on_failure();
        assert!(opened);
        assert_eq!(b.state(), Open);
        assert!(wait >= Duration::from_millis(200) && wait <= Duration::from_millis(400));
    }

    #[test]
    fn a_success_in_between_resets_the_count() {
        let mut b = breaker();
        b.on_failure();
        b.on_failure();
        assert_eq!(b.on_success(), None);
        b.on_failure();
        b.on_failure();
        assert_eq!(b.state(), Closed);
    }

    #[test]
    fn probes_half_open_with_growing_delays_and_closes_on_success() {
        let mut b = breaker();
        for _ in 0..3 {
            b.on_failure();
        }
        assert!(b.before_attempt());
        assert_eq!(b.state(), HalfOpen);
        // A failed probe opens it again with a longer delay (jitter stays within half a step).
        let (wait, reopened) = b.on_failure();
        assert!(reopened && b.state() == Open);
        assert!(wait >= Duration::from_millis(400) && wait <= Duration::from_millis(800));
        b.before_attempt();
        let (wait, _) = b.on_failure();
        assert!(wait >= Duration::from_millis(800));
        b.before_attempt();
        let (wait, _) = b.on_failure();
        assert!(wait <= Duration::from_millis(1600), "capped: {wait:?}");
        b.before_attempt();
        assert_eq!(b.on_success(), Some(HalfOpen));
        assert_eq!(b.state(), Closed);
        // Closed again: the count starts over.
        b.on_failure();
        assert_eq!(b.state(), Closed);
    }
}
