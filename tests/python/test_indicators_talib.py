"""Every tickflow indicator against TA-Lib (the Python `ta-lib` package) or, where TA-Lib has
no equivalent (z-score, VWAP, spread statistics), a direct numpy computation.

Two series: the 1m bid bars of the 48 EURUSD hours of the Dukascopy fixture (2019-02-04/05),
built by the crate's own `BarBuilder` (`indicator-dump bars`), and a seeded random-walk OHLCV
series (numpy RandomState(42), 5000 bars). The Rust side is `indicator-dump`, which feeds every
indicator one bar at a time (the incremental path the engine uses) and prints its outputs.

Acceptance: |rust - reference| <= 1e-9 * max(1, |reference|) for every output wherever the
reference has a value, and Rust null exactly where the reference is NaN (TA-Lib's warm-up): each
output's first value at the index TA-Lib's own lookback gives, for the outputs of one indicator
too (`adx(14)`'s +DI and -DI from index 14, PLUS_DI/MINUS_DI's lookback, its ADX from 27).
"""

import json
import subprocess
from pathlib import Path

import numpy as np
import pytest

talib = pytest.importorskip("talib")
talib_abstract = pytest.importorskip("talib.abstract")

ROOT = Path(__file__).resolve().parents[2]
FIXTURES = ROOT.parent / "shared" / "fixtures" / "dukascopy"
DAY_NS = 86_400 * 10**9
TOL = 1e-9

SPECS = [
    "sma(20)",
    "ema(12)",
    "ema(26)",
    "wma(10)",
    "rsi(14)",
    "macd(12,26,9)",
    "bbands(20,2)",
    "atr(14)",
    "stoch(14,3,3)",
    "adx(14)",
    "cci(20)",
    "stddev(20)",
    "zscore(50)",
    "vwap",
    "vwap(30)",
    "spread(20)",
]


def eurusd_bars(bins) -> str:
    if not (FIXTURES / "EURUSD").is_dir():
        pytest.skip(f"no Dukascopy fixture at {FIXTURES}")
    out = subprocess.run(
        [
            str(bins("indicator-dump")),
            "bars",
            "--dir",
            str(FIXTURES),
            "--symbol",
            "EURUSD",
            "--from",
            "2019-02-04T00:00:00Z",
            "--to",
            "2019-02-06T00:00:00Z",
            "--timeframe",
            "1m",
            "--side",
            "bid",
        ],
        check=True,
        capture_output=True,
        text=True,
    )
    return out.stdout


def random_bars() -> str:
    rs = np.random.RandomState(42)
    n = 5000
    close = 100.0 + np.cumsum(rs.normal(0.0, 0.5, n))
    open_ = np.concatenate([[100.0], close[:-1]])
    high = np.maximum(open_, close) + np.abs(rs.normal(0.0, 0.3, n))
    low = np.minimum(open_, close) - np.abs(rs.normal(0.0, 0.3, n))
    volume = rs.randint(1, 1000, n).astype(float)
    spread = rs.uniform(0.01, 0.05, n)
    # 2024-01-01T20:00Z, one bar a minute: the series crosses three UTC midnights.
    t0 = 1_704_139_200 * 10**9
    lines = ["time,open,high,low,close,volume,spread"]
    for i in range(n):
        vals = (open_[i], high[i], low[i], close[i], volume[i], spread[i])
        lines.append(f"{t0 + i * 60 * 10**9}," + ",".join(repr(float(x)) for x in vals))
    return "\n".join(lines) + "\n"


def parse_csv(text: str) -> dict:
    rows = [line.split(",") for line in text.strip().splitlines()[1:]]
    cols = list(zip(*rows))
    return {
        "time": np.array([int(t) for t in cols[0]], dtype=np.int64),
        "open": np.array([float(x) for x in cols[1]]),
        "high": np.array([float(x) for x in cols[2]]),
        "low": np.array([float(x) for x in cols[3]]),
        "close": np.array([float(x) for x in cols[4]]),
        "volume": np.array([float(x) for x in cols[5]]),
        "spread": np.array([float(x) for x in cols[6]]),
    }


def run_rust(bins, csv: str) -> dict:
    out = subprocess.run(
        [str(bins("indicator-dump")), "--indicators", ";".join(SPECS)],
        input=csv,
        check=True,
        capture_output=True,
        text=True,
    )
    rows = [json.loads(line) for line in out.stdout.splitlines()]
    names = [k for k in rows[0] if k != "time"]
    return {
        k: np.array([np.nan if r[k] is None else r[k] for r in rows], dtype=float)
        for k in names
    }


def rolling(x: np.ndarray, n: int) -> np.ndarray:
    """Windows of n consecutive values; row i ends at index i + n - 1."""
    return np.lib.stride_tricks.sliding_window_view(x, n)


def pad(values: np.ndarray, n: int, total: int) -> np.ndarray:
    return np.concatenate([np.full(total - len(values), np.nan), values])


