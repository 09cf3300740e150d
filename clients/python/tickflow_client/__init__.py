"""Python client of tickflow's gRPC `SignalService`.

    import tickflow_client as tf

    for ev in tf.subscribe("127.0.0.1:50051", symbols=["EURUSD"], kinds=["signal"]):
        print(ev.signal.rule_id, ev.signal.direction)

`subscribe` reconnects by itself (exponential backoff with jitter) and resumes after the last
event it yielded, so across a server-side disconnect (slow-subscriber policy `disconnect`, a
network cut, a pod restart within the same process) the caller sees no gap and no duplicate as
long as the server still retains the missed events (`--resume-window`). What the server could
not replay arrives as a `Gap` event (`ev.WhichOneof("kind") == "gap"`) with a reason and count.

`history` and `bars` read the ticks and bars the server has stored (its `--store`), as lists
of protobuf messages or, with `as_frame=True`, pandas DataFrames (ns UTC `DatetimeIndex`,
prices as exact `decimal.Decimal`).

The generated protobuf and grpcio modules are `tickflow_client.pb.{tick_pb2, events_pb2,
signal_service_pb2, signal_service_pb2_grpc}` (regenerate with `generate.sh`).
"""

from __future__ import annotations

import datetime as _dt
import os
import random
import time
import types
from decimal import Decimal
from typing import Iterable, Iterator, List, Optional, Sequence, Union

import grpc

from tickflow_client._proto.tickflow.v1 import events_pb2, signal_service_pb2, tick_pb2
from tickflow_client._proto.tickflow.v1 import signal_service_pb2_grpc

__all__ = ["subscribe", "snapshot", "history", "bars", "channel", "pb", "Event", "Snapshot",
           "RETRYABLE", "to_ns", "price"]

#: The generated modules.
pb = types.SimpleNamespace(
    tick_pb2=tick_pb2,
    events_pb2=events_pb2,
    signal_service_pb2=signal_service_pb2,
    signal_service_pb2_grpc=signal_service_pb2_grpc,
)
Event = signal_service_pb2.Event
Snapshot = signal_service_pb2.Snapshot

_KINDS = {
    "update": signal_service_pb2.EVENT_KIND_UPDATE,
    "updates": signal_service_pb2.EVENT_KIND_UPDATE,
    "bar": signal_service_pb2.EVENT_KIND_BAR,
    "bars": signal_service_pb2.EVENT_KIND_BAR,
    "signal": signal_service_pb2.EVENT_KIND_SIGNAL,
    "signals": signal_service_pb2.EVENT_KIND_SIGNAL,
}

#: Status codes after which `subscribe` reconnects; any other one is raised to the caller
#: (UNAUTHENTICATED, INVALID_ARGUMENT, UNIMPLEMENTED, ... would fail again).
RETRYABLE = frozenset({
    grpc.StatusCode.UNAVAILABLE,
    grpc.StatusCode.RESOURCE_EXHAUSTED,  # the server's slow-subscriber policy cut us off
    grpc.StatusCode.DEADLINE_EXCEEDED,
    grpc.StatusCode.ABORTED,
    grpc.StatusCode.INTERNAL,  # e.g. a connection reset mid-stream
    grpc.StatusCode.UNKNOWN,
    grpc.StatusCode.CANCELLED,
})

Certs = Union[bytes, str, os.PathLike, None]


def _read_certs(root_certificates: Certs) -> Optional[bytes]:
    if root_certificates is None or isinstance(root_certificates, bytes):
        return root_certificates
    with open(root_certificates, "rb") as f:
        return f.read()


def channel(target: str, root_certificates: Certs = None, tls: Optional[bool] = None,
            options: Sequence = ()) -> grpc.Channel:
    """Returns a channel to `target` ("host:port"): TLS when `root_certificates` (PEM bytes or a
    file path, e.g. a self-signed server's certificate) is given or `tls` is true (the system's
    CAs), plaintext otherwise."""
    certs = _read_certs(root_certificates)
    if tls is None:
        tls = certs is not None
    if tls:
        return grpc.secure_channel(target, grpc.ssl_channel_credentials(root_certificates=certs),
                                   options=list(options))
    return grpc.insecure_channel(target, options=list(options))


def _metadata(token: Optional[str]):
    return (("authorization", f"Bearer {token}"),) if token else None


