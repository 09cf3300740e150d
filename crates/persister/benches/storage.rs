//! Storage benchmark: rows/s into PostgreSQL through the persister, next to the floor, `psql
//! \copy` of the same rows, measured in the same run and on the same schema.
//!
//! `cargo bench -p persister --bench storage` (or `scripts/bench.sh storage`) with the services
//! of `scripts/services.sh` in the environment (`DATABASE_URL`, `KAFKA_BROKERS`). Each of
//! `TICKFLOW_BENCH_REPEAT` rounds (default 5) writes `TICKFLOW_BENCH_ROWS` ticks (default
//! 100,000) into a fresh database three ways:
//! - `psql \copy`: psql's COPY of a CSV of the rows into `ticks` (the floor);
//! - store: the persister's write path (`PgStore::insert_ticks`, batches of 1,000);
//! - persister: the whole stage, from a Kafka topic the rows were produced to beforehand,
//!   through `run_persister` (default batching, offsets acknowledged per batch), until every
//!   row is stored.
//!
//! Prints medians and the ratio to the floor, and writes `target/bench/storage.json`.

use persister::breaker::BreakerArgs;
use persister::postgres::PgStore;
use persister::{BatchConfig, DeadLetters, PersisterStats};
use std::io::Write;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};
use tick_core::Tick;
use tick_core::bus::Producer;
use tick_core::shutdown::CancellationToken;
use tick_core::store::{HistoryReader, TickWriter};
use tick_kafka::KafkaArgs;

const SYMBOLS: [&str; 10] = [
    "EURUSD", "GBPUSD", "USDJPY", "AUDUSD", "USDCAD", "USDCHF", "NZDUSD", "EURGBP", "EURJPY",
    "XAUUSD",
];

