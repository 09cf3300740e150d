//! A seeded, reproducible simulated FX feed: a random walk per symbol with realistic spreads,
//! volatility bursts and bursty tick arrival, paced on a fixed schedule (no coordinated
//! omission: ticks due while the publisher was busy are sent at once, never skipped).

use crate::source::{BuildSource, IntakeArgs, SourceContext, SourceError, TickSource};
use async_trait::async_trait;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, StandardNormal};
use std::time::Duration;
use tick_core::{KeyOrdinals, Tick, clock, idempotency_key, instrument};
use tokio::time::Instant;

/// Ticks one call of `next_batch` returns, at most.
const MAX_BATCH: u64 = 64;

/// Settings of the simulated feed.
#[derive(Debug, Clone)]
pub struct SimConfig {
    /// Symbols to simulate.
    pub symbols: Vec<String>,
    /// Total ticks per second over all symbols.
    pub rate: f64,
    /// Random seed: the same seed gives the same prices in the same order.
    pub seed: u64,
    /// Stop after this many ticks (none: run until shutdown).
    pub max_ticks: Option<u64>,
    /// Fraction of ticks deliberately crossed (ask below bid), to exercise the reject path.
    pub bad_ratio: f64,
}

impl Default for SimConfig {
    fn default() -> Self {
        Self {
            symbols: default_symbols(10),
            rate: 1000.0,
            seed: 42,
            max_ticks: None,
            bad_ratio: 0.0,
        }
    }
}

/// Options of the simulated feed (`--source sim`).
#[derive(Debug, Clone, clap::Args)]
pub struct SimArgs {
    /// Simulator: how many known symbols to simulate when --symbols is not given.
    #[arg(long, env = "TICKFLOW_SYMBOL_COUNT", default_value_t = 10)]
    pub symbol_count: usize,
    /// Simulator: ticks per second, over all symbols.
    #[arg(long, env = "TICKFLOW_RATE", default_value_t = 1000.0)]
    pub rate: f64,
    /// Simulator: seed of the feed (same seed, same prices).
    #[arg(long, env = "TICKFLOW_SEED", default_value_t = 42)]
    pub seed: u64,
    /// Simulator: fraction of ticks deliberately crossed, to see the reject path work.
    #[arg(long, env = "TICKFLOW_BAD_RATIO", default_value_t = 0.0)]
    pub bad_ratio: f64,
    /// Simulator: stop after this many ticks.
    #[arg(long, env = "TICKFLOW_MAX_TICKS")]
    pub max_ticks: Option<u64>,
}

impl SimArgs {
    /// Returns the simulator configuration these options describe.
    pub fn to_config(&self, intake: &IntakeArgs) -> SimConfig {
        let symbols = intake.symbols();
        SimConfig {
            symbols: if symbols.is_empty() {
                default_symbols(self.symbol_count)
            } else {
                symbols
            },
            rate: self.rate,
            seed: self.seed,
            max_ticks: self.tick_budget(intake.duration),
            bad_ratio: self.bad_ratio,
        }
    }

    /// How many ticks the feed sends: `--max-ticks`, or `duration` worth at `--rate` (the
    /// fewer of the two), or unbounded. A duration is a tick count rather than a timer so that
    /// `--duration 10s --rate 1000` always means the same 10,000 ticks: a timer started beside
    /// the feed's own clock cut it one tick early or late.
    pub fn tick_budget(&self, duration: Option<Duration>) -> Option<u64> {
        // The epsilon keeps 1000/s x 10 s at 10,000 despite floating-point rounding; flooring
        // never schedules a tick after the duration has ended.
        let by_time =
            duration.map(|d| (self.rate.max(0.0) * d.as_secs_f64() + 1e-6).floor() as u64);
        match (self.max_ticks, by_time) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }
}

#[async_trait]
impl BuildSource for SimArgs {
    async fn build(&self, cx: &SourceContext) -> anyhow::Result<Box<dyn TickSource>> {
        Ok(Box::new(SimSource::new(&self.to_config(&cx.intake))))
    }

    /// The simulator ends by itself after [`SimArgs::tick_budget`] ticks, on its schedule; the
    /// timer is only a backstop, at twice the duration plus 10 s, should the pipeline hold the
    /// feed back that long.
    fn intake_deadline(&self, duration: Duration) -> Duration {
        duration * 2 + Duration::from_secs(10)
    }
}

/// Returns the first `n` known symbols, most traded first.
pub fn default_symbols(n: usize) -> Vec<String> {
    instrument::INSTRUMENTS
        .iter()
        .take(n)
        .map(|i| i.symbol.to_string())
        .collect()
}

