//! The PostgreSQL store (distributed mode): `ticks` partitioned by day on the event time, unique
//! on the idempotency key, prices as exact integer mantissas; batches written with one
//! `INSERT ... SELECT FROM UNNEST(...) ON CONFLICT DO NOTHING`. Migrations are embedded and
//! applied on start under an advisory lock, so several persister pods may start at once.

use async_trait::async_trait;
use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod};
use std::collections::HashSet;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU32, Ordering};
use tick_core::Tick;
use tick_core::error::Cause;
use tick_core::store::{
    DeadLetterRecord, HistoryReader, ImportCheckpoints, StoreError, TickWriter,
};

pub mod tls;

const DAY_NS: i64 = 86_400_000_000_000;
const INSERT_TICKS: &str = "INSERT INTO ticks (idempotency_key, symbol, source, ts_event_ns,
    ts_recv_ns, price_scale, bid, ask, last, bid_size, ask_size, volume, flags, replay,
    ts_route_ns, symbol_seq, route_flags, gap_ns)";
const FROM_UNNEST: &str = "SELECT * FROM UNNEST($1::text[], $2::text[], $3::text[],
    $4::bigint[], $5::bigint[], $6::smallint[], $7::bigint[], $8::bigint[], $9::bigint[],
    $10::float8[], $11::float8[], $12::float8[], $13::bigint[], $14::bool[], $15::bigint[],
    $16::bigint[], $17::integer[], $18::bigint[])";
/// Batches written with ON CONFLICT DO NOTHING after one hit a stored key.
const CAREFUL_AFTER_CONFLICT: u32 = 16;

/// Advisory lock key for migrations and partition creation ("tickflow" in ASCII).
const LOCK_KEY: i64 = 0x7469_636b_666c_6f77;

const MIGRATIONS: &[&str] = &[
    // 1: ticks partitioned by day, dead letters.
    "CREATE TABLE ticks (
        idempotency_key TEXT NOT NULL,
        symbol TEXT NOT NULL,
        source TEXT NOT NULL,
        ts_event_ns BIGINT NOT NULL,
        ts_recv_ns BIGINT NOT NULL,
        price_scale SMALLINT NOT NULL,
        bid BIGINT NOT NULL,
        ask BIGINT NOT NULL,
        last BIGINT,
        bid_size DOUBLE PRECISION NOT NULL,
        ask_size DOUBLE PRECISION NOT NULL,
        volume DOUBLE PRECISION NOT NULL,
        flags BIGINT NOT NULL,
        replay BOOLEAN NOT NULL,
        stored_at TIMESTAMPTZ NOT NULL DEFAULT now(),
        -- The key embeds the event time, so unique per (time, key) is unique per key.
        PRIMARY KEY (ts_event_ns, idempotency_key)
    ) PARTITION BY RANGE (ts_event_ns);
    CREATE INDEX ticks_symbol_time ON ticks (symbol, ts_event_ns);
    CREATE TABLE dead_letters (
        id BIGSERIAL PRIMARY KEY,
        reason TEXT NOT NULL,
        detail TEXT NOT NULL,
        payload BYTEA NOT NULL,
        origin TEXT NOT NULL,
        component TEXT NOT NULL,
        ts_rejected_ns BIGINT NOT NULL,
        stored_at TIMESTAMPTZ NOT NULL DEFAULT now()
    );",
    // 2: checkpoints of bulk imports (`replayer import`): one row per finished unit of work.
    "CREATE TABLE import_progress (
        source TEXT NOT NULL,
        unit TEXT NOT NULL,
        rows BIGINT NOT NULL,
        finished_at TIMESTAMPTZ NOT NULL DEFAULT now(),
        PRIMARY KEY (source, unit)
    );",
    // 3: closed bars, one row per symbol, timeframe, price side and open time.
    "CREATE TABLE bars (
        symbol TEXT NOT NULL,
        timeframe TEXT NOT NULL,
        price_side TEXT NOT NULL,
        open_time_ns BIGINT NOT NULL,
        close_time_ns BIGINT NOT NULL,
        price_scale SMALLINT NOT NULL,
        open BIGINT NOT NULL,
        high BIGINT NOT NULL,
        low BIGINT NOT NULL,
        close BIGINT NOT NULL,
        tick_count BIGINT NOT NULL,
        volume DOUBLE PRECISION NOT NULL,
        ts_recv_ns BIGINT NOT NULL,
        flags INTEGER NOT NULL,
        stored_at TIMESTAMPTZ NOT NULL DEFAULT now(),
        PRIMARY KEY (symbol, timeframe, price_side, open_time_ns)
    );",
    // 4: the router's fields of a clean tick (0 on rows stored before, and on ticks that did
    // not pass a router, like `replayer import`'s): what `Subscribe` with `since` stitches
    // stored history to the live stream with, and what a restarted embedded router continues.
    "ALTER TABLE ticks ADD COLUMN ts_route_ns BIGINT NOT NULL DEFAULT 0,
        ADD COLUMN symbol_seq BIGINT NOT NULL DEFAULT 0,
        ADD COLUMN route_flags INTEGER NOT NULL DEFAULT 0,
        ADD COLUMN gap_ns BIGINT NOT NULL DEFAULT 0;",
];

