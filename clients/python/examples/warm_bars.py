"""A bot that warms up from stored history, then goes on live: reads the last two hours of 1m
bars of a symbol from the server's store (`bars`), prints a moving average of their closes, and
updates it with each 1m bar closed live (`subscribe`).

    pip install ./clients/python
    cargo run --release &              # tickflow run: stores bars in tickflow.db and serves them
    python clients/python/examples/warm_bars.py --symbol EURUSD

The live stream is opened before the history is read and its bars are held until the history
is in, so the seam has no duplicate (live bars already in the history are skipped by open time)
and no gap, except a bar that closed in the instant before the subscription and was not stored
yet when the history was read (storage commits every 50 ms or so).
"""

import argparse
import os
import queue
import sys
import threading
import time
from collections import deque
from decimal import Decimal

import tickflow_client as tf


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--target", default=os.environ.get("TICKFLOW_TARGET", "127.0.0.1:50051"))
    p.add_argument("--symbol", default="EURUSD")
    p.add_argument("--timeframe", default="1m")
    p.add_argument("--side", default="bid")
    p.add_argument("--hours", type=float, default=2.0, help="history to warm from")
    p.add_argument("--period", type=int, default=20, help="bars in the moving average")
    p.add_argument("--token", default=os.environ.get("TICKFLOW_GRPC_TOKEN"))
    p.add_argument("--count", type=int, default=0, help="exit after this many live bars")
    args = p.parse_args()

    # 1. Live bars first, into a queue, so that none closes unseen while history is read.
    live: "queue.Queue" = queue.Queue()
    events = tf.subscribe(args.target, symbols=[args.symbol], kinds=["bar"],
                          timeframes=[args.timeframe], token=args.token)

    def pump():
        for ev in events:
            live.put(ev)

    threading.Thread(target=pump, daemon=True).start()

    # 2. History: the last `--hours` of stored bars.
    end = time.time_ns()
    start = end - int(args.hours * 3600e9)
    history = tf.bars(args.target, args.symbol, args.timeframe, start, end, side=args.side,
                      token=args.token)
    closes = deque((tf.price(b.close, b.price_scale) for b in history), maxlen=args.period)
    last_open = history[-1].open_time_ns if history else None
    print(f"warmed from {len(history)} stored {args.timeframe} bars of {args.symbol}"
          + (f"; sma({args.period}) = {sum(closes) / len(closes):.6f}" if closes else ""),
          flush=True)

    # 3. Live, skipping what the history already had.
    seen = 0
    while True:
        ev = live.get()
        if ev.WhichOneof("kind") == "gap":
            print(f"gap: {ev.gap.dropped} events lost ({ev.gap.reason})", file=sys.stderr)
            continue
        b = ev.bar
        if b.price_side != args.side or (last_open is not None and b.open_time_ns <= last_open):
            continue
        last_open = b.open_time_ns
        close: Decimal = tf.price(b.close, b.price_scale)
        closes.append(close)
        print(f"{args.symbol} {args.timeframe} close {close} sma({args.period}) = "
              f"{sum(closes) / len(closes):.6f} ({len(closes)} bars)", flush=True)
        seen += 1
        if args.count and seen >= args.count:
            return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        sys.exit(130)
