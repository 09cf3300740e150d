"""Python client of tickflow's gRPC `SignalService`.

    import tickflow_client as tf

    for ev in tf.subscribe("127.0.0.1:50051", symbols=["EURUSD"], kinds=["signal"]):
        print(ev.signal.rule_id, ev.signal.direction)

`subscribe` reconnects by itself (exponential backoff with jitter) and resumes after the last
event it yielded, so across a server-side disconnect (slow-subscriber policy `disconnect`, a
network cut, a pod restart within the same process) the caller sees no gap and no duplicate as
long as the server still retains the missed events (`--resume-window`). What the server could
not replay arrives as a `Gap` event (`ev.WhichOneof("kind") == "gap"`) with a reason and count.

The generated protobuf and grpcio modules are `tickflow_client.pb.{tick_pb2, events_pb2,
signal_service_pb2, signal_service_pb2_grpc}` (regenerate with `generate.sh`).
"""

from __future__ import annotations

import os
import random
import time
import types
from typing import Iterable, Iterator, Optional, Sequence, Union

import grpc

from tickflow_client._proto.tickflow.v1 import events_pb2, signal_service_pb2, tick_pb2
from tickflow_client._proto.tickflow.v1 import signal_service_pb2_grpc

__all__ = ["subscribe", "snapshot", "channel", "pb", "Event", "Snapshot", "RETRYABLE"]

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
              resume_token: str = "", initial_backoff: float = 0.1, max_backoff: float = 10.0,
              max_attempts: Optional[int] = None, on_reconnect=None,
              channel_options: Sequence = ()) -> Iterator[signal_service_pb2.Event]:
    """Yields the events of `SignalService.Subscribe` for the filter, forever.

    `symbols`, `kinds` ("update", "bar", "signal" or `EventKind` values) and `timeframes`
    ("tick", "1m", ...) filter; empty means everything. `token` is the server's bearer token,
    `root_certificates` the PEM to trust for TLS (bytes or a path; `tls=True` uses the system's
    CAs). `resume_token` starts after that event instead of live.

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
    backoff = initial_backoff
    failures = 0
    while True:
        error = None
        ch = channel(target, root_certificates, tls, channel_options)
        try:
            stub = signal_service_pb2_grpc.SignalServiceStub(ch)
            request.resume_token = last
            call = stub.Subscribe(request, metadata=_metadata(token))
            try:
                for ev in call:
                    failures, backoff = 0, initial_backoff
                    if ev.resume_token:
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