fn env_or(var: &str, default: usize) -> usize {
    std::env::var(var)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn ticks(round: usize, n: usize) -> Vec<Tick> {
    let base = tick_core::clock::now_ns();
    let source = format!("bench{round}");
    (0..n)
        .map(|i| {
            let symbol = SYMBOLS[i % SYMBOLS.len()];
            let ts = base + i as i64 * 1_000;
            let bid = 110_000 + (i as i64 * 7919) % 500;
            tick_core::testenv::tick(&source, symbol, ts, bid)
        })
        .collect()
}

fn write_csv(path: &std::path::Path, rows: &[Tick]) {
    let mut f = std::io::BufWriter::new(std::fs::File::create(path).unwrap());
    for t in rows {
        writeln!(
            f,
            "{},{},{},{},{},{},{},{},,{},{},{},{},{}",
            t.key,
            t.symbol,
            t.source,
            t.ts_event_ns,
            t.ts_recv_ns,
            t.scale,
            t.bid,
            t.ask,
            t.bid_size,
            t.ask_size,
            t.volume,
            t.flags,
            t.replay
        )
        .unwrap();
    }
}

async fn fresh(base: &str, name: &str) -> (String, PgStore) {
    let url = persister::conformance::fresh_database(base, name).await;
    let store = PgStore::connect(&url, 4).unwrap();
    store.migrate().await.unwrap();
    (url, store)
}

async fn count(store: &PgStore) -> u64 {
    store.count_ticks().await.unwrap()
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    let m = v.len() / 2;
    if v.len() % 2 == 0 {
        (v[m - 1] + v[m]) / 2.0
    } else {
        v[m]
    }
}

#[tokio::main]
async fn main() {
    let (Ok(db), Ok(brokers)) = (
        std::env::var("DATABASE_URL"),
        std::env::var("KAFKA_BROKERS"),
    ) else {
        eprintln!(
            "storage bench: set DATABASE_URL and KAFKA_BROKERS (eval \"$(scripts/services.sh up)\")"
        );
        return;
    };
    // `cargo bench` passes --bench; a filter argument is not used here.
    let rows = env_or("TICKFLOW_BENCH_ROWS", 100_000);
    let repeat = env_or("TICKFLOW_BENCH_REPEAT", 5).max(1);
    let kafka = KafkaArgs {
        brokers,
        properties: vec![],
        linger: Default::default(),
        create_topics: false,
        topic_partitions: 12,
        topic_replication: 1,
    };
    let dir = tempfile::tempdir().unwrap();
    let (mut copy, mut store_rate, mut stage) = (vec![], vec![], vec![]);
    println!("storage bench: {rows} rows x {repeat} rounds");
    for round in 0..repeat {
        let data = ticks(round, rows);
        let run = format!("{}_{round}", std::process::id());

        // Floor: psql \copy of the same rows.
        let csv = dir.path().join(format!("rows{round}.csv"));
        write_csv(&csv, &data);
        let (url, s) = fresh(&db, &format!("bench_copy_{run}")).await;
        let t = Instant::now();
        let out = std::process::Command::new("psql")
            .arg(&url)
            .arg("-qc")
            .arg(format!(
                "\\copy ticks(idempotency_key, symbol, source, ts_event_ns, ts_recv_ns, \
                 price_scale, bid, ask, last, bid_size, ask_size, volume, flags, replay) \
                 FROM '{}' WITH (FORMAT csv)",
                csv.display()
            ))
            .output()
            .expect("psql runs");
        let secs = t.elapsed().as_secs_f64();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(count(&s).await, rows as u64);
        copy.push(rows as f64 / secs);

        // The persister's write path alone.
        let (_, s) = fresh(&db, &format!("bench_store_{run}")).await;
        let t = Instant::now();
        for chunk in data.chunks(1000) {
            s.insert_ticks(chunk).await.unwrap();
        }
        let secs = t.elapsed().as_secs_f64();
        assert_eq!(count(&s).await, rows as u64);
        store_rate.push(rows as f64 / secs);

        // The whole stage, from Kafka.
        let topic = format!("bench.clean.{run}");
        let producer = kafka.producer(false).unwrap();
        let mut receipts = Vec::with_capacity(rows);
        for t in &data {
            receipts.push(
                producer
                    .send(&topic, t.symbol.as_bytes(), t.encode())
                    .await
                    .unwrap(),
            );
        }
        for r in receipts {
            r.await.unwrap();
        }
        let (_, s) = fresh(&db, &format!("bench_stage_{run}")).await;
        let s = Arc::new(s);
        let stop = CancellationToken::new();
        let consumer = kafka
            .consumer(&format!("bench-{run}"), &topic, stop.clone())
            .unwrap();
        let stats = Arc::new(PersisterStats::default());
        let task = tokio::spawn(persister::run_persister(
            Box::new(consumer),
            s.clone(),
            BatchConfig::default(),
            BreakerArgs::default(),
            DeadLetters::Store,
            stats.clone(),
            CancellationToken::new(),
        ));
        // The clock starts at the first stored row (group join and first fetch excluded).
        while stats.received.load(Ordering::Relaxed) == 0 {
            tokio::time::sleep(Duration::from_micros(200)).await;
        }
        let t = Instant::now();
        while stats.stored.load(Ordering::Relaxed) < rows as u64 {
            tokio::time::sleep(Duration::from_micros(200)).await;
        }
        let secs = t.elapsed().as_secs_f64();
        stop.cancel();
        task.await.unwrap().unwrap();
        assert_eq!(count(&s).await, rows as u64);
        stage.push(rows as f64 / secs);
        println!(
            "  round {round}: psql \\copy {:.0} rows/s, store {:.0} rows/s, persister {:.0} rows/s",
            copy[round], store_rate[round], stage[round]
        );
        for name in ["copy", "store", "stage"] {
            let admin = persister::postgres::connect(&db).await.unwrap();
            admin
                .batch_execute(&format!(
                    "DROP DATABASE IF EXISTS bench_{name}_{run} WITH (FORCE)"
                ))
                .await
                .unwrap();
        }
    }
    let (c, s, p) = (
        median(&mut copy),
        median(&mut store_rate),
        median(&mut stage),
    );
    println!("\n| path | rows/s (median of {repeat}) | vs psql \\copy |");
    println!("|---|---:|---:|");
    println!("| psql \\copy (floor) | {c:.0} | 1.00 |");
    println!(
        "| store: PgStore::insert_ticks, 1,000-row UNNEST batches | {s:.0} | {:.2} |",
        s / c
    );
    println!(
        "| persister: Kafka -> run_persister -> PostgreSQL | {p:.0} | {:.2} |",
        p / c
    );
    let out = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target/bench");
    std::fs::create_dir_all(&out).unwrap();
    let json = serde_json::json!({
        "scenario": "storage",
        "rows": rows,
        "rounds": repeat,
        "median_rows_per_s": {"psql_copy": c, "store": s, "persister": p},
        "ratio_to_copy": {"store": s / c, "persister": p / c},
        "rounds_rows_per_s": {"psql_copy": copy, "store": store_rate, "persister": stage},
    });
    std::fs::write(
        out.join("storage.json"),
        serde_json::to_string_pretty(&json).unwrap(),
    )
    .unwrap();
    println!("wrote target/bench/storage.json");
}
