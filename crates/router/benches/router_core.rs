//! Cost per tick of the router's pure core, with every rule on, next to two baselines measured
//! in the same run: the core with only validation (no spike filter, merge arbitration) and the
//! protobuf decode + encode every routed tick pays in the adapter anyway.
//!
//! `cargo bench -p router --bench router_core`

use criterion::{BatchSize, Criterion, criterion_group, criterion_main};
use ingest::sim::{SimConfig, Simulator, default_symbols};
use router::arbitration::Arbitration;
use router::core::{Router, RouterConfig};
use std::hint::black_box;
use tick_core::Tick;

const T0: i64 = 1_700_000_000_000_000_000;

/// 10,000 simulated ticks over 10 symbols, 1 ms apart, all from the primary source (so every
/// tick goes through every rule; a standby tick would stop early).
fn pool() -> Vec<Tick> {
    let mut sim = Simulator::new(&SimConfig {
        symbols: default_symbols(10),
        ..SimConfig::default()
    });
    (0..10_000)
        .map(|i| sim.next_tick(T0 + i * 1_000_000, T0 + i * 1_000_000))
        .collect()
}

fn bench(c: &mut Criterion) {
    let pool = pool();
    let all_rules = RouterConfig {
        arbitration: Arbitration::PrimaryFailover {
            priority: vec!["sim".into(), "backup".into()],
            silence_ns: 2_000_000_000,
        },
        ..RouterConfig::default()
    };
    let validation_only = RouterConfig {
        spike: None,
        arbitration: Arbitration::Merge,
        ..RouterConfig::default()
    };
    let mut g = c.benchmark_group("router");
    for (name, cfg) in [
        ("all_rules", all_rules),
        ("validation_only", validation_only),
    ] {
        let mut router = Router::new(cfg);
        let mut out = Vec::with_capacity(4);
        let mut n: i64 = 0;
        g.bench_function(name, |b| {
            b.iter_batched(
                || {
                    // A fresh key and a later time every tick, so de-duplication grows as live.
                    let mut t = pool[(n as usize) % pool.len()].clone();
                    t.ts_event_ns = T0 + n * 1_000_000;
                    t.key = format!("{}|{}|{}|0", t.source, t.symbol, t.ts_event_ns);
                    n += 1;
                    t
                },
                |t| {
                    let now = t.ts_event_ns;
                    router.on_tick(t, now, &mut out);
                    black_box(&out);
                    out.clear();
                },
                BatchSize::SmallInput,
            )
        });
    }
    let bytes = pool[0].encode();
    g.bench_function("baseline_protobuf_decode_encode", |b| {
        b.iter(|| black_box(Tick::decode(black_box(&bytes)).unwrap().encode()))
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