def _kinds(kinds: Iterable) -> list:
    out = []
    for k in kinds or ():
        if isinstance(k, str):
            try:
                out.append(_KINDS[k.strip().lower()])
            except KeyError:
                raise ValueError(f"unknown kind {k!r} (update, bar, signal)") from None
        else:
            out.append(int(k))
    return out


def _position(token: str):
    instance, _, seq = token.rpartition(":")
    try:
        return instance, int(seq)
    except ValueError:
        return None


def subscribe(target: str, symbols: Iterable[str] = (), kinds: Iterable = (),
              timeframes: Iterable[str] = (), token: Optional[str] = None,
              root_certificates: Certs = None, *, tls: Optional[bool] = None,
              resume_token: str = "", since: Optional[Time] = None,
              initial_backoff: float = 0.1, max_backoff: float = 10.0,
              max_attempts: Optional[int] = None, on_reconnect=None,
              channel_options: Sequence = ()) -> Iterator[signal_service_pb2.Event]:
    """Yields the events of `SignalService.Subscribe` for the filter, forever.

    `symbols`, `kinds` ("update", "bar", "signal" or `EventKind` values) and `timeframes`
    ("tick", "1m", ...) filter; empty means everything. `token` is the server's bearer token,
    `root_certificates` the PEM to trust for TLS (bytes or a path; `tls=True` uses the system's
    CAs). `resume_token` starts after that event instead of live.

    `since` (ns since the epoch, a `datetime`, a `pandas.Timestamp` or an RFC 3339 string, as
    `history`) starts with the stored history from that time: the per-tick updates of the
    stored ticks, recomputed by the server's indicators and marked `ev.history`, then the live
    stream, with no gap and no duplicate at the seam (each update's `idempotency_key` and
    `symbol_seq` show it). The filter must take per-tick updates. A reconnection during the
    history asks again from the time of the last history event and skips the updates already
    yielded at that time; after it, it resumes after the last live event.

    When the stream breaks or ends, it reconnects after `initial_backoff` seconds, doubling up to
    `max_backoff` (with jitter; reset by every event received), resuming after the last event
    yielded. `on_reconnect(error, delay)` is called before each wait (`error` is the
    `grpc.RpcError`, or None when the server ended the stream). After `max_attempts`
    consecutive failed attempts (None: never give up) the last error is raised; a status not in
    `RETRYABLE` is raised at once. Stop by leaving the loop (or closing the generator).
    """
    request = signal_service_pb2.SubscribeRequest(
        symbols=[s.strip().upper() for s in symbols or ()],
        kinds=_kinds(kinds),
        timeframes=list(timeframes or ()),
    )
    last = resume_token or ""
    if since is not None and last:
        raise ValueError("give since or resume_token, not both")
    since_ns = to_ns(since) if since is not None else 0
    # Keys of the history updates yielded at `since_ns`, skipped when a reconnection asks again.
    yielded_at_since = set()
    backoff = initial_backoff
    failures = 0
    while True:
        error = None
        ch = channel(target, root_certificates, tls, channel_options)
        try:
            stub = signal_service_pb2_grpc.SignalServiceStub(ch)
            request.resume_token = last
            request.since_ns = 0 if last else since_ns
            call = stub.Subscribe(request, metadata=_metadata(token))
            try:
                for ev in call:
                    failures, backoff = 0, initial_backoff
                    if ev.history:
                        u = ev.update
                        if u.ts_event_ns == since_ns:
                            if u.idempotency_key in yielded_at_since:
                                continue
                        else:
                            since_ns, yielded_at_since = u.ts_event_ns, set()
                        yielded_at_since.add(u.idempotency_key)
                    elif ev.resume_token:
                        # The server never repeats an event on a resumed stream; this guard
                        # only protects the caller from a misbehaving one.
                        pos, prev = _position(ev.resume_token), _position(last)
                        if (ev.WhichOneof("kind") != "gap" and pos and prev
                                and pos[0] == prev[0] and pos[1] <= prev[1]):
                            continue
                        last = ev.resume_token
                    yield ev
            finally:
                call.cancel()
        except grpc.RpcError as e:
            if e.code() not in RETRYABLE:
                raise
            error = e
        finally:
            ch.close()
        failures += 1
        if max_attempts is not None and failures >= max_attempts:
            if error is not None:
                raise error
            return
        delay = backoff * random.uniform(0.5, 1.0)
        if on_reconnect is not None:
            on_reconnect(error, delay)
        time.sleep(delay)
        backoff = min(backoff * 2, max_backoff)