struct Walk {
    symbol: String,
    scale: u8,
    mid_points: f64,
    vol_points: f64,
    base_spread: f64,
    burst_left: u32,
}

/// The pure price generator: no clock, no I/O.
pub struct Simulator {
    rng: ChaCha8Rng,
    walks: Vec<Walk>,
    ordinals: KeyOrdinals,
    bad_ratio: f64,
}

impl Simulator {
    /// Returns a generator for `cfg.symbols`. Unknown symbols trade around 1.00000.
    pub fn new(cfg: &SimConfig) -> Self {
        let walks = cfg
            .symbols
            .iter()
            .map(|s| {
                let (scale, price, spread) = instrument::lookup(s)
                    .map(|i| (i.scale, i.typical_price, i.typical_spread as f64))
                    .unwrap_or((5, 1.0, 10.0));
                let points = price * 10f64.powi(i32::from(scale));
                Walk {
                    symbol: s.clone(),
                    scale,
                    mid_points: points,
                    // About 0.5 basis points per tick.
                    vol_points: (points * 0.00005).max(1.0),
                    base_spread: spread,
                    burst_left: 0,
                }
            })
            .collect();
        Self {
            rng: ChaCha8Rng::seed_from_u64(cfg.seed),
            walks,
            ordinals: KeyOrdinals::default(),
            bad_ratio: cfg.bad_ratio,
        }
    }

    /// Returns the next tick, stamped with the given event and receipt times.
    pub fn next_tick(&mut self, ts_event_ns: i64, ts_recv_ns: i64) -> Tick {
        // Bursting symbols draw most of the flow, as in a real market after news.
        let idx = if self.rng.random_bool(0.5) {
            self.walks
                .iter()
                .position(|w| w.burst_left > 0)
                .unwrap_or_else(|| self.rng.random_range(0..self.walks.len()))
        } else {
            self.rng.random_range(0..self.walks.len())
        };
        let crossed = self.bad_ratio > 0.0 && self.rng.random_bool(self.bad_ratio.min(1.0));
        let w = &mut self.walks[idx];
        if w.burst_left == 0 && self.rng.random_bool(0.0005) {
            w.burst_left = self.rng.random_range(50..500);
        }
        let burst = if w.burst_left > 0 {
            w.burst_left -= 1;
            4.0
        } else {
            1.0
        };
        let z: f64 = StandardNormal.sample(&mut self.rng);
        w.mid_points = (w.mid_points + z * w.vol_points * burst).max(10.0);
        let s: f64 = StandardNormal.sample(&mut self.rng);
        let spread = (w.base_spread * burst.sqrt() * (1.0 + 0.3 * s.abs())).round() as i64;
        let spread = spread.max(1);
        let bid = (w.mid_points - spread as f64 / 2.0).round() as i64;
        let (bid, ask) = if crossed {
            (bid + spread, bid)
        } else {
            (bid, bid + spread)
        };
        let size = |rng: &mut ChaCha8Rng| (rng.random_range(0.5..5.0f64) * 100.0).round() / 100.0;
        let bid_size = size(&mut self.rng);
        let ask_size = size(&mut self.rng);
        let symbol = w.symbol.clone();
        let scale = w.scale;
        let ordinal = self.ordinals.next(&symbol, ts_event_ns);
        Tick {
            key: idempotency_key("sim", &symbol, ts_event_ns, ordinal),
            symbol,
            source: "sim".into(),
            ts_event_ns,
            ts_recv_ns,
            scale,
            bid,
            ask,
            last: None,
            bid_size,
            ask_size,
            volume: 0.0,
            flags: 0,
            route: Default::default(),
            replay: false,
        }
    }
}

/// The simulator as a live source paced at `rate` ticks per second.
pub struct SimSource {
    sim: Simulator,
    rate: f64,
    max_ticks: Option<u64>,
    /// When pacing started, monotonic and wall clock (UTC ns).
    start: Option<(Instant, i64)>,
    sent: u64,
}

impl SimSource {
    /// Returns a paced source for `cfg`.
    pub fn new(cfg: &SimConfig) -> Self {
        Self {
            sim: Simulator::new(cfg),
            rate: cfg.rate.max(0.001),
            max_ticks: cfg.max_ticks,
            start: None,
            sent: 0,
        }
    }
}

#[async_trait]
impl TickSource for SimSource {
    fn name(&self) -> &str {
        "sim"
    }

