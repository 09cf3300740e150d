//! The embedded store: one SQLite file, no server. Writes are batched in transactions with
//! `INSERT OR IGNORE` on the idempotency key, so replays never duplicate a row.

use async_trait::async_trait;
use rusqlite::{Connection, OptionalExtension, params};
use crate::stores::StorePriority;
use std::path::Path;
use std::sync::{Arc, mpsc};
use tokio::sync::oneshot;
use tick_core::Tick;
use tick_core::error::Cause;
use tick_core::store::{
    DeadLetterRecord, HistoryReader, ImportCheckpoints, StoreError, TickWriter,
};

const MIGRATIONS: &[&str] = &[
    // 1: ticks, dead letters.
    "CREATE TABLE ticks (
        idempotency_key TEXT PRIMARY KEY,
        symbol TEXT NOT NULL,
        source TEXT NOT NULL,
        ts_event_ns INTEGER NOT NULL,
        ts_recv_ns INTEGER NOT NULL,
        price_scale INTEGER NOT NULL,
        bid INTEGER NOT NULL,
        ask INTEGER NOT NULL,
        last INTEGER,
        bid_size REAL NOT NULL,
        ask_size REAL NOT NULL,
        volume REAL NOT NULL,
        flags INTEGER NOT NULL,
        replay INTEGER NOT NULL
    ) WITHOUT ROWID;
    CREATE INDEX ticks_symbol_time ON ticks (symbol, ts_event_ns);
    CREATE TABLE dead_letters (
        id INTEGER PRIMARY KEY,
        reason TEXT NOT NULL,
        detail TEXT NOT NULL,
        payload BLOB NOT NULL,
        origin TEXT NOT NULL,
        component TEXT NOT NULL,
        ts_rejected_ns INTEGER NOT NULL
    );",
    // 2: checkpoints of bulk imports (`replayer import`): one row per finished unit of work.
    "CREATE TABLE import_progress (
        source TEXT NOT NULL,
        unit TEXT NOT NULL,
        rows INTEGER NOT NULL,
        finished_at_ns INTEGER NOT NULL,
        PRIMARY KEY (source, unit)
    ) WITHOUT ROWID;",
    // 3: closed bars, one row per symbol, timeframe, price side and open time.
    "CREATE TABLE bars (
        symbol TEXT NOT NULL,
        timeframe TEXT NOT NULL,
        price_side TEXT NOT NULL,
        open_time_ns INTEGER NOT NULL,
        close_time_ns INTEGER NOT NULL,
        price_scale INTEGER NOT NULL,
        open INTEGER NOT NULL,
        high INTEGER NOT NULL,
        low INTEGER NOT NULL,
        close INTEGER NOT NULL,
        tick_count INTEGER NOT NULL,
        volume REAL NOT NULL,
        ts_recv_ns INTEGER NOT NULL,
        flags INTEGER NOT NULL,
        PRIMARY KEY (symbol, timeframe, price_side, open_time_ns)
    ) WITHOUT ROWID;",
    // 4: the router's fields of a clean tick (0 on rows stored before, and on ticks that did
    // not pass a router): what `Subscribe` with `since` stitches stored history to the live
    // stream with, and what a restarted embedded router continues its sequences from.
    "ALTER TABLE ticks ADD COLUMN ts_route_ns INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE ticks ADD COLUMN symbol_seq INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE ticks ADD COLUMN route_flags INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE ticks ADD COLUMN gap_ns INTEGER NOT NULL DEFAULT 0;",
];

/// A [`TickStore`] in one SQLite file. Its connection lives on a thread of its own, which
/// runs every query in turn (one writer, as SQLite allows) at a lower CPU priority than the
/// tick path: in embedded mode the store's batches share two cores with ingest, router, engine
/// and the gRPC stream, and a commit that holds a core delays the ticks that wake meanwhile.
/// Storage is throughput work, acknowledged after commit, so it yields; it still gets its
/// share whenever it has work (see [`STORE_NICE`]).
#[derive(Clone)]
pub struct SqliteStore {
    thread: Arc<StoreThread>,
}

