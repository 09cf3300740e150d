"""The Python client's `history` and `bars` against a real `tickflow run`: two hours of the
Dukascopy EURUSD fixture are stored by one run, a second run (MT5 source: no new ticks) serves
them with a bearer token, and what the client returns equals the SQLite file read with the
sqlite3 module: every tick and bar, in order, prices exact (lists of messages, and pandas
DataFrames with a nanosecond UTC index and decimal.Decimal prices)."""

import datetime as dt
import sqlite3
import subprocess
from decimal import Decimal

import grpc
import pytest

from conftest import ROOT, free_port, wait_port
from test_python_client import stop

FIXTURES = ROOT.parent / "shared" / "fixtures" / "dukascopy"
START, END = "2019-02-04T00:00:00Z", "2019-02-04T02:00:00Z"
START_NS = 1_549_238_400_000_000_000
END_NS = START_NS + 2 * 3_600 * 1_000_000_000
TOKEN = "s3cret"


@pytest.fixture(scope="module")
def served(bins, tmp_path_factory):
    """Stores the fixture's first two hours of EURUSD with one `tickflow run`, then serves the
    file with another; yields (target, path of the SQLite file)."""
    if not FIXTURES.is_dir():
        pytest.skip(f"{FIXTURES} is missing")
    db = tmp_path_factory.mktemp("history") / "t.db"
    fill = subprocess.run(
        [bins("tickflow"), "run", "--source", "dukascopy", "--dukascopy-dir", FIXTURES,
         "--symbols", "EURUSD", "--from", START, "--to", END, "--store", f"sqlite:{db}",
         "--grpc-addr", f"127.0.0.1:{free_port()}", "--status-interval", "1h"],
        capture_output=True, text=True, timeout=300,
    )
    assert fill.returncode == 0, fill.stderr[-2000:]
    port = free_port()
    proc = subprocess.Popen(
        [bins("tickflow"), "run", "--source", "mt5", "--mt5-token", "t", "--mt5-listen",
         f"127.0.0.1:{free_port()}", "--store", f"sqlite:{db}", "--grpc-addr",
         f"127.0.0.1:{port}", "--auth-token", TOKEN, "--status-interval", "1h"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )
    try:
        wait_port(port, proc=proc)
        yield f"127.0.0.1:{port}", db
    finally:
        stop(proc)


def sql_ticks(db, start_ns, end_ns):
    with sqlite3.connect(db) as c:
        return c.execute(
            "SELECT idempotency_key, symbol, source, ts_event_ns, ts_recv_ns, price_scale, bid, "
            "ask, last, bid_size, ask_size, volume, flags, replay FROM ticks WHERE symbol = "
            "'EURUSD' AND ts_event_ns >= ? AND ts_event_ns < ? ORDER BY ts_event_ns, "
            "idempotency_key", (start_ns, end_ns)).fetchall()


def sql_bars(db, timeframe, side, start_ns, end_ns):
    where = "AND price_side = ?" if side else ""
    args = (timeframe, start_ns, end_ns) + ((side,) if side else ())
    with sqlite3.connect(db) as c:
        return c.execute(
            "SELECT symbol, timeframe, price_side, open_time_ns, close_time_ns, price_scale, "
            "open, high, low, close, tick_count, volume, ts_recv_ns, flags FROM bars WHERE "
            f"symbol = 'EURUSD' AND timeframe = ? AND open_time_ns >= ? AND open_time_ns < ? "
            f"{where} ORDER BY open_time_ns, price_side", args).fetchall()


def tick_row(t):
    return (t.idempotency_key, t.symbol, t.source, t.ts_event_ns, t.ts_recv_ns, t.price_scale,
            t.bid, t.ask, t.last if t.HasField("last") else None, t.bid_size, t.ask_size,
            t.volume, t.flags, int(t.replay))


def bar_row(b):
    return (b.symbol, b.timeframe, b.price_side, b.open_time_ns, b.close_time_ns, b.price_scale,
            b.open, b.high, b.low, b.close, b.tick_count, b.volume, b.ts_recv_ns, b.flags)


def test_time_arguments_are_exact_nanoseconds(tf):
    assert tf.to_ns(START) == START_NS
    assert tf.to_ns("2019-02-04T01:00:00.123456+01:00") == START_NS + 123_456_000
    assert tf.to_ns(dt.datetime(2019, 2, 4)) == START_NS  # naive means UTC
    assert tf.to_ns(dt.datetime(2019, 2, 4, tzinfo=dt.timezone.utc)) == START_NS
    assert tf.to_ns(START_NS + 7) == START_NS + 7
    assert tf.price(110235, 5) == Decimal("1.10235") and str(tf.price(-5, 2)) == "-0.05"


def test_history_returns_the_stored_ticks_in_order(tf, served):
    target, db = served
    want = sql_ticks(db, START_NS, END_NS)
    assert len(want) > 1000, "the fixture's two hours are stored"
    got = tf.history(target, "eurusd", START, END, token=TOKEN)
    assert [tick_row(t) for t in got] == want
    # A part of the range, given as datetimes and ns; small chunks.
    a, b = START_NS + 1_800 * 10**9 + 1, START_NS + 3_600 * 10**9
    got = tf.history(target, ["EURUSD"], dt.datetime(2019, 2, 4, 0, 30, tzinfo=dt.timezone.utc),
                     b, token=TOKEN, max_ticks_per_chunk=7)
    assert [tick_row(t) for t in got] == sql_ticks(db, START_NS + 1_800 * 10**9, b)
    got = tf.history(target, ["EURUSD"], a, b, token=TOKEN)
    assert [tick_row(t) for t in got] == sql_ticks(db, a, b)
    assert tf.history(target, "GBPUSD", START, END, token=TOKEN) == []


def test_bars_return_the_rows_of_the_bars_table(tf, served):
    target, db = served
    for timeframe, side in [("1m", "bid"), ("1m", ""), ("1s", "bid"), ("1s", "ask"), ("5m", "")]:
        want = sql_bars(db, timeframe, side, START_NS, END_NS)
        got = tf.bars(target, "EURUSD", timeframe, START, END, side=side, token=TOKEN)
        assert [bar_row(b) for b in got] == want, (timeframe, side)
    assert len(sql_bars(db, "1m", "bid", START_NS, END_NS)) >= 100, "two hours of 1m bars"


def test_errors_are_grpc_statuses(tf, served):
    target, _ = served
    for call, code in [
        (lambda: tf.history(target, "EURUSD", END, START, token=TOKEN),
         grpc.StatusCode.INVALID_ARGUMENT),
        (lambda: tf.history(target, "EUR/USD", START, END, token=TOKEN),
         grpc.StatusCode.INVALID_ARGUMENT),
        (lambda: tf.bars(target, "EURUSD", "1x", START, END, token=TOKEN),
         grpc.StatusCode.INVALID_ARGUMENT),
        (lambda: tf.bars(target, "EURUSD", "1m", START, END, side="last", token=TOKEN),
         grpc.StatusCode.INVALID_ARGUMENT),
        (lambda: tf.history(target, "EURUSD", START, END), grpc.StatusCode.UNAUTHENTICATED),
        (lambda: tf.bars(target, "EURUSD", "1m", START, END, token="wrong"),
         grpc.StatusCode.UNAUTHENTICATED),
    ]:
        with pytest.raises(grpc.RpcError) as e:
            call()
        assert e.value.code() == code


def test_dataframes_have_a_utc_ns_index_and_exact_decimal_prices(tf, served):
    pd = pytest.importorskip("pandas")
    target, db = served
    want = sql_ticks(db, START_NS, END_NS)
    frame = tf.history(target, "EURUSD", START, END, token=TOKEN, as_frame=True)
    assert isinstance(frame, pd.DataFrame) and len(frame) == len(want)
    assert str(frame.index.dtype) == "datetime64[ns, UTC]" and frame.index.name == "ts_event"
    assert list(frame.index.asi8) == [r[3] for r in want]
    assert list(pd.DatetimeIndex(frame["ts_recv"]).asi8) == [r[4] for r in want]
    assert list(frame["idempotency_key"]) == [r[0] for r in want]
    for col, i in [("bid", 6), ("ask", 7)]:
        got = list(frame[col])
        assert all(isinstance(p, Decimal) for p in got)
        assert got == [Decimal(r[i]).scaleb(-r[5]) for r in want], col
    # The decimal a broker sent, digit for digit (EURUSD: 5 places).
    first = want[0]
    assert str(frame["bid"].iloc[0]) == f"{first[6] // 10**5}.{first[6] % 10**5:05d}"

    bars = sql_bars(db, "1m", "bid", START_NS, END_NS)
    frame = tf.bars(target, "EURUSD", "1m", START, END, side="bid", token=TOKEN, as_frame=True)
    assert len(frame) == len(bars) and frame.index.name == "open_time"
    assert str(frame.index.dtype) == "datetime64[ns, UTC]"
    assert list(frame.index.asi8) == [r[3] for r in bars]
    assert list(pd.DatetimeIndex(frame["close_time"]).asi8) == [r[4] for r in bars]
    for col, i in [("open", 6), ("high", 7), ("low", 8), ("close", 9)]:
        assert list(frame[col]) == [Decimal(r[i]).scaleb(-r[5]) for r in bars], col
    assert list(frame["tick_count"]) == [r[10] for r in bars]
    empty = tf.bars(target, "EURUSD", "1m", END, END_NS + 1, token=TOKEN, as_frame=True)
    assert len(empty) == 0 and str(empty.index.dtype) == "datetime64[ns, UTC]"
