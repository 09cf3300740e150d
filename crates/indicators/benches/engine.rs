//! Cost per tick of the indicators engine with the default configuration, next to a baseline
//! measured in the same run (protobuf-encoding one tick), and cost per input of tickflow's
//! indicators next to those of the `ta` crate (https://crates.io/crates/ta) on the same series.
//!
//! `cargo bench -p indicators --bench engine` (or `scripts/bench.sh indicators`, which also
//! prints the table of medians).
//!
//! - `engine/default_set/{1_symbol,100_symbols}`: `Engine::on_tick` with the configuration the
//!   binaries build from `EngineArgs`' defaults (sma(20), ema(12), ema(26), rsi(14), the four
//!   default rules, 1s and 1m bars on the bid), over a seeded random walk: per symbol a tick
//!   every ~100 ms with a spread, round-robin over the symbols. The timing includes dropping
//!   what `on_tick` returns (update, bars, signals) and the drop of the tick the engine replaces
//!   as the symbol's last; cloning the input tick (the adapter decodes a fresh one) is done
//!   outside the timing, in runs of 4,096 inputs whose buffer is reused (criterion's
//!   `iter_batched` freed its input buffer inside the timing: a large free, which also made
//!   the allocator return and fault in pages).
//! - `engine/baseline_protobuf_encode`: `Tick::encode` of one tick of that series.
//! - `hub/publish_update`: `Hub::publish_update` of the engine's per-tick updates of the
//!   100-symbol series, as the indicators stage publishes them, into a hub with the default
//!   options and no subscriber: the resume window (100,000 events) is filled first, so each
//!   publish also drops the oldest event. The updates are made outside the timing, in runs of
//!   4,096.
//! - `peer/{tickflow,ta}/...`: one `update` / `next` per input on the mid prices of the
//!   1-symbol series, 10,000 inputs per iteration (so the table divides by 10,000).
//!
//! The peers compare cost, not values. tickflow follows TA-Lib: its EMA is seeded with the SMA
//! of the first `period` inputs and yields nothing before; its RSI is Wilder's (smoothing
//! `1/period`, seeded with simple averages of the first `period` changes, 0 on a flat series).
//! `ta` 0.5 seeds its EMA with the first input and yields a value from the first input on; its
//! RSI smooths gains and losses with that EMA (`k = 2/(period+1)`, not Wilder's `1/period`),
//! both seeded with 0.1 on the first input; its SMA returns the mean of a partial window during
//! warm-up. Both SMAs keep the last 20 inputs and a running sum: `ta` in a fixed ring, never
//! re-summed; tickflow in a `VecDeque`, re-adding the window once per period so rounding error
//! cannot accumulate. tickflow's indicators are called through the concrete types here (the
//! engine calls them through `Box<dyn Indicator>`).

use clap::Parser;
use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use indicators::config::EngineArgs;
use indicators::engine::{Engine, EngineConfig};
use indicators::indicator::{Ema, Rsi, Sma};
use indicators::service::{Hub, HubOptions};
use std::hint::black_box;
use std::time::{Duration, Instant};
use ta::Next;
use ta::indicators::{ExponentialMovingAverage, RelativeStrengthIndex, SimpleMovingAverage};
use tick_core::Tick;

const T0: i64 = 1_700_000_000_000_000_000;
/// Ticks in each pre-generated series (1,000 per symbol in the 100-symbol case: 100 s of it).
const SERIES: usize = 100_000;
/// Inputs prepared per timed run of the engine benchmark.
const CHUNK: usize = 4_096;
/// Inputs per iteration of the peer benchmarks.
const PEER_INPUTS: usize = 10_000;

/// The binaries' engine options (`indicators`, `tickflow run`) with nothing given.
#[derive(Parser)]
struct Args {
    #[command(flatten)]
    engine: EngineArgs,
}

/// The allocator the binaries run on (`tick_core::alloc`), so the figures are theirs.
#[global_allocator]
static ALLOCATOR: tick_core::alloc::Allocator = tick_core::alloc::Allocator;