/// The store's thread and its queue. Dropping the last handle closes the queue and waits for
/// the thread to close the connection, as dropping the connection itself did: whoever opens
/// the file next (the `sqlite3` CLI, a restarted process) finds it closed and checkpointed.
struct StoreThread {
    jobs: Option<mpsc::Sender<Job>>,
    handle: Option<std::thread::JoinHandle<()>>,
}

impl Drop for StoreThread {
    fn drop(&mut self) {
        self.jobs = None;
        if let Some(h) = self.handle.take()
            && h.thread().id() != std::thread::current().id()
        {
            let _ = h.join();
        }
    }
}

/// A query run on the store's thread.
type Job = Box<dyn FnOnce(&mut Connection) + Send>;

/// The nice value the store's thread sets itself (Linux; 0 is the default, 19 the lowest
/// priority). With it, the CFS scheduler weighs the store's thread at about a third of a
/// default one when both want the same core: at 10,000 ticks/s embedded this cut the
/// subscriber's p99 by about 16 % (BENCHMARKS.md, "The store's priority").
pub const STORE_NICE: i32 = 5;

fn db_err(e: rusqlite::Error) -> StoreError {
    match e {
        rusqlite::Error::SqliteFailure(f, _)
            if matches!(
                f.code,
                rusqlite::ErrorCode::DatabaseBusy
                    | rusqlite::ErrorCode::DatabaseLocked
                    | rusqlite::ErrorCode::DiskFull
                    | rusqlite::ErrorCode::SystemIoFailure
                    | rusqlite::ErrorCode::CannotOpen
            ) =>
        {
            StoreError::Unavailable(Cause::wrap(e))
        }
        other => StoreError::Data(Cause::wrap(other)),
    }
}

/// Opens the SQLite store of a `sqlite:PATH` URL: this module's line in the store factory.
pub fn open(
    url: &str,
    options: &crate::stores::StoreOptions,
) -> Result<crate::stores::Stores, StoreError> {
    let path = url.strip_prefix("sqlite:").unwrap_or(url);
    if path.is_empty() || path.starts_with("//") {
        return Err(StoreError::Unavailable(Cause::msg(format!(
            "{url:?}: write sqlite:PATH, e.g. sqlite:tickflow.db or sqlite:/var/lib/tickflow/ticks.db"
        ))));
    }
    Ok(crate::stores::Stores::full(
        Arc::new(SqliteStore::open_with(Path::new(path), options.priority)?),
        url.to_string(),
    ))
}

impl SqliteStore {
    /// Opens (creating if needed) the database file at `path`; the store's thread runs at
    /// [`StorePriority::Lowered`].
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        Self::open_with(path, StorePriority::Lowered)
    }

    /// Opens (creating if needed) the database file at `path`; the store's thread runs at
    /// `priority`.
    pub fn open_with(path: &Path, priority: StorePriority) -> Result<Self, StoreError> {
        let conn = Connection::open(path).map_err(|e| {
            StoreError::Unavailable(Cause::new(format!("open {}", path.display()), e))
        })?;
        // - WAL lets readers (sqlite3, the replayer) query while we write; FULL sync makes a
        //   committed batch survive a power cut, not only a crash.
        // - A 16 MiB page cache (SQLite's default is 2 MiB) and a checkpoint every 16,384 WAL
        //   pages (64 MiB; the default is 1,000) instead of re-reading B-tree pages from the OS
        //   and copying them back on every checkpoint: at 100,000 ticks/s `tickflow run` stored
        //   about 35 % more rows per second with both, with less system time (BENCHMARKS.md).
        conn.execute_batch(
            "PRAGMA journal_mode = WAL; PRAGMA synchronous = FULL; PRAGMA busy_timeout = 5000;
             PRAGMA cache_size = -16384; PRAGMA wal_autocheckpoint = 16384;",
        )
        .map_err(db_err)?;
        let (jobs, rx) = mpsc::channel::<Job>();
        let handle = std::thread::Builder::new()
            .name("tickflow-sqlite".into())
            .spawn(move || serve(conn, rx, priority))
            .map_err(|e| StoreError::Unavailable(Cause::new("start the store's thread", e)))?;
        Ok(Self {
            thread: Arc::new(StoreThread {
                jobs: Some(jobs),
                handle: Some(handle),
            }),
        })
    }

    /// Runs `f` on the store's thread and returns its result.
    async fn with_conn<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Connection) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        let (tx, rx) = oneshot::channel();
        self.thread
            .jobs
            .as_ref()
            .expect("the queue closes only when the store is dropped")
            .send(Box::new(move |c| {
                // The caller may have gone (its future dropped): nothing to tell it then.
                let _ = tx.send(f(c));
            }))
            .map_err(|_| StoreError::Unavailable(Cause::msg("the store's thread has stopped")))?;
        rx.await
            .map_err(|_| StoreError::Unavailable(Cause::msg("store query failed (it panicked)")))?
    }
}