def references(b: dict) -> dict:
    """Reference value per Rust output name (NaN where the reference has none)."""
    o, h, l, c, v = b["open"], b["high"], b["low"], b["close"], b["volume"]
    n = len(c)
    ref = {
        "sma(20)": talib.SMA(c, 20),
        "ema(12)": talib.EMA(c, 12),
        "ema(26)": talib.EMA(c, 26),
        "wma(10)": talib.WMA(c, 10),
        "rsi(14)": talib.RSI(c, 14),
        "atr(14)": talib.ATR(h, l, c, 14),
        "adx(14).adx": talib.ADX(h, l, c, 14),
        "adx(14).plus_di": talib.PLUS_DI(h, l, c, 14),
        "adx(14).minus_di": talib.MINUS_DI(h, l, c, 14),
        "cci(20)": talib.CCI(h, l, c, 20),
        "stddev(20)": talib.STDDEV(c, 20, 1),
    }
    m, s, hist = talib.MACD(c, 12, 26, 9)
    ref |= {"macd(12,26,9).macd": m, "macd(12,26,9).signal": s, "macd(12,26,9).hist": hist}
    up, mid, lo = talib.BBANDS(c, 20, 2, 2, 0)
    ref |= {"bbands(20,2).upper": up, "bbands(20,2).middle": mid, "bbands(20,2).lower": lo}
    k, d = talib.STOCH(h, l, c, 14, 3, 0, 3, 0)
    ref |= {"stoch(14,3,3).k": k, "stoch(14,3,3).d": d}

    # z-score: (close - mean) / population std over the 50 inputs ending at i; 0 when the
    # variance is below 1e-14 (TA-Lib's zero threshold, as the Rust STDDEV).
    w = rolling(c, 50)
    mean, sd = w.mean(axis=1), w.std(axis=1)
    z = np.where(sd**2 < 1e-14, 0.0, (c[49:] - mean) / np.where(sd == 0, 1, sd))
    ref["zscore(50)"] = pad(z, 50, n)

    # VWAP of the typical price, weights = volume: per UTC day, and over the last 30 bars.
    tp = (h + l + c) / 3
    day = b["time"] // DAY_NS
    vwap = np.empty(n)
    for d_ in np.unique(day):
        sel = day == d_
        vwap[sel] = np.cumsum(tp[sel] * v[sel]) / np.cumsum(v[sel])
    ref["vwap"] = vwap
    ref["vwap(30)"] = pad(
        rolling(tp * v, 30).sum(axis=1) / rolling(v, 30).sum(axis=1), 30, n
    )

    ws = rolling(b["spread"], 20)
    ref["spread(20).mean"] = pad(ws.mean(axis=1), 20, n)
    ref["spread(20).max"] = pad(ws.max(axis=1), 20, n)
    return ref


# Outputs whose warm-up index is checked against TA-Lib's declared lookback (the TA-Lib
# function and its parameters): the ADX's three outputs start at different indexes.
LOOKBACKS = {
    "adx(14).adx": ("ADX", {"timeperiod": 14}),
    "adx(14).plus_di": ("PLUS_DI", {"timeperiod": 14}),
    "adx(14).minus_di": ("MINUS_DI", {"timeperiod": 14}),
}


def first_value(x: np.ndarray) -> int:
    """Index of the first value that is not NaN."""
    return int(np.flatnonzero(~np.isnan(x))[0])


def compare(label: str, bars_csv: str, bins) -> dict:
    b = parse_csv(bars_csv)
    rust = run_rust(bins, bars_csv)
    ref = references(b)
    assert set(rust) == set(ref), set(rust) ^ set(ref)
    n = len(b["close"])
    # Where TA-Lib's functions declare their first value (their lookback), checked against
    # what they return, then against where the Rust outputs start.
    for name, (fn, args) in LOOKBACKS.items():
        lookback = talib_abstract.Function(fn, **args).lookback
        assert first_value(ref[name]) == lookback, f"{label} {name}: TA-Lib starts elsewhere"
        assert first_value(rust[name]) == lookback, (
            f"{label} {name}: first value at {first_value(rust[name])}, TA-Lib's {fn} at "
            f"{lookback}"
        )
    worst = {}
    failures = []
    for name, want in ref.items():
        got = rust[name]
        assert len(got) == n, name
        ref_nan = np.isnan(want)
        rust_nan = np.isnan(got)
        if not np.array_equal(ref_nan, rust_nan):
            i = int(np.argmax(ref_nan != rust_nan))
            failures.append(
                f"{name}: warm-up differs at index {i} (rust {got[i]}, reference {want[i]})"
            )
            continue
        ok = ~ref_nan
        assert ok.sum() > n // 2, f"{label} {name}: reference mostly NaN"
        err = np.abs(got[ok] - want[ok]) / np.maximum(1.0, np.abs(want[ok]))
        worst[name] = float(err.max())
        if worst[name] > TOL:
            i = int(np.flatnonzero(ok)[np.argmax(err)])
            failures.append(
                f"{name}: relative error {worst[name]:.3e} at index {i} "
                f"(rust {got[i]!r}, reference {want[i]!r})"
            )
    print(f"\n{label}: max relative error per output ({n} bars)")
    for name, e in worst.items():
        print(f"  {name:24} {e:.3e}")
    assert not failures, f"{label}:\n" + "\n".join(failures)
    return worst


def test_indicators_match_talib_on_eurusd_1m_bars(bins):
    csv = eurusd_bars(bins)
    assert len(csv.strip().splitlines()) - 1 == 48 * 60
    compare("EURUSD 1m bid bars 2019-02-04/05", csv, bins)


def test_indicators_match_talib_on_a_seeded_random_walk(bins):
    compare("random walk (RandomState(42), 5000 bars)", random_bars(), bins)
