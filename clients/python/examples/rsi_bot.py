"""A minimal bot: prints one line per RSI signal from a tickflow SignalService.

    pip install ./clients/python
    cargo run --release &              # or the `indicators` binary
    python clients/python/examples/rsi_bot.py --symbols EURUSD,GBPUSD

It reconnects and resumes by itself; stop it with Ctrl-C.
"""

import argparse
import os
import sys
import time

import tickflow_client as tf


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--target", default=os.environ.get("TICKFLOW_TARGET", "127.0.0.1:50051"))
    p.add_argument("--symbols", default="", help="comma-separated; empty: every symbol")
    p.add_argument("--token", default=os.environ.get("TICKFLOW_GRPC_TOKEN"))
    p.add_argument("--ca-cert", help="PEM to trust for TLS (e.g. a self-signed server's)")
    p.add_argument("--count", type=int, default=0, help="exit after this many signals")
    args = p.parse_args()

    symbols = [s for s in args.symbols.split(",") if s]
    seen = 0
    events = tf.subscribe(
        args.target, symbols=symbols, kinds=["signal"], token=args.token,
        root_certificates=args.ca_cert,
        on_reconnect=lambda err, delay: print(
            f"reconnecting in {delay:.1f}s ({err.code().name if err else 'stream ended'})",
            file=sys.stderr),
    )
    try:
        for ev in events:
            if ev.WhichOneof("kind") == "gap":
                print(f"gap: {ev.gap.dropped} events lost ({ev.gap.reason})", file=sys.stderr)
                continue
            s = ev.signal
            if not s.rule_id.startswith("rsi"):
                continue
            values = " ".join(f"{v.name}={v.value:.2f}" for v in s.values)
            cross = "up  " if s.direction > 0 else "down"
            latency_us = (time.time_ns() - s.ts_recv_ns) / 1e3
            print(f"RSI {cross} {s.symbol} [{s.rule_id}] {values} latency={latency_us:.0f}us", flush=True)
            seen += 1
            if args.count and seen >= args.count:
                break
    except KeyboardInterrupt:
        pass
    finally:
        events.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
