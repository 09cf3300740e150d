"""Kafka stopped in the middle of a run and started again: ingest spools to disk while the
broker does not confirm, drains in order when it returns, and `ticks.clean` (read with
confluent-kafka) ends up with exactly the ticks sent, each once."""

import os
import subprocess
import time

import pytest

from conftest import ROOT, free_port, position_at_end, read_topic_keys

TICKS = 3000


def test_kafka_outage_loses_and_duplicates_nothing(bins, pb, tmp_path):
    brokers = os.environ.get("KAFKA_BROKERS")
    if not brokers:
        if os.environ.get("TICKFLOW_REQUIRE_SERVICES") == "1":
            pytest.fail("KAFKA_BROKERS is not set")
        pytest.skip("KAFKA_BROKERS is not set (run under scripts/test.sh)")
    if brokers != "127.0.0.1:19092":
        pytest.skip("Kafka is not the one scripts/services.sh runs: not ours to stop")
    services = [str(ROOT / "scripts/services.sh")]
    env = dict(os.environ, TICKFLOW_KAFKA_BROKERS=brokers, RUST_LOG="warn")
    t_start_ms = int(time.time() * 1000)
    # A router group of its own at the end of ticks.raw: no backlog from earlier runs to route.
    group = f"router-spool-test-{os.getpid()}-{time.time_ns()}"
    position_at_end(brokers, group, "ticks.raw")
    router = subprocess.Popen([bins("router"), "--metrics-addr", f"127.0.0.1:{free_port()}",
                               "--group", group, "--dedup-window", "2m"],
                              env=env, stdout=subprocess.DEVNULL, stderr=open(tmp_path / "router.log", "w"))
    ingest = None
    try:
        time.sleep(3)
        ingest = subprocess.Popen(
            [bins("ingest"), "--metrics-addr", f"127.0.0.1:{free_port()}", "--max-ticks", str(TICKS),
             "--rate", "300", "--spool-dir", str(tmp_path / "spool"), "--spool-after", "1s"],
            env=env, stdout=subprocess.DEVNULL, stderr=open(tmp_path / "ingest.log", "w"))
        time.sleep(2.5)
        subprocess.run(services + ["kafka-stop"], check=True)
        time.sleep(3)
        subprocess.run(services + ["kafka-start"], check=True)
        assert ingest.wait(timeout=120) == 0, (tmp_path / "ingest.log").read_text()[-3000:]
        log = (tmp_path / "ingest.log").read_text()
        assert "spooling ticks to disk" in log and "spool drained" in log, log[-3000:]

        deadline = time.time() + 90
        keys = []
        while time.time() < deadline:
            keys = read_topic_keys(brokers, "ticks.clean", t_start_ms, pb)
            if len(set(keys)) >= TICKS:
                break
            time.sleep(2)
        time.sleep(2)
        keys = read_topic_keys(brokers, "ticks.clean", t_start_ms, pb)
        assert len(set(keys)) == TICKS, "every tick sent arrived"
        assert len(keys) == TICKS, "and none twice"
    finally:
        for p in [ingest, router]:
            if p is not None and p.poll() is None:
                p.terminate()
                p.wait(timeout=30)
        subprocess.run(services + ["kafka-start"], check=False)
