"""`Subscribe` with `since_ns`, through the installed Python client's `subscribe(since=...)`,
against the real binaries while ticks flow: embedded (`tickflow run`, SQLite) and distributed
(ingest, router, indicators, persister on Kafka and PostgreSQL). Since is five minutes in the
past. What the bot receives must be the stored history followed by the live stream: per symbol,
the stored ticks' keys and `symbol_seq`s in order, each once, with no hole at the seam, as the
store holds them afterwards (read with sqlite3 and psql, not through tickflow)."""

import sqlite3
import subprocess
import time

import pytest

from conftest import free_port, wait_port
from test_distributed import Pipeline, psql, service
from test_python_client import stop

SYMBOLS = ["EURUSD", "GBPUSD", "USDJPY"]
MINUTES_5_NS = 5 * 60 * 1_000_000_000
LIVE_PER_SYMBOL = 150


def receive(tf, target, since_ns):
    """Subscribes from `since_ns` and returns the events until every symbol has had
    LIVE_PER_SYMBOL live updates."""
    events, live = [], {s: 0 for s in SYMBOLS}
    stream = tf.subscribe(target, symbols=SYMBOLS, kinds=["update"], timeframes=["tick"],
                          since=since_ns, max_attempts=1)
    deadline = time.time() + 120
    for ev in stream:
        events.append(ev)
        if ev.WhichOneof("kind") == "update" and not ev.history:
            live[ev.update.symbol] += 1
        if min(live.values()) >= LIVE_PER_SYMBOL:
            break
        assert time.time() < deadline, live
    stream.close()
    return events


def check(events, stored, since_ns):
    """`stored(symbol, last_seq)` returns the stored (key, symbol_seq) of the symbol from
    `since_ns` up to `last_seq`, by sequence. Returns the number of history events."""
    kinds = [ev.WhichOneof("kind") for ev in events]
    assert kinds[0] == "gap", kinds[:3]
    assert events[0].gap.reason == "history_before_store", events[0].gap
    assert events[0].gap.history_from_ns >= since_ns
    assert kinds[1:].count("gap") == 0, [e.gap for e in events if e.WhichOneof("kind") == "gap"]
    n_history = 0
    for symbol in SYMBOLS:
        got = [ev for ev in events[1:] if ev.update.symbol == symbol]
        flags = [ev.history for ev in got]
        h = flags.index(False)
        assert h > 0 and not any(flags[h:]), f"{symbol}: history first ({h}), then live"
        n_history += h
        pairs = [(ev.update.idempotency_key, ev.update.symbol_seq) for ev in got]
        seqs = [s for _, s in pairs]
        assert seqs == list(range(seqs[0], seqs[-1] + 1)), f"{symbol}: no hole, no repeat"
        assert pairs == stored(symbol, seqs[-1]), f"{symbol}: exactly the stored ticks, once"
        assert all(ev.update.ts_event_ns >= since_ns for ev in got)
        assert all(ev.seq == 0 and not ev.resume_token for ev in got[:h])
        assert all(ev.seq > 0 and ev.resume_token for ev in got[h:])
    return n_history


def test_embedded_since_five_minutes_ago_is_history_then_live(bins, tf, tmp_path):
    db = tmp_path / "t.db"
    args = ["--symbols", ",".join(SYMBOLS), "--store", f"sqlite:{db}", "--status-interval", "1h"]
    # A first run stores a few seconds of ticks; the second one continues each symbol's
    # sequence after them (read from the store), and serves the subscriber while ticks flow.
    first = subprocess.run(
        [bins("tickflow"), "run", "--rate", "600", "--duration", "3s",
         "--grpc-addr", f"127.0.0.1:{free_port()}", *args],
        capture_output=True, text=True, timeout=120)
    assert first.returncode == 0, first.stderr[-2000:]
    port = free_port()
    proc = subprocess.Popen(
        [bins("tickflow"), "run", "--rate", "600", "--duration", "120s",
         "--grpc-addr", f"127.0.0.1:{port}", *args],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        wait_port(port, proc=proc)
        time.sleep(2)
        since = time.time_ns() - MINUTES_5_NS
        events = receive(tf, f"127.0.0.1:{port}", since)
    finally:
        stop(proc)

    def stored(symbol, last):
        with sqlite3.connect(db) as c:
            return c.execute(
                "SELECT idempotency_key, symbol_seq FROM ticks WHERE symbol = ? AND "
                "ts_event_ns >= ? AND ts_route_ns > 0 AND symbol_seq <= ? ORDER BY symbol_seq",
                (symbol, since, last)).fetchall()

    n_history = check(events, stored, since)
    # Both runs are in the history: the second continued each symbol's sequence after the
    # first (one sequence from 0 over both, no number used twice).
    with sqlite3.connect(db) as c:
        for symbol in SYMBOLS:
            seqs = [r[0] for r in c.execute(
                "SELECT symbol_seq FROM ticks WHERE symbol = ? AND ts_route_ns > 0 "
                "ORDER BY symbol_seq", (symbol,))]
            assert seqs == list(range(len(seqs))), symbol
    assert n_history > 3 * 600 * 0.8, n_history


def test_distributed_since_five_minutes_ago_is_history_then_live(bins, tf, pb, tmp_path):
    database = service("DATABASE_URL")
    name = f"tickflow_since_{time.time_ns()}"
    psql(database, f"CREATE DATABASE {name}")
    database = database.rsplit("/", 1)[0] + "/" + name
    pipe = Pipeline(bins, database, tmp_path)
    try:
        pipe.start("router")
        pipe.start("persister")
        pipe.start("indicators", "--grpc-addr", f"127.0.0.1:{pipe.ports['grpc']}")
        for n in ["router", "persister", "indicators"]:
            pipe.wait_ready(n)
        pipe.start("ingest", "--symbols", ",".join(SYMBOLS), "--rate", "600",
                   "--max-ticks", "60000", "--spool-dir", str(tmp_path / "spool"))
        time.sleep(4)
        since = time.time_ns() - MINUTES_5_NS
        events = receive(tf, f"127.0.0.1:{pipe.ports['grpc']}", since)
        pipe.procs["ingest"].terminate()
        pipe.procs["ingest"].wait(timeout=30)

        def stored(symbol, last):
            sql = (f"SELECT idempotency_key, symbol_seq FROM ticks WHERE symbol = '{symbol}' AND "
                   f"ts_event_ns >= {since} AND ts_route_ns > 0 AND symbol_seq <= {last} "
                   "ORDER BY symbol_seq")
            # The persister trails the live stream: wait until it stored what the bot saw.
            deadline = time.time() + 60
            while True:
                rows = [tuple(r.rsplit("|", 1)) for r in psql(database, sql).splitlines()]
                rows = [(k, int(s)) for k, s in rows]
                if (rows and rows[-1][1] == last) or time.time() > deadline:
                    return rows
                time.sleep(0.5)

        check(events, stored, since)
        pipe.stop()
    finally:
        pipe.cleanup()
        psql(service("DATABASE_URL"), f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