/// The store's thread: lowers its priority, then runs each job on the connection until every
/// handle to the store is dropped. A job that panics fails only its own caller.
fn serve(mut conn: Connection, jobs: mpsc::Receiver<Job>, priority: StorePriority) {
    lower_priority(priority);
    while let Ok(job) = jobs.recv() {
        if std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| job(&mut conn))).is_err() {
            tracing::error!("a SQLite store query panicked; its caller gets an error");
        }
    }
}

/// Lowers the calling thread's priority (Linux, where nice values and scheduling policies are
/// per thread): [`StorePriority::Lowered`] sets its nice value to [`STORE_NICE`],
/// [`StorePriority::Background`] its policy to `SCHED_IDLE`. Best effort: on failure the store
/// says so and runs at the priority it has (`SCHED_IDLE` falls back to nice).
fn lower_priority(priority: StorePriority) {
    #[cfg(target_os = "linux")]
    {
        use thread_priority::ThreadPriority;
        use thread_priority::unix::{
            NormalThreadSchedulePolicy, ThreadSchedulePolicy, set_thread_priority_and_policy,
            thread_native_id,
        };
        if priority == StorePriority::Background {
            let idle = ThreadSchedulePolicy::Normal(NormalThreadSchedulePolicy::Idle);
            match set_thread_priority_and_policy(thread_native_id(), ThreadPriority::Min, idle) {
                Ok(()) => return,
                Err(e) => tracing::warn!(
                    error = ?e,
                    "could not run the SQLite store's thread in the background (SCHED_IDLE); \
                     lowering its nice value instead"
                ),
            }
        }
        if let Err(e) = rustix::process::setpriority_process(None, STORE_NICE) {
            tracing::warn!(error = %e, "could not lower the SQLite store thread's priority");
        }
    }
    #[cfg(not(target_os = "linux"))]
    let _ = priority;
}

#[async_trait]
impl TickWriter for SqliteStore {
    async fn migrate(&self) -> Result<(), StoreError> {
        self.with_conn(|c| {
            c.execute_batch("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)")
                .map_err(db_err)?;
            let current: i64 = c
                .query_row("SELECT max(version) FROM schema_version", [], |r| {
                    r.get::<_, Option<i64>>(0)
                })
                .optional()
                .map_err(db_err)?
                .flatten()
                .unwrap_or(0);
            for (i, sql) in MIGRATIONS.iter().enumerate().skip(current as usize) {
                let tx = c.transaction().map_err(db_err)?;
                tx.execute_batch(sql).map_err(db_err)?;
                tx.execute("INSERT INTO schema_version VALUES (?1)", [i as i64 + 1])
                    .map_err(db_err)?;
                tx.commit().map_err(db_err)?;
            }
            Ok(())
        })
        .await
    }