/// A [`TickStore`] on PostgreSQL.
pub struct PgStore {
    pool: Pool,
    partitions: Mutex<HashSet<i64>>,
    /// Batches still to write on the careful path (see `insert_ticks`).
    careful_batches: AtomicU32,
}

fn pg_err(e: tokio_postgres::Error) -> StoreError {
    match e.as_db_error() {
        // Connection problems, shutdowns, resource shortages and serialization conflicts pass;
        // anything else the server says is about the statement or its rows, and retrying the
        // same rows would fail forever.
        Some(db) if !is_transient(db.code().code()) => StoreError::Data(Cause::wrap(db.clone())),

        Some(db) => StoreError::Unavailable(Cause::wrap(db.clone())),
        None => StoreError::Unavailable(Cause::wrap(e)),
    }
}

fn is_transient(code: &str) -> bool {
    code.starts_with("08")
        || code.starts_with("53")
        || code.starts_with("57P")
        || matches!(code, "40001" | "40P01" | "55P03")
}

fn pool_err(e: deadpool_postgres::PoolError) -> StoreError {
    let context = match &e {
        deadpool_postgres::PoolError::Backend(e) => connect_context(e),
        _ => "no database connection",
    };
    StoreError::Unavailable(Cause::new(context, e))
}

/// What a failed connection attempt says, with the likely fix when the server refused an
/// unencrypted connection (its `pg_hba.conf` has only `hostssl` lines for us).
fn connect_context(e: &tokio_postgres::Error) -> &'static str {
    match e.as_db_error() {
        Some(db) if db.code().code() == "28000" && db.message().contains("no encryption") => {
            "no database connection: the server accepts only encrypted connections \
             (the URL says sslmode=disable; use sslmode=require, verify-ca or verify-full)"
        }
        _ => "no database connection",
    }
}

/// Opens one connection to `url` with the TLS its `sslmode` and `sslrootcert` ask for (the
/// connector of [`tls::config`], as the store's pool uses) and drives it on a task of its
/// own: for administration (creating and dropping databases, in tests and benchmarks) and
/// checks.
pub async fn connect(url: &str) -> Result<tokio_postgres::Client, StoreError> {
    let (cfg, tls) = tls::config(url)?;
    let (client, conn) = cfg
        .connect(tls)
        .await
        .map_err(|e| StoreError::Unavailable(Cause::new(connect_context(&e), e)))?;
    tokio::spawn(async move {
        if let Err(e) = conn.await {
            tracing::debug!(error = %e, "database connection closed");
        }
    });
    Ok(client)
}

/// Opens the PostgreSQL store of a `postgres://` URL: this module's line in the store factory.
pub fn open(
    url: &str,
    options: &crate::stores::StoreOptions,
) -> Result<crate::stores::Stores, StoreError> {
    Ok(crate::stores::Stores::full(
        std::sync::Arc::new(PgStore::connect(url, options.pool_size)?),
        crate::stores::redact(url),
    ))
}

impl PgStore {
    /// Returns a store with a pool of up to `pool_size` connections to `url`.
    pub fn connect(url: &str, pool_size: usize) -> Result<Self, StoreError> {
        let (cfg, tls) = tls::config(url)?;
        let mgr = Manager::from_config(
            cfg,
            tls,
            ManagerConfig {
                recycling_method: RecyclingMethod::Fast,
            },
        );
        let pool = Pool::builder(mgr)
            .max_size(pool_size.max(1))
            .build()
            .map_err(|e| StoreError::Unavailable(Cause::wrap(e)))?;
        Ok(Self {
            pool,
            partitions: Mutex::new(HashSet::new()),
            careful_batches: AtomicU32::new(0),
        })
    }