def snapshot(target: str, symbol: str, token: Optional[str] = None,
             root_certificates: Certs = None, *, tls: Optional[bool] = None,
             timeout: float = 10.0) -> signal_service_pb2.Snapshot:
    """Returns the current state of `symbol`: its last tick, latest indicator values and the
    most recent bar of each timeframe (raises `grpc.RpcError` NOT_FOUND for an unseen symbol)."""
    with channel(target, root_certificates, tls) as ch:
        stub = signal_service_pb2_grpc.SignalServiceStub(ch)
        return stub.GetSnapshot(signal_service_pb2.SnapshotRequest(symbol=symbol.strip().upper()),
                                metadata=_metadata(token), timeout=timeout)


# ---------------------------------------------------------------------------------------------
# Stored history: GetHistory and GetBars.

Time = Union[int, str, _dt.datetime]
_EPOCH = _dt.datetime(1970, 1, 1, tzinfo=_dt.timezone.utc)


def to_ns(t: Time) -> int:
    """Returns `t` as UTC nanoseconds since the Unix epoch, exactly: an int is taken as ns
    already; a `datetime` (or pandas `Timestamp`, whose nanoseconds are kept) without a time
    zone is UTC; a string is ISO 8601 (`"2019-02-04T00:00:00Z"`)."""
    if isinstance(t, bool):
        raise TypeError("a time is an int (ns), a datetime or an ISO 8601 string")
    if isinstance(t, int):
        return t
    if isinstance(t, str):
        s = t.strip()
        if s.endswith(("Z", "z")):
            s = s[:-1] + "+00:00"
        t = _dt.datetime.fromisoformat(s)
    if isinstance(t, _dt.datetime):
        if t.tzinfo is None:
            t = t.replace(tzinfo=_dt.timezone.utc)
        value = getattr(t, "value", None)  # pandas.Timestamp: ns since the epoch, UTC
        if isinstance(value, int) and type(t).__name__ == "Timestamp":
            return value
        d = t - _EPOCH
        return (d.days * 86_400 + d.seconds) * 1_000_000_000 + d.microseconds * 1_000
    raise TypeError(f"cannot read {t!r} as a time: give ns, a datetime or an ISO 8601 string")


def price(mantissa: int, scale: int) -> Decimal:
    """Returns the exact decimal of a fixed-point price (`mantissa / 10**scale`)."""
    return Decimal(f"{mantissa}E-{scale}")


def _pandas():
    try:
        import pandas
    except ImportError:
        raise ImportError("as_frame=True needs pandas: pip install pandas") from None
    return pandas


def _stream(target, token, root_certificates, tls, timeout, call):
    with channel(target, root_certificates, tls) as ch:
        stub = signal_service_pb2_grpc.SignalServiceStub(ch)
        for chunk in call(stub, dict(metadata=_metadata(token), timeout=timeout)):
            yield chunk


def history(target: str, symbols: Union[str, Iterable[str]], start: Time, end: Time,
            token: Optional[str] = None, root_certificates: Certs = None, *,
            tls: Optional[bool] = None, as_frame: bool = False, timeout: Optional[float] = None,
            max_ticks_per_chunk: int = 0):
    """Returns the stored ticks of `symbols` (one or several canonical symbols) with event time
    in `[start, end)`, in event-time order (ties by idempotency key), read with
    `SignalService.GetHistory` from the server's store.

    `start` and `end` are UTC ns, `datetime`s (naive means UTC) or ISO 8601 strings. Returns a
    list of `pb.tick_pb2.Tick`, or with `as_frame=True` a pandas DataFrame indexed by the event
    time (`ts_event`, a nanosecond UTC `DatetimeIndex`) with columns symbol, source, bid, ask,
    last (exact `decimal.Decimal`, last None when the source sends none), price_scale,
    bid_size, ask_size, volume, flags, ts_recv (ns UTC), replay, idempotency_key. Errors are
    `grpc.RpcError`s: INVALID_ARGUMENT for an empty range or a bad symbol, FAILED_PRECONDITION
    when the server has no store, UNAUTHENTICATED without the server's token.
    """
    if isinstance(symbols, str):
        symbols = [symbols]
    request = signal_service_pb2.HistoryRequest(
        symbols=[s.strip().upper() for s in symbols], from_ns=to_ns(start), to_ns=to_ns(end),
        max_ticks_per_chunk=max_ticks_per_chunk)
    ticks: List = []
    for chunk in _stream(target, token, root_certificates, tls, timeout,
                         lambda stub, kw: stub.GetHistory(request, **kw)):
        ticks.extend(chunk.ticks)
    return _ticks_frame(ticks) if as_frame else ticks


