"""Shared fixtures: protobuf/gRPC modules generated from proto/ with grpcio-tools, and paths."""

import importlib
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

from confluent_kafka import Consumer, TopicPartition

import pytest

ROOT = Path(__file__).resolve().parents[2]
PROTO = ROOT / "proto"


def _bin(name: str) -> Path:
    target = Path(os.environ.get("CARGO_TARGET_DIR", ROOT / "target"))
    profile = os.environ.get("TICKFLOW_PROFILE", "debug")
    return target / profile / name


@pytest.fixture(scope="session")
def bins():
    """Returns a function mapping a binary name to its built path."""

    def get(name: str) -> Path:
        p = _bin(name)
        if not p.exists():
            pytest.fail(f"{p} is not built; run `cargo build --workspace --bins` first")
        return p

    return get


@pytest.fixture(scope="session")
def tf(tmp_path_factory):
    """Installs clients/python with pip (as a user would, dependencies aside: the test
    environment has them) into a fresh directory and imports it from there (once per session:
    test_python_client.py and test_history_client.py share it)."""
    target = tmp_path_factory.mktemp("site")
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "-q", "--disable-pip-version-check", "--no-deps",
         "--no-build-isolation", "--target", str(target), str(ROOT / "clients" / "python")],
        check=True,
    )
    sys.path.insert(0, str(target))
    mod = importlib.import_module("tickflow_client")
    assert Path(mod.__file__).is_relative_to(target), mod.__file__
    return mod


@pytest.fixture(scope="session")
def pb(tmp_path_factory):
    """Generates Python modules from proto/ with grpcio-tools and returns them."""
    out = tmp_path_factory.mktemp("gen")
    protos = sorted(str(p.relative_to(PROTO)) for p in (PROTO / "tickflow/v1").glob("*.proto"))
    subprocess.run(
        [sys.executable, "-m", "grpc_tools.protoc", f"-I{PROTO}", f"--python_out={out}",
         f"--grpc_python_out={out}", *protos],
        check=True,
    )
    sys.path.insert(0, str(out))
    mods = {
        name: importlib.import_module(f"tickflow.v1.{name}")
        for name in ["tick_pb2", "events_pb2", "signal_service_pb2", "signal_service_pb2_grpc"]
    }
    return type("PB", (), mods)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port: int, timeout: float = 30.0, proc=None) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"process exited early with {proc.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"nothing listens on 127.0.0.1:{port}")


def position_at_end(brokers, group, topic):
    """Commits `group`'s offsets on `topic` at the topic's current end, so a stage started in
    that group reads only what comes next, not the backlog that earlier runs (benchmarks, other
    tests) left on a reused broker. A topic that does not exist yet holds no backlog."""
    c = Consumer({"bootstrap.servers": brokers, "group.id": group, "enable.auto.commit": False})
    try:
        md = c.list_topics(topic, timeout=10)
        t = md.topics.get(topic)
        if t is None or t.error is not None or not t.partitions:
            return
        ends = [TopicPartition(topic, p, c.get_watermark_offsets(TopicPartition(topic, p),
                                                                  timeout=10)[1])
                for p in t.partitions]
        c.commit(offsets=ends, asynchronous=False)
    finally:
        c.close()


def read_topic_keys(brokers, topic, since_ms, pb):
    """Returns the idempotency keys of the ticks on `topic` received since `since_ms`, read to
    the topic's current end with confluent-kafka and decoded with the generated modules."""
    c = Consumer({"bootstrap.servers": brokers, "group.id": f"e2e-check-{os.getpid()}-{topic}",
                  "enable.auto.commit": False, "auto.offset.reset": "earliest"})
    try:
        md = c.list_topics(topic, timeout=10)
        parts = [TopicPartition(topic, p, since_ms) for p in md.topics[topic].partitions]
        starts = c.offsets_for_times(parts, timeout=10)
        ends = {p: c.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[1]
                for p in md.topics[topic].partitions}
        todo = {tp.partition for tp in starts if tp.offset >= 0 and tp.offset < ends[tp.partition]}
        c.assign([tp for tp in starts if tp.partition in todo])
        keys = []
        deadline = time.time() + 60
        while todo and time.time() < deadline:
            m = c.poll(1.0)
            if m is None or m.error():
                continue
            t = pb.tick_pb2.Tick.FromString(m.value())
            assert m.key().decode() == t.symbol, "keyed by symbol"
            assert t.ask >= t.bid > 0 and t.idempotency_key
            if t.ts_recv_ns >= since_ms * 1_000_000:
                keys.append(t.idempotency_key)
            if m.offset() + 1 >= ends[m.partition()]:
                todo.discard(m.partition())
        assert not todo, f"could not read {topic} to its end"
        return keys
    finally:
        c.close()


def read_topic(brokers, topic, timeout=60):
    """Returns every message of `topic` as (partition, offset, key, value), read from the start
    to the topic's current end with confluent-kafka, in offset order within each partition."""
    c = Consumer({"bootstrap.servers": brokers, "group.id": f"e2e-read-{os.getpid()}-{topic}",
                  "enable.auto.commit": False, "auto.offset.reset": "earliest"})
    try:
        md = c.list_topics(topic, timeout=10)
        ends = {p: c.get_watermark_offsets(TopicPartition(topic, p), timeout=10)
                for p in md.topics[topic].partitions}
        todo = {p for p, (low, high) in ends.items() if high > low}
        c.assign([TopicPartition(topic, p, ends[p][0]) for p in todo])
        out = []
        deadline = time.time() + timeout
        while todo and time.time() < deadline:
            m = c.poll(1.0)
            if m is None or m.error():
                continue
            out.append((m.partition(), m.offset(), m.key(), m.value()))
            if m.offset() + 1 >= ends[m.partition()][1]:
                todo.discard(m.partition())
        assert not todo, f"could not read {topic} to its end"
        return out
    finally:
        c.close()