    /// Creates the daily partitions covering `days` (day numbers since the epoch) that are not
    /// known to exist yet.
    async fn ensure_partitions(
        &self,
        days: impl IntoIterator<Item = i64>,
    ) -> Result<(), StoreError> {
        let missing: Vec<i64> = {
            let known = self.partitions.lock().expect("partition cache poisoned");
            let mut m: Vec<i64> = days.into_iter().filter(|d| !known.contains(d)).collect();
            m.sort_unstable();
            m.dedup();
            m
        };
        if missing.is_empty() {
            return Ok(());
        }
        let mut client = self.pool.get().await.map_err(pool_err)?;
        let tx = client.transaction().await.map_err(pg_err)?;
        tx.execute("SELECT pg_advisory_xact_lock($1)", &[&LOCK_KEY])
            .await
            .map_err(pg_err)?;
        for day in &missing {
            let sql = format!(
                "CREATE TABLE IF NOT EXISTS ticks_d{day} PARTITION OF ticks FOR VALUES FROM ({}) TO ({})",
                day * DAY_NS,
                (day + 1) * DAY_NS
            );
            tx.batch_execute(&sql).await.map_err(pg_err)?;
        }
        tx.commit().await.map_err(pg_err)?;
        self.partitions
            .lock()
            .expect("partition cache poisoned")
            .extend(missing);
        Ok(())
    }
}