    async fn insert_ticks(&self, ticks: &[Tick]) -> Result<u64, StoreError> {
        let ticks = ticks.to_vec();
        self.with_conn(move |c| {
            let tx = c.transaction().map_err(db_err)?;
            let mut n = 0u64;
            {
                let mut stmt = tx
                    .prepare_cached(
                        "INSERT OR IGNORE INTO ticks (idempotency_key, symbol, source,
                            ts_event_ns, ts_recv_ns, price_scale, bid, ask, last, bid_size,
                            ask_size, volume, flags, replay, ts_route_ns, symbol_seq,
                            route_flags, gap_ns)
                         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14,
                            ?15, ?16, ?17, ?18)",
                    )
                    .map_err(db_err)?;
                for t in &ticks {
                    n += stmt
                        .execute(params![
                            t.key,
                            t.symbol,
                            t.source,
                            t.ts_event_ns,
                            t.ts_recv_ns,
                            t.scale,
                            t.bid,
                            t.ask,
                            t.last,
                            t.bid_size,
                            t.ask_size,
                            t.volume,
                            t.flags,
                            t.replay,
                            t.route.ts_route_ns,
                            t.route.symbol_seq as i64,
                            t.route.flags,
                            t.route.gap_ns,
                        ])
                        .map_err(db_err)? as u64;
                }
            }
            tx.commit().map_err(db_err)?;
            Ok(n)
        })
        .await
    }

    async fn insert_dead_letters(&self, records: &[DeadLetterRecord]) -> Result<u64, StoreError> {
        let records = records.to_vec();
        self.with_conn(move |c| {
            let tx = c.transaction().map_err(db_err)?;
            {
                let mut stmt = tx
                    .prepare_cached(
                        "INSERT INTO dead_letters
                         (reason, detail, payload, origin, component, ts_rejected_ns)
                         VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                    )
                    .map_err(db_err)?;
                for r in &records {
                    stmt.execute(params![
                        r.reason,
                        r.detail,
                        r.payload,
                        r.origin,
                        r.component,
                        r.ts_rejected_ns
                    ])
                    .map_err(db_err)?;
                }
            }
            tx.commit().map_err(db_err)?;
            Ok(records.len() as u64)
        })
        .await
    }

    async fn insert_bars(&self, bars: &[tick_core::pb::Bar]) -> Result<u64, StoreError> {
        let bars = bars.to_vec();
        self.with_conn(move |c| {
            let tx = c.transaction().map_err(db_err)?;
            let mut n = 0;
            {
                let mut stmt = tx
                    .prepare_cached(
                        "INSERT OR IGNORE INTO bars (symbol, timeframe, price_side, open_time_ns,
                            close_time_ns, price_scale, open, high, low, close, tick_count,
                            volume, ts_recv_ns, flags)
                         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14)",
                    )
                    .map_err(db_err)?;
                for b in &bars {
                    n += stmt
                        .execute(params![
                            b.symbol,
                            b.timeframe,
                            b.price_side,
                            b.open_time_ns,
                            b.close_time_ns,
                            b.price_scale,
                            b.open,
                            b.high,
                            b.low,
                            b.close,
                            b.tick_count as i64,
                            b.volume,
                            b.ts_recv_ns,
                            b.flags
                        ])
                        .map_err(db_err)? as u64;
                }
            }
            tx.commit().map_err(db_err)?;
            Ok(n)
        })
        .await
    }
}

/// Reads a row of the `bars` table in the column order the queries select.
fn bar_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<tick_core::pb::Bar> {
    Ok(tick_core::pb::Bar {
        symbol: r.get(0)?,
        timeframe: r.get(1)?,
        price_side: r.get(2)?,
        open_time_ns: r.get(3)?,
        close_time_ns: r.get(4)?,
        price_scale: r.get(5)?,
        open: r.get(6)?,
        high: r.get(7)?,
        low: r.get(8)?,
        close: r.get(9)?,
        tick_count: r.get::<_, i64>(10)? as u64,
        volume: r.get(11)?,
        ts_recv_ns: r.get(12)?,
        flags: r.get(13)?,
    })
}

