"""`replayer export parquet` read back with the published pyarrow and DuckDB packages.

Ticks: the 48-hour EURUSD Dukascopy fixture is imported with `replayer import dukascopy` into a
PostgreSQL database of the test's own, exported, and compared row by row with the table read
by psycopg: same count, every price the stored decimal (mantissa / 10^scale, exactly), every
timestamp equal to the nanosecond; DuckDB's `count(*)` over `read_parquet('out/**/*.parquet')`
agrees. Bars (and the ticks beside them): the same fixture run through the embedded pipeline
(`tickflow run --source dukascopy`, SQLite) is exported and compared with the tables read by
the sqlite3 module. A rerun skips the finished days, `--restart` rewrites them, and a bad range
or an empty selection fails with a clear message."""

import os
import sqlite3
import subprocess
from decimal import Decimal
from pathlib import Path

import duckdb
import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq
import pytest

from conftest import ROOT

FIXTURE = ROOT / ".." / "shared" / "fixtures" / "dukascopy"
FROM, TO = "2019-02-04T00:00:00Z", "2019-02-06T00:00:00Z"
FROM_NS, TO_NS = 1_549_238_400_000_000_000, 1_549_411_200_000_000_000
DAYS = ["2019-02-04", "2019-02-05"]
DAY_NS = 86_400_000_000_000


def run(cmd, ok=True, timeout=900):
    p = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, timeout=timeout,
                       env=dict(os.environ, RUST_LOG="warn"))
    if ok:
        assert p.returncode == 0, f"{cmd}\n{p.stdout}\n{p.stderr[-3000:]}"
    return p


def export(bins, store, out, *extra, ok=True):
    return run([bins("replayer"), "--metrics-addr", "127.0.0.1:0", "export", "parquet",
                "--store", store, "--symbols", "EURUSD", "--from", FROM, "--to", TO,
                "--out", out, *extra], ok=ok)


def dec(mantissa, scale):
    return None if mantissa is None else Decimal(mantissa).scaleb(-scale)


def read(out, kind):
    """Returns the export of `kind` as a pyarrow table (Hive partitions symbol and date)."""
    t = ds.dataset(out / kind, format="parquet", partitioning="hive").to_table()
    return t


def ints(table, column):
    return table.column(column).cast(pa.int64()).to_pylist()