/// The configuration `indicators` and `tickflow run` build with their default options: clap
/// parses `EngineArgs` from an empty command line, then `EngineArgs::engine_config`.
fn default_config() -> EngineConfig {
    let cfg = Args::try_parse_from(["engine-bench"])
        .expect("EngineArgs defaults parse")
        .engine
        .engine_config();
    let d = EngineConfig::default();
    // EngineArgs also reads TICKFLOW_INDICATORS, TICKFLOW_RULES, ...: refuse to measure
    // something else than the defaults under their name.
    assert!(
        cfg.indicators == d.indicators
            && cfg.rules == d.rules
            && cfg.timeframes == d.timeframes
            && cfg.bar_side == d.bar_side,
        "the engine options are not the defaults (TICKFLOW_* set in the environment?): {cfg:?}"
    );
    cfg
}

/// SplitMix64: a small seeded generator, so the series is the same in every run.
struct Rng(u64);

impl Rng {
    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in [0, 1).
    fn uniform(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// Standard normal (Box-Muller).
    fn normal(&mut self) -> f64 {
        let u = 1.0 - self.uniform();
        let v = self.uniform();
        (-2.0 * u.ln()).sqrt() * (std::f64::consts::TAU * v).cos()
    }
}

/// `SERIES` ticks round-robin over `symbols` symbols (5 decimals, around 1.10000): per symbol a
/// Gaussian random walk of ~0.5 basis points per tick, a spread of 0.6 to 1.5 pips, and event
/// times 50 to 150 ms apart (~100 ms), received 0.2 to 2 ms later. Returns the ticks and the
/// time span they cover, by which a later lap over the series is shifted.
fn series(symbols: usize, seed: u64) -> (Vec<Tick>, i64) {
    let mut rng = Rng(seed);
    let names: Vec<String> = (0..symbols).map(|i| format!("SYM{i:03}")).collect();
    let mut mid: Vec<f64> = vec![110_000.0; symbols];
    let mut ts: Vec<i64> = (0..symbols as i64).map(|i| T0 + i * 1_000_000).collect();
    let mut ticks = Vec::with_capacity(SERIES);
    for n in 0..SERIES {
        let s = n % symbols;
        mid[s] = (mid[s] + 5.5 * rng.normal()).max(1_000.0);
        ts[s] += 50_000_000 + (rng.uniform() * 100_000_000.0) as i64;
        let spread = 6 + (rng.uniform() * 10.0) as i64;
        let bid = (mid[s] - spread as f64 / 2.0).round() as i64;
        let ts_event_ns = ts[s];
        let ts_recv_ns = ts_event_ns + 200_000 + (rng.uniform() * 1_800_000.0) as i64;
        ticks.push(Tick {
            key: tick_core::idempotency_key("sim", &names[s], ts_event_ns, 0),
            symbol: names[s].clone(),
            source: "sim".into(),
            ts_event_ns,
            ts_recv_ns,
            scale: 5,
            bid,
            ask: bid + spread,
            last: None,
            bid_size: 1.0,
            ask_size: 1.5,
            volume: 0.0,
            flags: 0,
            route: Default::default(),
            replay: false,
        });
    }
    let span = ts.iter().max().expect("at least one symbol") - T0 + 1_000_000_000;
    (ticks, span)
}

/// The `n`th tick fed: the series, lap after lap, each lap shifted by `span` so every
/// symbol's event times keep increasing (no tick arrives late for its bar).
fn nth(ticks: &[Tick], span: i64, n: usize) -> Tick {
    let lap = (n / ticks.len()) as i64;
    let mut t = ticks[n % ticks.len()].clone();
    if lap > 0 {
        t.ts_event_ns += lap * span;
        t.ts_recv_ns += lap * span;
    }
    t
}

fn engine(c: &mut Criterion) {
    let mut g = c.benchmark_group("engine");
    g.throughput(Throughput::Elements(1));
    for (name, symbols) in [("1_symbol", 1), ("100_symbols", 100)] {
        let (ticks, span) = series(symbols, 42);
        let mut engine = Engine::new(default_config()).expect("default configuration is valid");
        // Warm-up: one lap, so every symbol exists and every indicator is warm.
        let mut n = 0;
        while n < ticks.len() {
            black_box(engine.on_tick(nth(&ticks, span, n)));
            n += 1;
        }
        g.bench_function(BenchmarkId::new("default_set", name), |b| {
            // The inputs of up to `CHUNK` iterations are cloned before the clock starts, then
            // fed; their buffer is kept (drained, not freed) so the timing holds the engine and
            // the drop of what it returns, not the harness's allocation of its inputs.
            let mut inputs: Vec<Tick> = Vec::with_capacity(CHUNK);
            b.iter_custom(|iters| {
                let mut timed = Duration::ZERO;
                let mut left = iters;
                while left > 0 {
                    let k = left.min(CHUNK as u64);
                    inputs.extend((0..k).map(|_| {
                        n += 1;
                        nth(&ticks, span, n - 1)
                    }));
                    let start = Instant::now();
                    for t in inputs.drain(..) {
                        // Dropped inside the timing, as the adapter consumes them.
                        black_box(engine.on_tick(t));
                    }
                    timed += start.elapsed();
                    left -= k;
                }
                timed
            })
        });
    }
    let (ticks, _) = series(1, 42);
    let t = ticks[ticks.len() / 2].clone();
    g.bench_function("baseline_protobuf_encode", |b| {
        b.iter(|| black_box(black_box(&t).encode()))
    });
    g.finish();
}

fn hub(c: &mut Criterion) {
    let (ticks, span) = series(100, 42);
    let mut engine = Engine::new(default_config()).expect("default configuration is valid");
    let names = engine
        .value_names(indicators::engine::TICK)
        .expect("the per-tick group")
        .clone();
    let options = HubOptions::default();
    let hub = Hub::with_options(options.clone());
    let mut n = 0;
    let mut update = move || {
        n += 1;
        engine
            .on_tick(nth(&ticks, span, n - 1))
            .update
            .expect("a tick's update")
    };
    // Fill the resume window: from here on each publish drops the oldest event.
    for _ in 0..options.resume_window {
        hub.publish_update(update(), names.clone());
    }
    let mut g = c.benchmark_group("hub");
    g.throughput(Throughput::Elements(1));
    g.bench_function("publish_update", |b| {
        let mut inputs = Vec::with_capacity(CHUNK);
        b.iter_custom(|iters| {
            let mut timed = Duration::ZERO;
            let mut left = iters;
            while left > 0 {
                let k = left.min(CHUNK as u64);
                inputs.extend((0..k).map(|_| update()));
                let start = Instant::now();
                for u in inputs.drain(..) {
                    hub.publish_update(u, names.clone());
                }
                timed += start.elapsed();
                left -= k;
            }
            timed
        })
    });
    g.finish();
}

fn peer(c: &mut Criterion) {
    let (ticks, _) = series(1, 42);
    let mids: Vec<f64> = ticks[..PEER_INPUTS].iter().map(Tick::mid_f64).collect();
    let mut g = c.benchmark_group("peer");
    g.throughput(Throughput::Elements(PEER_INPUTS as u64));

    /// One benchmark: `$state` updated by `$step` for each input of `mids`, state kept across
    /// iterations (warm after the first few inputs).
    macro_rules! per_input {
        ($lib:literal, $case:literal, $state:expr, |$s:ident, $x:ident| $step:expr) => {{
            let mut $s = $state;
            g.bench_function(BenchmarkId::new($lib, $case), |b| {
                b.iter(|| {
                    for &$x in &mids {
                        black_box($step);
                    }
                })
            });
        }};
    }

    let ta_sma = || SimpleMovingAverage::new(20).expect("period > 0");
    let ta_ema = |p| ExponentialMovingAverage::new(p).expect("period > 0");
    let ta_rsi = || RelativeStrengthIndex::new(14).expect("period > 0");

    per_input!("tickflow", "sma20", Sma::new(20), |s, x| s.update(x));
    per_input!("ta", "sma20", ta_sma(), |s, x| s.next(x));
    per_input!("tickflow", "ema12", Ema::new(12), |s, x| s.update(x));
    per_input!("ta", "ema12", ta_ema(12), |s, x| s.next(x));
    per_input!("tickflow", "rsi14", Rsi::new(14), |s, x| s.update(x));
    per_input!("ta", "rsi14", ta_rsi(), |s, x| s.next(x));
    per_input!(
        "tickflow",
        "sma20+ema12+ema26+rsi14",
        (Sma::new(20), Ema::new(12), Ema::new(26), Rsi::new(14)),
        |s, x| (s.0.update(x), s.1.update(x), s.2.update(x), s.3.update(x))
    );
    per_input!(
        "ta",
        "sma20+ema12+ema26+rsi14",
        (ta_sma(), ta_ema(12), ta_ema(26), ta_rsi()),
        |s, x| (s.0.next(x), s.1.next(x), s.2.next(x), s.3.next(x))
    );
    g.finish();
}

criterion_group!(benches, engine, hub, peer);
criterion_main!(benches);
