//! Adaptive producer linger: a realtime producer sends each message at once (`linger.ms=0`)
//! while its traffic is light, and lets librdkafka batch for a few milliseconds once the rate
//! it is given passes a threshold.
//!
//! Why: the Kafka floor sweep (BENCHMARKS.md) found no single linger best at every rate on a
//! 2-core host. At 1,000 messages/s `linger.ms=0` has the lowest median; from about 10,000 a
//! few milliseconds cut the tail several times over, cost each stage far less CPU (a stage pays
//! per produce request, not per message) and are what sustains 50,000-100,000.
//!
//! How: librdkafka cannot change `linger.ms` on a live producer, so an adaptive producer is two
//! clients of the same configuration but the linger, and messages go to one at a time. A
//! [`Meter`] measures the rate in windows of 200 ms: one window at or above the threshold
//! switches to the batching client; a second of windows under half of it (or a second without
//! any message) switches back. A switch first waits (under a write lock, so nothing is queued
//! meanwhile) until every message queued on the client being left is delivered: a key's
//! messages stay in order across a switch. A switch that cannot drain within 2 s (broker
//! unreachable) is abandoned, the old client stays in use, and no switch is tried for 10 s.

use rdkafka::producer::{Producer as _, ProducerContext, ThreadedProducer};
use rdkafka::util::Timeout;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::{RwLock, RwLockReadGuard};

/// The rate meter's window.
const WINDOW: Duration = Duration::from_millis(200);
/// How long the rate must stay under half the threshold before the linger drops to 0.
const CALM: Duration = Duration::from_secs(1);
/// How long a switch may wait for the old client's messages to be delivered.
const DRAIN: Duration = Duration::from_secs(2);
/// How long after a switch that could not drain the next one is tried.
const RETRY: Duration = Duration::from_secs(10);

/// How a realtime producer lingers (`--kafka-linger`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Linger {
    /// 0 ms while the rate is under the threshold, the batching linger above it.
    Auto,
    /// Always this many milliseconds.
    Fixed(f64),
}

impl std::str::FromStr for Linger {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let s = s.trim();
        if s.eq_ignore_ascii_case("auto") {
            return Ok(Self::Auto);
        }
        match s.strip_suffix("ms").unwrap_or(s).trim().parse::<f64>() {
            Ok(ms) if (0.0..=900_000.0).contains(&ms) => Ok(Self::Fixed(ms)),
            _ => Err(format!(
                "{s:?} is neither `auto` nor a linger in milliseconds (0 to 900000)"
            )),
        }
    }
}

/// The linger settings of the stages' realtime producers.
#[derive(Debug, Clone, clap::Args)]
pub struct LingerArgs {
    /// `auto` sends each message at once while a producer is given fewer than
    /// `--kafka-linger-auto-rate` messages/s and batches for `--kafka-linger-auto-ms` above it;
    /// a number of milliseconds fixes the linger. A `linger.ms` in `--kafka-property` wins
    /// over both.
    #[arg(
        long = "kafka-linger",
        env = "TICKFLOW_KAFKA_LINGER",
        default_value = "auto"
    )]
    pub linger: Linger,
    /// Messages per second (per producer) from which the automatic linger batches; it stops
    /// after a second under half of it.
    #[arg(
        long = "kafka-linger-auto-rate",
        env = "TICKFLOW_KAFKA_LINGER_AUTO_RATE",
        default_value_t = DEFAULT_AUTO_RATE
    )]
    pub auto_rate: u32,
    /// The automatic linger's batching `linger.ms`, in milliseconds.
    #[arg(
        long = "kafka-linger-auto-ms",
        env = "TICKFLOW_KAFKA_LINGER_AUTO_MS",
        default_value_t = DEFAULT_AUTO_MS
    )]
    pub auto_ms: f64,
}

/// The default of `--kafka-linger-auto-rate`.
pub const DEFAULT_AUTO_RATE: u32 = 8_000;
/// The default of `--kafka-linger-auto-ms`.
pub const DEFAULT_AUTO_MS: f64 = 5.0;

impl Default for LingerArgs {
    fn default() -> Self {
        Self {
            linger: Linger::Auto,
            auto_rate: DEFAULT_AUTO_RATE,
            auto_ms: DEFAULT_AUTO_MS,
        }
    }
}

/// Decides, from the messages a producer is given, whether it should batch. Pure logic: the
/// caller passes the time.
#[derive(Debug)]
pub(crate) struct Meter {
    /// Messages per second at which batching starts; it stops under half of it.
    threshold: f64,
    start: Instant,
    count: u64,
    /// When messages were last given.
    last: Instant,
    batching: bool,
    calm: Duration,
}