def check_ticks(out, stored):
    """`stored`: rows (key, ts_event_ns, ts_recv_ns, scale, bid, ask, last, source) of the
    store, in any order. Checks the export against them, row by row."""
    t = read(out, "ticks")
    assert t.num_rows == len(stored) > 0
    assert t.schema.field("ts_event").type == pa.timestamp("ns", tz="UTC")
    assert t.schema.field("ts_recv").type == pa.timestamp("ns", tz="UTC")
    scales = {r[3] for r in stored}
    assert scales == {5}, scales
    assert t.schema.field("bid").type == pa.decimal128(18, 5)
    exported = zip(t.column("idempotency_key").to_pylist(), ints(t, "ts_event"), ints(t, "ts_recv"),
                   t.column("bid").to_pylist(), t.column("ask").to_pylist(),
                   t.column("last").to_pylist(), t.column("source").to_pylist(),
                   t.column("symbol").to_pylist(), t.column("date").to_pylist())
    by_key = {r[0]: r for r in stored}
    assert len(by_key) == len(stored)
    seen = set()
    for key, ts, recv, bid, ask, last, source, symbol, date in exported:
        k, s_ts, s_recv, scale, s_bid, s_ask, s_last, s_source = by_key[key]
        assert key not in seen, f"{key} exported twice"
        seen.add(key)
        assert (ts, recv) == (s_ts, s_recv), key
        assert (bid, ask, last) == (dec(s_bid, scale), dec(s_ask, scale), dec(s_last, scale)), key
        assert bid.as_tuple().exponent == -scale, "the instrument's decimals"
        assert (source, symbol) == (s_source, "EURUSD")
        assert str(date) == DAYS[(ts - FROM_NS) // DAY_NS], "the file of its UTC day"
    # Each file holds its day, in event-time order.
    for day in DAYS:
        f = out / "ticks" / "symbol=EURUSD" / f"date={day}" / "part-0.parquet"
        ts = pq.read_table(f, columns=["ts_event"]).column(0).cast(pa.int64()).to_pylist()
        start = FROM_NS + DAYS.index(day) * DAY_NS
        assert ts and all(start <= x < start + DAY_NS for x in ts)
        assert ts == sorted(ts)


def check_bars(out, stored):
    """`stored`: rows (timeframe, side, open_ns, close_ns, scale, open, high, low, close,
    tick_count, volume, recv_ns, flags) of the store."""
    t = read(out, "bars")
    assert t.num_rows == len(stored) > 0
    assert t.schema.field("open_time").type == pa.timestamp("ns", tz="UTC")
    assert {r[4] for r in stored} == {5}
    assert t.schema.field("close").type == pa.decimal128(18, 5)
    cols = ["timeframe", "price_side", "open", "high", "low", "close", "tick_count", "volume",
            "flags"]
    rows = zip(*(t.column(c).to_pylist() for c in cols), ints(t, "open_time"),
               ints(t, "close_time"), ints(t, "ts_recv"))
    by_key = {(r[0], r[1], r[2]): r for r in stored}
    assert len(by_key) == len(stored)
    seen = set()
    for tf, side, o, h, lo, c, n, vol, flags, open_ns, close_ns, recv in rows:
        s = by_key[(tf, side, open_ns)]
        assert (tf, side, open_ns) not in seen
        seen.add((tf, side, open_ns))
        scale = s[4]
        assert (close_ns, recv) == (s[3], s[11])
        assert (o, h, lo, c) == tuple(dec(m, scale) for m in s[5:9]), (tf, side, open_ns)
        assert (n, vol, flags) == (s[9], s[10], s[12])


def sql(query):
    """Runs `query` in a fresh in-memory DuckDB; returns its rows."""
    with duckdb.connect() as con:
        return con.execute(query).fetchall()


def duckdb_count(out):
    return sql(f"select count(*) from read_parquet('{out}/**/*.parquet')")[0][0]


@pytest.fixture
def pg_url():
    base = os.environ.get("DATABASE_URL")
    if not base:
        if os.environ.get("TICKFLOW_REQUIRE_SERVICES") == "1":
            pytest.fail("DATABASE_URL is not set")
        pytest.skip("DATABASE_URL is not set (run under scripts/test.sh)")
    import psycopg
    name = f"tickflow_parquet_{os.getpid()}"
    with psycopg.connect(base, autocommit=True) as c:
        c.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
        c.execute(f"CREATE DATABASE {name}")
    yield base.rsplit("/", 1)[0] + "/" + name
    with psycopg.connect(base, autocommit=True) as c:
        c.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


def test_imported_ticks_from_postgres_read_back_exactly_with_pyarrow_and_duckdb(
        bins, pg_url, tmp_path):
    import psycopg
    run([bins("replayer"), "--metrics-addr", "127.0.0.1:0", "import", "dukascopy",
         "--symbols", "EURUSD", "--from", FROM, "--to", TO, "--dukascopy-dir", FIXTURE,
         "--store", pg_url])
    out = tmp_path / "out"
    p = export(bins, pg_url, out, "--what", "ticks")
    assert "ticks: 2 files written" in p.stdout, p.stdout
    with psycopg.connect(pg_url) as c:
        stored = c.execute(
            "SELECT idempotency_key, ts_event_ns, ts_recv_ns, price_scale, bid, ask, last, source"
            " FROM ticks WHERE symbol = 'EURUSD' AND ts_event_ns >= %s AND ts_event_ns < %s",
            (FROM_NS, TO_NS)).fetchall()
        total = c.execute("SELECT count(*) FROM ticks").fetchone()[0]
    assert total == len(stored) == 266_219, "the whole fixture, imported once"
    check_ticks(out, stored)
    assert duckdb_count(out) == len(stored)
    # DuckDB reads the prices as exact decimals and the partitions from the paths.
    per_day = sql(
        f"select date::varchar, count(*), sum(bid) from read_parquet('{out}/**/*.parquet',"
        " hive_partitioning = true) group by all order by 1")
    with psycopg.connect(pg_url) as c:
        want = c.execute(
            "SELECT (ts_event_ns - %s) / %s, count(*), sum(bid) FROM ticks GROUP BY 1 ORDER BY 1",
            (FROM_NS, DAY_NS)).fetchall()
    assert per_day == [(DAYS[d], n, Decimal(s).scaleb(-5)) for d, n, s in want]

    again = export(bins, pg_url, out, "--what", "ticks")
    assert "ticks: 0 files written (0 rows), 2 skipped (exported by an earlier run, 266219 rows)" \
        in again.stdout, again.stdout
    redo = export(bins, pg_url, out, "--what", "ticks", "--restart")
    assert "ticks: 2 files written (266219 rows)" in redo.stdout, redo.stdout
    assert duckdb_count(out) == len(stored)
    assert not list(out.rglob("*.tmp")), "no temporary file left"


def test_pipeline_bars_and_ticks_from_sqlite_read_back_exactly(bins, tmp_path):
    db = tmp_path / "t.db"
    # The whole 48 hours through the embedded pipeline: ticks and 1s/1m bars stored.
    run([bins("tickflow"), "run", "--grpc-addr", "127.0.0.1:0", "--store", f"sqlite:{db}",
         "--source", "dukascopy", "--dukascopy-dir", FIXTURE, "--symbols", "EURUSD",
         "--from", FROM, "--to", TO])
    out = tmp_path / "out"
    p = export(bins, f"sqlite:{db}", out)
    assert "ticks: 2 files written" in p.stdout and "bars: 2 files written" in p.stdout, p.stdout
    with sqlite3.connect(db) as c:
        timeframes = {r[0] for r in c.execute("SELECT DISTINCT timeframe FROM bars")}
        assert timeframes == {"1s", "1m"}, "the export's default --timeframes are all there is"
        bars = c.execute(
            "SELECT timeframe, price_side, open_time_ns, close_time_ns, price_scale, open, high,"
            " low, close, tick_count, volume, ts_recv_ns, flags FROM bars WHERE symbol = 'EURUSD'"
            " AND open_time_ns >= ? AND open_time_ns < ?", (FROM_NS, TO_NS)).fetchall()
        assert len(bars) == c.execute("SELECT count(*) FROM bars").fetchone()[0]
        ticks = c.execute(
            "SELECT idempotency_key, ts_event_ns, ts_recv_ns, price_scale, bid, ask, last, source"
            " FROM ticks WHERE symbol = 'EURUSD' AND ts_event_ns >= ? AND ts_event_ns < ?",
            (FROM_NS, TO_NS)).fetchall()
    check_bars(out, bars)
    check_ticks(out, ticks)
    assert duckdb_count(out / "bars") == len(bars)
    assert duckdb_count(out) == len(bars) + len(ticks)
    by_tf = dict(sql(f"select timeframe, count(*) from read_parquet('{out}/bars/**/*.parquet')"
                     " group by all"))
    assert by_tf == {tf: sum(1 for b in bars if b[0] == tf) for tf in ("1s", "1m")}

    again = export(bins, f"sqlite:{db}", out, "--what", "bars")
    assert "bars: 0 files written (0 rows), 2 skipped" in again.stdout, again.stdout


def test_a_bad_range_or_an_empty_selection_fails_clearly(bins, tmp_path):
    store = f"sqlite:{tmp_path / 'empty.db'}"
    bad = run([bins("replayer"), "--metrics-addr", "127.0.0.1:0", "export", "parquet",
               "--store", store, "--symbols", "EURUSD", "--from", TO, "--to", FROM,
               "--out", tmp_path / "out"], ok=False)
    assert bad.returncode != 0 and "empty range" in bad.stderr, bad.stderr
    none = export(bins, store, tmp_path / "out", ok=False)
    assert none.returncode != 0 and "nothing to export" in none.stderr, none.stderr
    assert not (tmp_path / "out").exists() or not list((tmp_path / "out").rglob("*.parquet"))