#[async_trait]
impl TickWriter for PgStore {
    async fn migrate(&self) -> Result<(), StoreError> {
        let mut client = self.pool.get().await.map_err(pool_err)?;
        let tx = client.transaction().await.map_err(pg_err)?;
        tx.execute("SELECT pg_advisory_xact_lock($1)", &[&LOCK_KEY])
            .await
            .map_err(pg_err)?;
        tx.batch_execute(
            "CREATE TABLE IF NOT EXISTS schema_version (
                version INTEGER NOT NULL, applied_at TIMESTAMPTZ NOT NULL DEFAULT now())",
        )
        .await
        .map_err(pg_err)?;
        let current: i32 = tx
            .query_one("SELECT coalesce(max(version), 0) FROM schema_version", &[])
            .await
            .map_err(pg_err)?
            .get(0);
        for (i, sql) in MIGRATIONS.iter().enumerate().skip(current as usize) {
            tx.batch_execute(sql).await.map_err(pg_err)?;
            tx.execute(
                "INSERT INTO schema_version (version) VALUES ($1)",
                &[&(i as i32 + 1)],
            )
            .await
            .map_err(pg_err)?;
            tracing::info!(version = i + 1, "applied database migration");
        }
        tx.commit().await.map_err(pg_err)?;
        drop(client);
        // Partitions for today and the next days, so the first writes find them ready.
        let today = tick_core::clock::now_ns().div_euclid(DAY_NS);
        self.ensure_partitions(today - 1..=today + 3).await
    }

    async fn insert_ticks(&self, ticks: &[Tick]) -> Result<u64, StoreError> {
        if ticks.is_empty() {
            return Ok(0);
        }
        self.ensure_partitions(ticks.iter().map(|t| t.ts_event_ns.div_euclid(DAY_NS)))
            .await?;
        let col = |f: fn(&Tick) -> String| ticks.iter().map(f).collect::<Vec<String>>();
        let keys = col(|t| t.key.clone());
        let symbols = col(|t| t.symbol.clone());
        let sources = col(|t| t.source.clone());
        let ts_event: Vec<i64> = ticks.iter().map(|t| t.ts_event_ns).collect();
        let ts_recv: Vec<i64> = ticks.iter().map(|t| t.ts_recv_ns).collect();
        let scale: Vec<i16> = ticks.iter().map(|t| i16::from(t.scale)).collect();
        let bid: Vec<i64> = ticks.iter().map(|t| t.bid).collect();
        let ask: Vec<i64> = ticks.iter().map(|t| t.ask).collect();
        let last: Vec<Option<i64>> = ticks.iter().map(|t| t.last).collect();
        let bid_size: Vec<f64> = ticks.iter().map(|t| t.bid_size).collect();
        let ask_size: Vec<f64> = ticks.iter().map(|t| t.ask_size).collect();
        let volume: Vec<f64> = ticks.iter().map(|t| t.volume).collect();
        let flags: Vec<i64> = ticks.iter().map(|t| i64::from(t.flags)).collect();
        let replay: Vec<bool> = ticks.iter().map(|t| t.replay).collect();
        let ts_route: Vec<i64> = ticks.iter().map(|t| t.route.ts_route_ns).collect();
        let seq: Vec<i64> = ticks.iter().map(|t| t.route.symbol_seq as i64).collect();
        let route_flags: Vec<i32> = ticks.iter().map(|t| t.route.flags as i32).collect();
        let gap: Vec<i64> = ticks.iter().map(|t| t.route.gap_ns).collect();
        let params: [&(dyn tokio_postgres::types::ToSql + Sync); 18] = [
            &keys, &symbols, &sources, &ts_event, &ts_recv, &scale, &bid, &ask, &last, &bid_size,
            &ask_size, &volume, &flags, &replay, &ts_route, &seq, &route_flags, &gap,
        ];
        let client = self.pool.get().await.map_err(pool_err)?;
        // Fast path: a plain insert, which PostgreSQL runs much faster than one with
        // ON CONFLICT (no speculative insertion). A batch holding an already stored key fails
        // whole on the unique key (nothing is written) and is written again with
        // ON CONFLICT DO NOTHING; after that the next batches take the careful path for a while,
        // as a replay or a resend usually brings many stored keys in a row.
        if self.careful_batches.load(Ordering::Relaxed) == 0 {
            let plain = client
                .prepare_cached(&format!("{INSERT_TICKS} {FROM_UNNEST}"))
                .await
                .map_err(pg_err)?;
            match client.execute(&plain, &params).await {
                Ok(n) => return Ok(n),
                Err(e) if e.code() == Some(&tokio_postgres::error::SqlState::UNIQUE_VIOLATION) => {
                    self.careful_batches
                        .store(CAREFUL_AFTER_CONFLICT, Ordering::Relaxed);
                }
                Err(e) => return Err(pg_err(e)),
            }
        } else {
            self.careful_batches.fetch_sub(1, Ordering::Relaxed);
        }
        let careful = client
            .prepare_cached(&format!(
                "{INSERT_TICKS} {FROM_UNNEST} ON CONFLICT DO NOTHING"
            ))
            .await
            .map_err(pg_err)?;
        client.execute(&careful, &params).await.map_err(pg_err)
    }

    async fn insert_dead_letters(&self, records: &[DeadLetterRecord]) -> Result<u64, StoreError> {
        if records.is_empty() {
            return Ok(0);
        }
        let reason: Vec<&str> = records.iter().map(|r| r.reason.as_str()).collect();
        let detail: Vec<&str> = records.iter().map(|r| r.detail.as_str()).collect();
        let payload: Vec<&[u8]> = records.iter().map(|r| r.payload.as_slice()).collect();
        let origin: Vec<&str> = records.iter().map(|r| r.origin.as_str()).collect();
        let component: Vec<&str> = records.iter().map(|r| r.component.as_str()).collect();
        let ts: Vec<i64> = records.iter().map(|r| r.ts_rejected_ns).collect();
        let client = self.pool.get().await.map_err(pool_err)?;
        client
            .execute(
                "INSERT INTO dead_letters (reason, detail, payload, origin, component, ts_rejected_ns)
                 SELECT * FROM UNNEST($1::text[], $2::text[], $3::bytea[], $4::text[], $5::text[], $6::bigint[])",
                &[&reason, &detail, &payload, &origin, &component, &ts],
            )
            .await
            .map_err(pg_err)
    }

    async fn insert_bars(&self, bars: &[tick_core::pb::Bar]) -> Result<u64, StoreError> {
        if bars.is_empty() {
            return Ok(0);
        }
        let text = |f: fn(&tick_core::pb::Bar) -> &str| bars.iter().map(f).collect::<Vec<&str>>();
        let int = |f: fn(&tick_core::pb::Bar) -> i64| bars.iter().map(f).collect::<Vec<i64>>();
        let (symbol, timeframe, side) = (
            text(|b| &b.symbol),
            text(|b| &b.timeframe),
            text(|b| &b.price_side),
        );
        let (open_t, close_t, scale) = (
            int(|b| b.open_time_ns),
            int(|b| b.close_time_ns),
            int(|b| i64::from(b.price_scale)),
        );
        let (o, h, l, c) = (
            int(|b| b.open),
            int(|b| b.high),
            int(|b| b.low),
            int(|b| b.close),
        );
        let (count, recv, flags) = (
            int(|b| b.tick_count as i64),
            int(|b| b.ts_recv_ns),
            int(|b| i64::from(b.flags)),
        );
        let volume: Vec<f64> = bars.iter().map(|b| b.volume).collect();
        let client = self.pool.get().await.map_err(pool_err)?;
        client
            .execute(
                "INSERT INTO bars (symbol, timeframe, price_side, open_time_ns, close_time_ns,
                    price_scale, open, high, low, close, tick_count, volume, ts_recv_ns, flags)
                 SELECT s, t, p, ot, ct, sc::smallint, o, h, l, c, n, v, r, f::integer
                 FROM UNNEST($1::text[], $2::text[], $3::text[], $4::bigint[], $5::bigint[],
                    $6::bigint[], $7::bigint[], $8::bigint[], $9::bigint[], $10::bigint[],
                    $11::bigint[], $12::float8[], $13::bigint[], $14::bigint[])
                    AS u(s, t, p, ot, ct, sc, o, h, l, c, n, v, r, f)
                 ON CONFLICT DO NOTHING",
                &[
                    &symbol, &timeframe, &side, &open_t, &close_t, &scale, &o, &h, &l, &c, &count,
                    &volume, &recv, &flags,
                ],
            )
            .await
            .map_err(pg_err)
    }
}