#[async_trait]
impl HistoryReader for SqliteStore {
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
        let (symbol, timeframe) = (symbol.to_string(), timeframe.to_string());
        let side = side.map(str::to_string);
        let (after_t, after_side) = after.unwrap_or((i64::MIN, String::new()));
        self.with_conn(move |c| {
            // One side's page is a range of the primary key (symbol, timeframe, price_side,
            // open_time_ns); every side's is sorted from the rest of the range.
            let side_filter = if side.is_some() {
                "price_side = ?3"
            } else {
                "?3 IS NULL"
            };
            let mut stmt = c
                .prepare_cached(&format!(
                    "SELECT symbol, timeframe, price_side, open_time_ns, close_time_ns,
                        price_scale, open, high, low, close, tick_count, volume, ts_recv_ns, flags
                     FROM bars WHERE symbol = ?1 AND timeframe = ?2 AND {side_filter}
                        AND open_time_ns >= ?4 AND open_time_ns < ?5
                        AND (open_time_ns, price_side) > (?6, ?7)
                     ORDER BY open_time_ns, price_side
                     LIMIT ?8"
                ))
                .map_err(db_err)?;
            let rows = stmt
                .query_map(
                    params![
                        symbol,
                        timeframe,
                        side,
                        from_ns,
                        to_ns,
                        after_t,
                        after_side,
                        limit as i64
                    ],
                    bar_row,
                )
                .map_err(db_err)?;
            rows.collect::<Result<Vec<_>, _>>().map_err(db_err)
        })
        .await
    }

    async fn count_ticks(&self) -> Result<u64, StoreError> {
        self.with_conn(|c| {
            c.query_row("SELECT count(*) FROM ticks", [], |r| r.get::<_, i64>(0))
                .map(|n| n as u64)
                .map_err(db_err)
        })
        .await
    }

    async fn keys_between(&self, from_ns: i64, to_ns: i64) -> Result<Vec<String>, StoreError> {
        self.with_conn(move |c| {
            let mut stmt = c
                .prepare_cached("SELECT idempotency_key FROM ticks WHERE ts_event_ns >= ?1 AND ts_event_ns < ?2")
                .map_err(db_err)?;
            let rows = stmt
                .query_map(params![from_ns, to_ns], |r| r.get::<_, String>(0))
                .map_err(db_err)?;
            rows.collect::<Result<Vec<_>, _>>().map_err(db_err)
        })
        .await
    }

    async fn ticks_between(
        &self,
        symbols: &[String],
        from_ns: i64,
        to_ns: i64,
        after: Option<(i64, String)>,
        limit: usize,
    ) -> Result<Vec<Tick>, StoreError> {
        let symbols = symbols.to_vec();
        self.with_conn(move |c| {
            let (after_ts, after_key) = after.unwrap_or((i64::MIN, String::new()));
            // The symbols and the limit go into the query, and the cursor into the index
            // range's start (`max`: with `ts_event_ns >= ?1` beside the row value, SQLite starts
            // every page at the range's start): one symbol's page is then a range of the index
            // (symbol, ts_event_ns, idempotency_key), not a scan or a sort of the table.
            let in_symbols = if symbols.is_empty() {
                String::new()
            } else {
                let marks: Vec<String> =
                    (0..symbols.len()).map(|i| format!("?{}", i + 6)).collect();
                format!("AND symbol IN ({})", marks.join(", "))
            };
            let mut stmt = c
                .prepare_cached(&format!(
                    "SELECT idempotency_key, symbol, source, ts_event_ns, ts_recv_ns, price_scale,
                            bid, ask, last, bid_size, ask_size, volume, flags, replay,
                            ts_route_ns, symbol_seq, route_flags, gap_ns
                     FROM ticks
                     WHERE ts_event_ns >= max(?1, ?3) AND ts_event_ns < ?2
                       AND (ts_event_ns, idempotency_key) > (?3, ?4) {in_symbols}
                     ORDER BY ts_event_ns, idempotency_key
                     LIMIT ?5"
                ))
                .map_err(db_err)?;
            let limit = limit as i64;
            let mut values: Vec<&dyn rusqlite::ToSql> =
                vec![&from_ns, &to_ns, &after_ts, &after_key, &limit];
            values.extend(symbols.iter().map(|s| s as &dyn rusqlite::ToSql));
            let mut rows = stmt.query(values.as_slice()).map_err(db_err)?;
            let mut out = Vec::new();
            while let Some(r) = rows.next().map_err(db_err)? {
                let symbol: String = r.get(1).map_err(db_err)?;
                out.push(Tick {
                    key: r.get(0).map_err(db_err)?,
                    symbol,
                    source: r.get(2).map_err(db_err)?,
                    ts_event_ns: r.get(3).map_err(db_err)?,
                    ts_recv_ns: r.get(4).map_err(db_err)?,
                    scale: r.get(5).map_err(db_err)?,
                    bid: r.get(6).map_err(db_err)?,
                    ask: r.get(7).map_err(db_err)?,
                    last: r.get(8).map_err(db_err)?,
                    bid_size: r.get(9).map_err(db_err)?,
                    ask_size: r.get(10).map_err(db_err)?,
                    volume: r.get(11).map_err(db_err)?,
                    flags: r.get(12).map_err(db_err)?,
                    route: tick_core::tick::RouteInfo {
                        ts_route_ns: r.get(14).map_err(db_err)?,
                        symbol_seq: r.get::<_, i64>(15).map_err(db_err)? as u64,
                        flags: r.get(16).map_err(db_err)?,
                        gap_ns: r.get(17).map_err(db_err)?,
                    },
                    replay: r.get(13).map_err(db_err)?,
                });
            }
            Ok(out)
        })
        .await
    }

    async fn last_symbol_seqs(&self) -> Result<Vec<(String, u64)>, StoreError> {
        self.with_conn(|c| {
            let mut stmt = c
                .prepare_cached(
                    "SELECT symbol, max(symbol_seq) FROM ticks WHERE ts_route_ns > 0 GROUP BY symbol",
                )
                .map_err(db_err)?;
            let rows = stmt
                .query_map([], |r| Ok((r.get(0)?, r.get::<_, i64>(1)? as u64)))
                .map_err(db_err)?;
            rows.collect::<Result<Vec<_>, _>>().map_err(db_err)
        })
        .await
    }

    async fn hours_with_ticks(
        &self,
        symbol: &str,
        from_ns: i64,
        to_ns: i64,
    ) -> Result<Vec<i64>, StoreError> {
        use tick_core::store::{HOUR_NS, hour_floor};
        let symbol = symbol.to_string();
        self.with_conn(move |c| {
            // One index probe per hour rather than a scan of every tick in the range.
            let mut stmt = c
                .prepare_cached(
                    "SELECT EXISTS (SELECT 1 FROM ticks
                                    WHERE symbol = ?1 AND ts_event_ns >= ?2 AND ts_event_ns < ?3)",
                )
                .map_err(db_err)?;
            let mut out = Vec::new();
            let mut h = hour_floor(from_ns);
            while h < to_ns {
                let any: bool = stmt
                    .query_row(params![symbol, h, h + HOUR_NS], |r| r.get(0))
                    .map_err(db_err)?;
                if any {
                    out.push(h);
                }
                h += HOUR_NS;
            }
            Ok(out)
        })
        .await
    }
}