impl Meter {
    pub(crate) fn new(threshold: u32, now: Instant) -> Self {
        Self {
            threshold: f64::from(threshold.max(1)),
            start: now,
            count: 0,
            last: now,
            batching: false,
            calm: Duration::ZERO,
        }
    }

    /// Counts `n` messages given at `now`; at the end of a window, returns whether the
    /// producer should batch from now on.
    pub(crate) fn record(&mut self, n: u64, now: Instant) -> Option<bool> {
        let idle = now.saturating_duration_since(self.last);
        self.last = now;
        if idle >= CALM {
            // Nothing for a calm second: whatever the window before held, the rate is low now.
            self.start = now;
            self.count = n;
            self.batching = false;
            self.calm = Duration::ZERO;
            return Some(false);
        }
        self.count += n;
        let elapsed = now.saturating_duration_since(self.start);
        if elapsed < WINDOW {
            return None;
        }
        let rate = self.count as f64 / elapsed.as_secs_f64();
        self.start = now;
        self.count = 0;
        if !self.batching {
            self.batching = rate >= self.threshold;
        } else if rate < self.threshold / 2.0 {
            self.calm += elapsed;
            if self.calm >= CALM {
                self.batching = false;
                self.calm = Duration::ZERO;
            }
        } else {
            self.calm = Duration::ZERO;
        }
        Some(self.batching)
    }
}

/// The batching client of an adaptive producer and what decides when to use it.
struct Batching<C: ProducerContext + 'static> {
    client: Arc<ThreadedProducer<C>>,
    linger_ms: f64,
    meter: Mutex<Meter>,
    /// Whether messages go to `client` (true) or to the immediate one; written only by a
    /// switch, once the client being left has delivered everything queued on it.
    active: RwLock<bool>,
    /// No switch is tried before this instant (after one that could not drain).
    retry_after: Mutex<Option<Instant>>,
}

/// One realtime producer: a client with `linger.ms=0` and, in the automatic mode, a batching
/// client used while the rate is high (see the module docs).
pub(crate) struct Lingering<C: ProducerContext + 'static> {
    immediate: Arc<ThreadedProducer<C>>,
    batching: Option<Batching<C>>,
}

/// The client to queue on, held while queuing so that no switch happens meanwhile.
pub(crate) struct Lease<'a, C: ProducerContext + 'static> {
    pub(crate) client: &'a ThreadedProducer<C>,
    _guard: Option<RwLockReadGuard<'a, bool>>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl<C: ProducerContext + 'static> Lingering<C> {
    /// A producer that always uses `client`.
    pub(crate) fn fixed(client: ThreadedProducer<C>) -> Self {
        Self {
            immediate: Arc::new(client),
            batching: None,
        }
    }

    /// An adaptive producer: `immediate` (`linger.ms=0`) under `threshold` messages/s,
    /// `batching` (`linger.ms=linger_ms`) above it.
    pub(crate) fn auto(
        immediate: ThreadedProducer<C>,
        batching: ThreadedProducer<C>,
        linger_ms: f64,
        threshold: u32,
    ) -> Self {
        metrics::gauge!("tickflow_kafka_producer_linger_ms").set(0.0);
        Self {
            immediate: Arc::new(immediate),
            batching: Some(Batching {
                client: Arc::new(batching),
                linger_ms,
                meter: Mutex::new(Meter::new(threshold, Instant::now())),
                active: RwLock::new(false),
                retry_after: Mutex::new(None),
            }),
        }
    }

    /// The client for metadata requests.
    pub(crate) fn any(&self) -> &ThreadedProducer<C> {
        &self.immediate
    }

    /// Returns whether the batching client is in use.
    pub fn is_batching(&self) -> bool {
        self.batching
            .as_ref()
            .is_some_and(|b| b.active.try_read().is_ok_and(|g| *g))
    }

    /// Counts `n` messages about to be queued, switches clients if the rate says so, and
    /// returns the client to queue them on.
    pub(crate) async fn lease(&self, n: usize) -> Lease<'_, C> {
        let Some(b) = &self.batching else {
            return Lease {
                client: &self.immediate,
                _guard: None,
            };
        };
        let now = Instant::now();
        let want = lock(&b.meter).record(n as u64, now);
        let mut guard = b.active.read().await;
        if let Some(want) =
            want.filter(|w| *w != *guard && lock(&b.retry_after).is_none_or(|t| now >= t))
        {
            drop(guard);
            self.switch(b, want).await;
            guard = b.active.read().await;
        }
        let client = if *guard { &b.client } else { &self.immediate };
        Lease {
            client,
            _guard: Some(guard),
        }
    }