/// Reads a row of the `bars` table in the column order the queries select.
fn bar_row(r: &tokio_postgres::Row) -> tick_core::pb::Bar {
    tick_core::pb::Bar {
        symbol: r.get(0),
        timeframe: r.get(1),
        price_side: r.get(2),
        open_time_ns: r.get(3),
        close_time_ns: r.get(4),
        price_scale: r.get::<_, i16>(5) as u32,
        open: r.get(6),
        high: r.get(7),
        low: r.get(8),
        close: r.get(9),
        tick_count: r.get::<_, i64>(10) as u64,
        volume: r.get(11),
        ts_recv_ns: r.get(12),
        flags: r.get::<_, i32>(13) as u32,
    }
}

#[async_trait]
impl HistoryReader for PgStore {
    async fn bars_page(
        &self,
        symbol: &str,
        timeframe: &str,
        side: Option<&str>,
        from_ns: i64,
        to_ns: i64,
        after: Option<(i64, String)>,
        limit: usize,
    ) -> Result<Vec<tick_core::pb::Bar>, StoreError> {
        let (after_t, after_side) = after.unwrap_or((i64::MIN, String::new()));
        let client = self.pool.get().await.map_err(pool_err)?;
        let rows = client
            .query(
                "SELECT symbol, timeframe, price_side, open_time_ns, close_time_ns, price_scale,
                    open, high, low, close, tick_count, volume, ts_recv_ns, flags
                 FROM bars WHERE symbol = $1 AND timeframe = $2
                    AND ($3::text IS NULL OR price_side = $3)
                    AND open_time_ns >= $4 AND open_time_ns < $5
                    AND (open_time_ns, price_side) > ($6, $7)
                 ORDER BY open_time_ns, price_side
                 LIMIT $8",
                &[
                    &symbol,
                    &timeframe,
                    &side,
                    &from_ns,
                    &to_ns,
                    &after_t,
                    &after_side,
                    &(limit.min(i64::MAX as usize) as i64),
                ],
            )
            .await
            .map_err(pg_err)?;
        Ok(rows.iter().map(bar_row).collect())
    }

    async fn count_ticks(&self) -> Result<u64, StoreError> {
        let client = self.pool.get().await.map_err(pool_err)?;
        let n: i64 = client
            .query_one("SELECT count(*) FROM ticks", &[])
            .await
            .map_err(pg_err)?
            .get(0);
        Ok(n as u64)
    }

    async fn keys_between(&self, from_ns: i64, to_ns: i64) -> Result<Vec<String>, StoreError> {
        let client = self.pool.get().await.map_err(pool_err)?;
        let rows = client
            .query(
                "SELECT idempotency_key FROM ticks WHERE ts_event_ns >= $1 AND ts_event_ns < $2",
                &[&from_ns, &to_ns],
            )
            .await
            .map_err(pg_err)?;
        Ok(rows.iter().map(|r| r.get(0)).collect())
    }

