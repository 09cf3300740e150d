#!/usr/bin/env python3
"""The baseline `replayer export parquet` is measured against (BENCHMARKS.md): the same ticks
read from PostgreSQL with psycopg's `COPY (SELECT ...) TO STDOUT (FORMAT binary)` and written
with pyarrow to the same layout (ticks/symbol=S/date=D/part-0.parquet), zstd-compressed,
nanosecond UTC timestamps and DECIMAL(18, scale) prices, one symbol-day at a time.

    python scripts/bench_export_baseline.py --dsn postgres://... --symbols EURUSD \
        --from 2019-02-04T00:00:00Z --to 2019-02-06T00:00:00Z --out /tmp/baseline

Prints the rows written, the elapsed time and rows/s."""

import argparse
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import psycopg
import pyarrow as pa
import pyarrow.parquet as pq

DAY_NS = 86_400 * 10**9
COLUMNS = ["ts_event_ns", "bid", "ask", "last", "bid_size", "ask_size", "volume", "flags",
           "ts_recv_ns", "source", "replay", "idempotency_key", "price_scale"]
TYPES = ["int8", "int8", "int8", "int8", "float8", "float8", "float8", "int8", "int8", "text",
         "bool", "text", "int2"]


def ns(s: str) -> int:
    t = datetime.fromisoformat(s.replace("Z", "+00:00")).astimezone(timezone.utc)
    return int(t.timestamp()) * 10**9


def decimal_column(mantissas, scale):
    """int64 mantissas (None for null) -> DECIMAL(18, scale) holding exactly those unscaled
    values: the 128-bit little-endian words built with numpy, no per-value Decimal object."""
    a = pa.array(mantissas, pa.int64())
    v = a.fill_null(0).to_numpy()
    words = np.empty((len(v), 2), dtype=np.int64)
    words[:, 0] = v
    words[:, 1] = v >> 63
    return pa.Array.from_buffers(pa.decimal128(18, scale), len(a),
                                 [a.buffers()[0], pa.py_buffer(words.tobytes())],
                                 null_count=a.null_count)


def export_day(conn, symbol, start, end, path):
    cols = [[] for _ in COLUMNS]
    with conn.cursor() as cur:
        with cur.copy(
            f"COPY (SELECT {', '.join(COLUMNS)} FROM ticks WHERE symbol = %s"
            " AND ts_event_ns >= %s AND ts_event_ns < %s ORDER BY ts_event_ns, idempotency_key)"
            " TO STDOUT (FORMAT binary)", (symbol, start, end)) as copy:
            copy.set_types(TYPES)
            for row in copy.rows():
                for c, v in zip(cols, row):
                    c.append(v)
    n = len(cols[0])
    if n == 0:
        return 0
    scales = set(cols[12])
    assert len(scales) == 1, f"{symbol}: several price scales in a day"
    scale = scales.pop()
    ts = pa.timestamp("ns", tz="UTC")
    table = pa.table({
        "ts_event": pa.array(cols[0], pa.int64()).cast(ts),
        "bid": decimal_column(cols[1], scale),
        "ask": decimal_column(cols[2], scale),
        "last": decimal_column(cols[3], scale),
        "bid_size": pa.array(cols[4], pa.float64()),
        "ask_size": pa.array(cols[5], pa.float64()),
        "volume": pa.array(cols[6], pa.float64()),
        "flags": pa.array(cols[7], pa.uint32()),
        "ts_recv": pa.array(cols[8], pa.int64()).cast(ts),
        "source": pa.array(cols[9], pa.string()),
        "replay": pa.array(cols[10], pa.bool_()),
        "idempotency_key": pa.array(cols[11], pa.string()),
    })
    path.parent.mkdir(parents=True, exist_ok=True)
    # The export's encodings: delta for the rising times and the prefix-sharing keys.
    delta = {"ts_event": "DELTA_BINARY_PACKED", "ts_recv": "DELTA_BINARY_PACKED",
             "idempotency_key": "DELTA_BYTE_ARRAY"}
    pq.write_table(table, path, compression="zstd", compression_level=3,
                   use_dictionary=[c for c in table.column_names if c not in delta],
                   column_encoding=delta)
    return n


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dsn", required=True)
    ap.add_argument("--symbols", required=True)
    ap.add_argument("--from", dest="start", required=True)
    ap.add_argument("--to", dest="end", required=True)
    ap.add_argument("--out", required=True, type=Path)
    a = ap.parse_args()
    t0 = time.perf_counter()
    rows = 0
    with psycopg.connect(a.dsn) as conn:
        for symbol in a.symbols.split(","):
            day = ns(a.start) - ns(a.start) % DAY_NS
            while day < ns(a.end):
                date = datetime.fromtimestamp(day // 10**9, timezone.utc).strftime("%Y-%m-%d")
                path = a.out / "ticks" / f"symbol={symbol}" / f"date={date}" / "part-0.parquet"
                rows += export_day(conn, symbol, max(day, ns(a.start)),
                                   min(day + DAY_NS, ns(a.end)), path)
                day += DAY_NS
    dt = time.perf_counter() - t0
    print(f"baseline: {rows} rows in {dt:.3f}s, {rows / dt:.0f} rows/s")


if __name__ == "__main__":
    main()