    /// Moves to the batching client (`to_batching`) or back, once the client in use has
    /// delivered what is queued on it.
    async fn switch(&self, b: &Batching<C>, to_batching: bool) {
        let mut active = b.active.write().await;
        if *active == to_batching {
            return; // another sender switched meanwhile
        }
        let leaving = if *active { &b.client } else { &self.immediate };
        let started = Instant::now();
        // Polled rather than `flush`ed: librdkafka's flush waits on a poll that the client's
        // own polling thread may serve first, which made it return up to 100 ms late.
        let drained = loop {
            if leaving.in_flight_count() <= 0 {
                break Ok(());
            }
            if started.elapsed() >= DRAIN {
                break Err(leaving.in_flight_count());
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        };
        match drained {
            Ok(()) => {
                *active = to_batching;
                let linger = if to_batching { b.linger_ms } else { 0.0 };
                metrics::gauge!("tickflow_kafka_producer_linger_ms").set(linger);
                metrics::counter!("tickflow_kafka_producer_linger_switches_total").increment(1);
                tracing::info!(
                    linger_ms = linger,
                    drained_in = ?started.elapsed(),
                    "producer linger switched"
                );
            }
            Err(left) => {
                *lock(&b.retry_after) = Some(Instant::now() + RETRY);
                tracing::warn!(
                    in_flight = left,
                    "producer linger not switched: queued messages did not drain within 2 s"
                );
            }
        }
    }

    /// Waits until every message queued on either client is delivered or failed (blocking).
    pub(crate) fn flush_blocking(&self, timeout: Duration) -> rdkafka::error::KafkaResult<()> {
        let deadline = Instant::now() + timeout;
        self.immediate.flush(Timeout::After(timeout))?;
        if let Some(b) = &self.batching {
            b.client.flush(Timeout::After(
                deadline.saturating_duration_since(Instant::now()),
            ))?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_linger_parses_auto_or_milliseconds() {
        assert_eq!("auto".parse::<Linger>(), Ok(Linger::Auto));
        assert_eq!(" AUTO ".parse::<Linger>(), Ok(Linger::Auto));
        assert_eq!("0".parse::<Linger>(), Ok(Linger::Fixed(0.0)));
        assert_eq!("2.5ms".parse::<Linger>(), Ok(Linger::Fixed(2.5)));
        assert!("-1".parse::<Linger>().is_err());
        assert!("soon".parse::<Linger>().is_err());
    }

    /// Feeds `rate` messages/s for `secs` seconds in 1 ms steps; returns the last decision.
    fn feed(m: &mut Meter, t: &mut Instant, rate: u64, secs: f64) -> Option<bool> {
        let mut last = None;
        let steps = (secs * 1000.0) as u64;
        let mut sent = 0;
        for i in 1..=steps {
            *t += Duration::from_millis(1);
            let due = rate * i / 1000;
            if let Some(d) = m.record(due - sent, *t) {
                last = Some(d);
            }
            sent = due;
        }
        last
    }

    #[test]
    fn the_meter_batches_above_the_threshold_and_stops_after_a_calm_second() {
        let mut t = Instant::now();
        let mut m = Meter::new(4_000, t);
        assert_eq!(feed(&mut m, &mut t, 1_000, 2.0), Some(false), "light");
        assert_eq!(feed(&mut m, &mut t, 3_900, 2.0), Some(false), "just under");
        assert_eq!(
            feed(&mut m, &mut t, 10_000, 0.2),
            Some(true),
            "one window above"
        );
        assert_eq!(
            feed(&mut m, &mut t, 2_500, 3.0),
            Some(true),
            "between half the threshold and the threshold: stays"
        );
        assert_eq!(
            feed(&mut m, &mut t, 1_000, 0.6),
            Some(true),
            "not calm for a second yet"
        );
        // A burst resets the calm spell.
        assert_eq!(feed(&mut m, &mut t, 10_000, 0.2), Some(true));
        assert_eq!(feed(&mut m, &mut t, 1_000, 0.8), Some(true));
        assert_eq!(feed(&mut m, &mut t, 1_000, 0.4), Some(false), "calm");
    }

    #[test]
    fn a_message_after_an_idle_spell_goes_out_at_once() {
        let mut t = Instant::now();
        let mut m = Meter::new(4_000, t);
        assert_eq!(feed(&mut m, &mut t, 50_000, 0.4), Some(true));
        t += Duration::from_secs(5);
        assert_eq!(m.record(1, t), Some(false), "5 s without a message is calm");

        // A burst whose last window is still open when the feed stops: the idle second
        // decides, not the burst's average over the open window and the silence.
        let mut m = Meter::new(4_000, t);
        assert_eq!(feed(&mut m, &mut t, 20_000, 0.3), Some(true));
        m.record(5_000, t);
        t += Duration::from_millis(1_500);
        assert_eq!(m.record(1, t), Some(false));
        assert_eq!(
            feed(&mut m, &mut t, 50, 0.4),
            Some(false),
            "and stays light"
        );
    }
}
