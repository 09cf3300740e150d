"""Determinism: the signals a live run emits equal, value for value and in per-symbol order,
the signals a fresh `indicators` emits when `replayer store --speed max` plays the ticks that
run stored in PostgreSQL back through it. Real binaries, real Kafka and PostgreSQL; both signal
topics are read with confluent-kafka and decoded with the Python protobuf runtime."""

import os
import subprocess
import time
from datetime import datetime, timezone

from confluent_kafka.admin import AdminClient, NewTopic

from conftest import free_port, read_topic, read_topic_keys
from test_distributed import Pipeline, database, metric, psql  # noqa: F401 (fixture)

TICKS = 6000
RATE = 2000


def rfc3339(ms):
    return datetime.fromtimestamp(ms / 1000, tz=timezone.utc).isoformat(timespec="milliseconds")


def wait_for(what, cond, timeout=90):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if cond():
            return
        time.sleep(0.3)
    raise TimeoutError(what)


def signals_by_symbol(brokers, topic, pb):
    out = {}
    for _, _, _, value in read_topic(brokers, topic):
        s = pb.events_pb2.Signal.FromString(value)
        out.setdefault(s.symbol, []).append(s)
    return out


def test_live_signals_equal_those_of_a_max_speed_replay_of_the_stored_ticks(bins, pb, database, tmp_path):
    pipe = Pipeline(bins, database, tmp_path)
    brokers = pipe.brokers
    run = f"{os.getpid()}-{time.time_ns()}"
    live_signals, replay_ticks, replay_signals = (
        f"signals.live.{run}", f"ticks.replay.{run}", f"signals.replay.{run}")
    admin = AdminClient({"bootstrap.servers": brokers})
    for f in admin.create_topics([NewTopic(t, num_partitions=3, replication_factor=1)
                                  for t in [live_signals, replay_ticks, replay_signals]]).values():
        f.result(timeout=30)
    live_group = f"indicators-live-{run}"
    pipe.ports["replay-indicators"] = free_port()
    try:
        pipe.start("router")
        pipe.start("persister")
        # The live instance starts at the end of ticks.clean, so it sees exactly this run.
        pipe.start("indicators", "--grpc-addr", f"127.0.0.1:{free_port()}", "--group", live_group,
                   "--signals-topic", live_signals, "--kafka-property", "auto.offset.reset=latest")
        for name in ["router", "persister", "indicators"]:
            pipe.wait_ready(name)

        def assigned():
            g = admin.describe_consumer_groups([live_group])[live_group].result(timeout=10)
            return any(m.assignment.topic_partitions for m in g.members)

        wait_for("the live indicators group has its partitions", assigned)
        time.sleep(2)  # its "latest" positions are resolved before the first tick is sent
        t0_ms = int(time.time() * 1000)
        pipe.start("ingest", "--max-ticks", str(TICKS), "--rate", str(RATE))
        assert pipe.procs["ingest"].wait(timeout=60) == 0

        clean = len(read_topic_keys(brokers, "ticks.clean", t0_ms, pb))
        assert clean >= TICKS * 0.9, clean  # the simulator's bad ticks are rejected
        wait_for("the run is stored", lambda: int(psql(
            database, f"SELECT count(*) FROM ticks WHERE ts_recv_ns >= {t0_ms * 1_000_000}")) >= clean)
        wait_for("the live instance has seen the run", lambda: metric(
            pipe.metrics("indicators"), "tickflow_indicators_ticks_total") >= clean)

        # Replay what was stored, as fast as possible, through a fresh instance.
        out = subprocess.run(
            [bins("replayer"), "--metrics-addr", f"127.0.0.1:{free_port()}", "store",
             "--from", rfc3339(t0_ms), "--to", rfc3339(int(time.time() * 1000) + 60_000),
             "--speed", "max", "--into", f"topic:{replay_ticks}"],
            env=pipe.env, capture_output=True, text=True, timeout=120)
        assert out.returncode == 0, out.stderr[-3000:]
        assert f"replayed {clean} ticks" in out.stdout, out.stdout
        pipe.start("replay-indicators", "--grpc-addr", f"127.0.0.1:{free_port()}",
                   "--group", f"indicators-replay-{run}", "--input-topic", replay_ticks,
                   "--signals-topic", replay_signals)
        wait_for("the replay instance has seen every tick", lambda: metric(
            pipe.metrics("replay-indicators"), "tickflow_indicators_ticks_total") >= clean)
        time.sleep(1)

        live = signals_by_symbol(brokers, live_signals, pb)
        replay = signals_by_symbol(brokers, replay_signals, pb)
        print(f"{clean} ticks; signals per symbol: " + str({k: len(v) for k, v in live.items()}))
        assert sum(map(len, live.values())) > 50, "the default rules fire on a 6000-tick run"
        assert sorted(live) == sorted(replay)
        for symbol in live:
            assert len(live[symbol]) == len(replay[symbol]), symbol
            for a, b in zip(live[symbol], replay[symbol]):
                assert a == b, (symbol, a, b)  # rule, direction, every value, both timestamps
    finally:
        pipe.cleanup()