    async fn ticks_between(
        &self,
        symbols: &[String],
        from_ns: i64,
        to_ns: i64,
        after: Option<(i64, String)>,
        limit: usize,
    ) -> Result<Vec<Tick>, StoreError> {
        let (after_ts, after_key) = after.unwrap_or((i64::MIN, String::new()));
        let client = self.pool.get().await.map_err(pool_err)?;
        // The cursor is the start of the index range too (GREATEST), so a page never rescans
        // the rows of the pages before it.
        let rows = client
            .query(
                "SELECT idempotency_key, symbol, source, ts_event_ns, ts_recv_ns, price_scale,
                        bid, ask, last, bid_size, ask_size, volume, flags, replay,
                        ts_route_ns, symbol_seq, route_flags, gap_ns
                 FROM ticks
                 WHERE ts_event_ns >= GREATEST($1::bigint, $3::bigint) AND ts_event_ns < $2
                   AND (ts_event_ns, idempotency_key) > ($3, $4)
                   AND (cardinality($5::text[]) = 0 OR symbol = ANY($5))
                 ORDER BY ts_event_ns, idempotency_key
                 LIMIT $6",
                &[
                    &from_ns,
                    &to_ns,
                    &after_ts,
                    &after_key,
                    &symbols,
                    &(limit as i64),
                ],
            )
            .await
            .map_err(pg_err)?;
        Ok(rows
            .iter()
            .map(|r| Tick {
                key: r.get(0),
                symbol: r.get(1),
                source: r.get(2),
                ts_event_ns: r.get(3),
                ts_recv_ns: r.get(4),
                scale: r.get::<_, i16>(5) as u8,
                bid: r.get(6),
                ask: r.get(7),
                last: r.get(8),
                bid_size: r.get(9),
                ask_size: r.get(10),
                volume: r.get(11),
                flags: r.get::<_, i64>(12) as u32,
                route: tick_core::tick::RouteInfo {
                    ts_route_ns: r.get(14),
                    symbol_seq: r.get::<_, i64>(15) as u64,
                    flags: r.get::<_, i32>(16) as u32,
                    gap_ns: r.get(17),
                },
                replay: r.get(13),
            })
            .collect())
    }

    async fn last_symbol_seqs(&self) -> Result<Vec<(String, u64)>, StoreError> {
        let client = self.pool.get().await.map_err(pool_err)?;
        let rows = client
            .query(
                "SELECT symbol, max(symbol_seq) FROM ticks WHERE ts_route_ns > 0 GROUP BY symbol",
                &[],
            )
            .await
            .map_err(pg_err)?;
        Ok(rows
            .iter()
            .map(|r| (r.get(0), r.get::<_, i64>(1) as u64))
            .collect())
    }

    async fn hours_with_ticks(
        &self,
        symbol: &str,
        from_ns: i64,
        to_ns: i64,
    ) -> Result<Vec<i64>, StoreError> {
        let from = tick_core::store::hour_floor(from_ns);
        if to_ns <= from {
            return Ok(Vec::new());
        }
        let client = self.pool.get().await.map_err(pool_err)?;
        // One index probe per hour rather than a scan of every tick in the range.
        let rows = client
            .query(
                "SELECT h FROM generate_series($2::bigint, $3::bigint - 1, $4::bigint) AS h
                 WHERE EXISTS (SELECT 1 FROM ticks
                               WHERE symbol = $1 AND ts_event_ns >= h AND ts_event_ns < h + $4)
                 ORDER BY h",
                &[&symbol, &from, &to_ns, &tick_core::store::HOUR_NS],
            )
            .await
            .map_err(pg_err)?;
        Ok(rows.iter().map(|r| r.get(0)).collect())
    }
}

#[async_trait]
impl ImportCheckpoints for PgStore {
    async fn finished_import_units(
        &self,
        source: &str,
    ) -> Result<std::collections::HashMap<String, u64>, StoreError> {
        let client = self.pool.get().await.map_err(pool_err)?;
        let rows = client
            .query(
                "SELECT unit, rows FROM import_progress WHERE source = $1",
                &[&source],
            )
            .await
            .map_err(pg_err)?;
        Ok(rows
            .iter()
            .map(|r| (r.get(0), r.get::<_, i64>(1) as u64))
            .collect())
    }

    async fn finish_import_unit(
        &self,
        source: &str,
        unit: &str,
        rows: u64,
    ) -> Result<(), StoreError> {
        let client = self.pool.get().await.map_err(pool_err)?;
        client
            .execute(
                "INSERT INTO import_progress (source, unit, rows) VALUES ($1, $2, $3)
                 ON CONFLICT (source, unit)
                 DO UPDATE SET rows = EXCLUDED.rows, finished_at = now()",
                &[&source, &unit, &(rows as i64)],
            )
            .await
            .map_err(pg_err)?;
        Ok(())
    }
}
