//! Generation cost of the simulated feed per tick, next to protobuf encoding of the same tick
//! (what ingest does next with it), measured in the same run.
//!
//! `cargo bench -p ingest --bench sim`

use criterion::{Criterion, criterion_group, criterion_main};
use ingest::sim::{SimConfig, Simulator, default_symbols};
use std::hint::black_box;

fn bench(c: &mut Criterion) {
    let mut sim = Simulator::new(&SimConfig {
        symbols: default_symbols(10),
        ..SimConfig::default()
    });
    let mut ts = 1_700_000_000_000_000_000i64;
    let mut g = c.benchmark_group("sim");
    g.bench_function("next_tick", |b| {
        b.iter(|| {
            ts += 1_000;
            black_box(sim.next_tick(ts, ts))
        })
    });
    let t = sim.next_tick(ts, ts);
    g.bench_function("baseline_protobuf_encode", |b| {
        b.iter(|| black_box(t.encode()))
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