def bars(target: str, symbol: str, timeframe: str, start: Time, end: Time, side: str = "",
         token: Optional[str] = None, root_certificates: Certs = None, *,
         tls: Optional[bool] = None, as_frame: bool = False, timeout: Optional[float] = None):
    """Returns the stored bars of `symbol` and `timeframe` ("1m", "1s", "100t", ... as the
    server's `--timeframes` named them) whose open time is in `[start, end)`, oldest first (ties
    by price side), read with `SignalService.GetBars`: exactly the rows of the store's `bars`
    table. `side` is "bid", "ask" or "mid"; empty means every side stored.

    Returns a list of `pb.events_pb2.Bar`, or with `as_frame=True` a pandas DataFrame indexed by
    the open time (`open_time`, a nanosecond UTC `DatetimeIndex`) with columns symbol,
    timeframe, price_side, close_time (ns UTC), open, high, low, close (exact
    `decimal.Decimal`), price_scale, tick_count, volume, ts_recv (ns UTC), flags. Errors as
    `history`, and INVALID_ARGUMENT for an unknown timeframe or side.
    """
    request = signal_service_pb2.BarsRequest(
        symbol=symbol.strip().upper(), timeframe=timeframe.strip(),
        price_side=(side or "").strip().lower(), from_ns=to_ns(start), to_ns=to_ns(end))
    out: List = []
    for chunk in _stream(target, token, root_certificates, tls, timeout,
                         lambda stub, kw: stub.GetBars(request, **kw)):
        out.extend(chunk.bars)
    return _bars_frame(out) if as_frame else out


def _times(pd, ns, name):
    index = pd.to_datetime(list(ns), unit="ns", utc=True)
    if hasattr(index, "as_unit"):  # pandas 2 picks a coarser unit for an empty list
        index = index.as_unit("ns")
    return pd.DatetimeIndex(index, name=name)


def _ticks_frame(ticks):
    pd = _pandas()
    frame = pd.DataFrame({
        "symbol": [t.symbol for t in ticks],
        "source": [t.source for t in ticks],
        "bid": [price(t.bid, t.price_scale) for t in ticks],
        "ask": [price(t.ask, t.price_scale) for t in ticks],
        "last": [price(t.last, t.price_scale) if t.HasField("last") else None for t in ticks],
        "price_scale": pd.array([t.price_scale for t in ticks], dtype="int64"),
        "bid_size": pd.array([t.bid_size for t in ticks], dtype="float64"),
        "ask_size": pd.array([t.ask_size for t in ticks], dtype="float64"),
        "volume": pd.array([t.volume for t in ticks], dtype="float64"),
        "flags": pd.array([t.flags for t in ticks], dtype="int64"),
        "ts_recv": _times(pd, (t.ts_recv_ns for t in ticks), None),
        "replay": pd.array([t.replay for t in ticks], dtype="bool"),
        "idempotency_key": [t.idempotency_key for t in ticks],
    }, index=_times(pd, (t.ts_event_ns for t in ticks), "ts_event"))
    return frame


def _bars_frame(bars_):
    pd = _pandas()
    frame = pd.DataFrame({
        "symbol": [b.symbol for b in bars_],
        "timeframe": [b.timeframe for b in bars_],
        "price_side": [b.price_side for b in bars_],
        "close_time": _times(pd, (b.close_time_ns for b in bars_), None),
        "open": [price(b.open, b.price_scale) for b in bars_],
        "high": [price(b.high, b.price_scale) for b in bars_],
        "low": [price(b.low, b.price_scale) for b in bars_],
        "close": [price(b.close, b.price_scale) for b in bars_],
        "price_scale": pd.array([b.price_scale for b in bars_], dtype="int64"),
        "tick_count": pd.array([b.tick_count for b in bars_], dtype="int64"),
        "volume": pd.array([b.volume for b in bars_], dtype="float64"),
        "ts_recv": _times(pd, (b.ts_recv_ns for b in bars_), None),
        "flags": pd.array([b.flags for b in bars_], dtype="int64"),
    }, index=_times(pd, (b.open_time_ns for b in bars_), "open_time"))
    return frame