    async fn next_batch(&mut self, out: &mut Vec<Tick>) -> Result<bool, SourceError> {
        let (start, start_ns) = *self
            .start
            .get_or_insert_with(|| (Instant::now(), clock::now_ns()));
        loop {
            if self.max_ticks.is_some_and(|m| self.sent >= m) {
                return Ok(false);
            }
            // The epsilon makes the tick due exactly at `next_at` below count as due, despite
            // floating-point rounding.
            let period_ns = 1e9 / self.rate;
            let due = (start.elapsed().as_nanos() as f64 / period_ns + 1e-6) as u64;
            let due = self.max_ticks.map_or(due, |m| due.min(m));
            if due > self.sent {
                // Cap a batch, so that after a stall the stages downstream take the backlog in
                // steps (see `run_source`) rather than in one wave whose first tick waits for
                // all of it.
                let n = (due - self.sent).min(MAX_BATCH);
                // The event time is when the tick was due on the schedule, the receipt time
                // when it was actually produced: a consumer measuring from the event time sees
                // any lag of the feed itself (no coordinated omission).
                for k in self.sent..self.sent + n {
                    let scheduled = start_ns + (k as f64 * period_ns) as i64;
                    let now = clock::now_ns();
                    out.push(self.sim.next_tick(scheduled.min(now), now));
                }
                self.sent += n;
                return Ok(true);
            }
            // Sleep until the next tick is due (at least the timer's 1 ms resolution).
            let next_at =
                start + Duration::from_nanos(((self.sent + 1) as f64 * period_ns).ceil() as u64);
            tokio::time::sleep_until(next_at).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        intake: IntakeArgs,
        #[command(flatten)]
        sim: SimArgs,
    }

    #[test]
    fn a_simulated_duration_is_rate_times_duration_ticks() {
        let budget = |args: &[&str]| {
            let mut argv = vec!["x"];
            argv.extend_from_slice(args);
            let cli = Cli::try_parse_from(argv).unwrap();
            cli.sim.tick_budget(cli.intake.duration)
        };
        assert_eq!(budget(&["--duration", "10s"]), Some(10_000));
        assert_eq!(
            budget(&["--duration", "1500ms", "--rate", "250"]),
            Some(375)
        );
        assert_eq!(
            budget(&["--duration", "500ms", "--rate", "3"]),
            Some(1),
            "none after 500 ms"
        );
        assert_eq!(budget(&["--duration", "10s", "--max-ticks", "7"]), Some(7));
        assert_eq!(budget(&["--max-ticks", "7"]), Some(7));
        assert_eq!(budget(&[]), None);
    }

    fn cfg() -> SimConfig {
        SimConfig {
            symbols: default_symbols(3),
            ..SimConfig::default()
        }
    }

    #[test]
    fn same_seed_same_ticks() {
        let mut a = Simulator::new(&cfg());
        let mut b = Simulator::new(&cfg());
        for i in 0..1000 {
            assert_eq!(a.next_tick(i, i), b.next_tick(i, i));
        }
        let mut c = Simulator::new(&SimConfig { seed: 7, ..cfg() });
        let differs = (0..100).any(|i| a.next_tick(i, i).bid != c.next_tick(i, i).bid);
        assert!(differs);
    }

    #[test]
    fn ticks_are_valid_quotes_with_unique_keys() {
        let mut s = Simulator::new(&cfg());
        let mut keys = std::collections::HashSet::new();
        for i in 0..10_000 {
            // Many ticks share a timestamp: the ordinal keeps keys unique.
            let t = s.next_tick(i / 10, i / 10);
            assert!(t.ask > t.bid && t.bid > 0, "{t:?}");
            assert!(cfg().symbols.contains(&t.symbol));
            assert!(keys.insert(t.key.clone()), "duplicate key {}", t.key);
            let inst = instrument::lookup(&t.symbol).unwrap();
            assert_eq!(t.scale, inst.scale);
        }
    }

    #[test]
    fn bad_ratio_produces_crossed_quotes() {
        let mut s = Simulator::new(&SimConfig {
            bad_ratio: 0.5,
            ..cfg()
        });
        let crossed = (0..1000).filter(|&i| {
            let t = s.next_tick(i, i);
            t.ask < t.bid
        });
        let n = crossed.count();
        assert!((350..650).contains(&n), "{n}");
    }

    #[tokio::test(start_paused = true)]
    async fn paces_to_the_schedule() {
        let mut src = SimSource::new(&SimConfig {
            rate: 1000.0,
            max_ticks: Some(2500),
            ..cfg()
        });
        let mut out = vec![];
        let t0 = Instant::now();
        while src.next_batch(&mut out).await.unwrap() {}
        assert_eq!(out.len(), 2500);
        let took = t0.elapsed();
        assert!(
            took >= Duration::from_millis(2499) && took < Duration::from_millis(2600),
            "{took:?}"
        );
    }
}