#[async_trait]
impl ImportCheckpoints for SqliteStore {
    async fn finished_import_units(
        &self,
        source: &str,
    ) -> Result<std::collections::HashMap<String, u64>, StoreError> {
        let source = source.to_string();
        self.with_conn(move |c| {
            let mut stmt = c
                .prepare_cached("SELECT unit, rows FROM import_progress WHERE source = ?1")
                .map_err(db_err)?;
            let rows = stmt
                .query_map(params![source], |r| {
                    Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)? as u64))
                })
                .map_err(db_err)?;
            rows.collect::<Result<_, _>>().map_err(db_err)
        })
        .await
    }

    async fn finish_import_unit(
        &self,
        source: &str,
        unit: &str,
        rows: u64,
    ) -> Result<(), StoreError> {
        let (source, unit) = (source.to_string(), unit.to_string());
        self.with_conn(move |c| {
            c.execute(
                "INSERT INTO import_progress (source, unit, rows, finished_at_ns)
                 VALUES (?1, ?2, ?3, ?4)
                 ON CONFLICT (source, unit)
                 DO UPDATE SET rows = excluded.rows, finished_at_ns = excluded.finished_at_ns",
                params![source, unit, rows as i64, tick_core::clock::now_ns()],
            )
            .map_err(db_err)?;
            Ok(())
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Returns field `n` (numbered from 1, as in proc(5)) of the calling thread's
    /// `/proc/thread-self/stat` (Linux).
    fn own_stat_field(n: usize) -> Option<i32> {
        let s = std::fs::read_to_string("/proc/thread-self/stat").ok()?;
        // Fields from the third on follow the command name's closing parenthesis.
        let after_comm = &s[s.rfind(')')? + 2..];
        after_comm.split(' ').nth(n - 3)?.parse().ok()
    }

    #[tokio::test]
    async fn a_background_store_runs_its_thread_at_sched_idle() {
        let dir = tempfile::tempdir().unwrap();
        let store =
            SqliteStore::open_with(&dir.path().join("t.db"), StorePriority::Background).unwrap();
        store.migrate().await.unwrap();
        // Field 41 is the scheduling policy; SCHED_IDLE is 5 (SCHED_OTHER is 0).
        let policy = store.with_conn(|_| Ok(own_stat_field(41))).await.unwrap();
        if cfg!(target_os = "linux") {
            assert_eq!(policy, Some(5), "the store's thread runs at SCHED_IDLE");
            // The caller's own thread keeps its policy.
            assert_eq!(own_stat_field(41), Some(0));
        }
        // It stores and reads back as any other.
        assert_eq!(store.count_ticks().await.unwrap(), 0);
    }

    #[tokio::test]
    async fn queries_run_on_a_lower_priority_thread_that_outlives_a_panicking_query() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(&dir.path().join("t.db")).unwrap();
        store.migrate().await.unwrap();

        let on = store
            .with_conn(|_| {
                let name = std::thread::current().name().map(str::to_string);
                // Field 19 of /proc/thread-self/stat is the thread's nice value (Linux).
                Ok((name, own_stat_field(19)))
            })
            .await
            .unwrap();
        assert_eq!(on.0.as_deref(), Some("tickflow-sqlite"));
        if cfg!(target_os = "linux") {
            assert_eq!(on.1, Some(STORE_NICE), "the store's thread runs at nice {STORE_NICE}");
        }

        let failed = store
            .with_conn(|_| -> Result<(), StoreError> { panic!("a query that panics") })
            .await;
        assert!(matches!(failed, Err(StoreError::Unavailable(_))), "{failed:?}");
        // The thread is still there for the next query.
        assert_eq!(store.count_ticks().await.unwrap(), 0);

        // Dropping the store closes the connection before returning: the WAL is checkpointed
        // and removed, as when the connection itself was dropped.
        let wal = dir.path().join("t.db-wal");
        assert!(wal.exists());
        drop(store);
        assert!(!wal.exists(), "the connection was closed when the store was dropped");
    }
}
