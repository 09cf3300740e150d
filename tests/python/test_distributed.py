"""End to end in distributed mode: the real binaries as child processes against a real Apache
Kafka, PostgreSQL and Redis. Every tick lands in PostgreSQL exactly once even though the
persister is killed with SIGKILL mid-run; a gRPC subscriber gets updates for every symbol; the
Kafka topics hold protobuf payloads that the standard client (confluent-kafka) reads and the
Python protobuf runtime decodes with the files in proto/."""

import os
import signal
import subprocess
import threading
import time
import urllib.request

import grpc
import pytest
from conftest import free_port, read_topic_keys

TICKS = 6000
RATE = 1000
SYMBOLS = ["EURUSD", "GBPUSD", "USDJPY", "AUDUSD", "USDCAD", "USDCHF", "NZDUSD", "EURGBP",
           "EURJPY", "XAUUSD"]


def service(var):
    v = os.environ.get(var)
    if not v:
        if os.environ.get("TICKFLOW_REQUIRE_SERVICES") == "1":
            pytest.fail(f"{var} is not set")
        pytest.skip(f"{var} is not set (run under scripts/test.sh)")
    return v


def psql(url, sql):
    out = subprocess.run(["psql", url, "-tAc", sql], check=True, capture_output=True, text=True)
    return out.stdout.strip()


def http_get(port, path):
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=2) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, ""
    except OSError:
        return None, ""


def wait_ready(port, proc, timeout=60):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{proc.args[0]} exited with {proc.returncode}")
        if http_get(port, "/readyz")[0] == 200:
            return
        time.sleep(0.1)
    raise TimeoutError(f"{proc.args[0]} not ready")


def metric(text, name):
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name) and not line.startswith("#"):
            total += float(line.rsplit(" ", 1)[1])
    return total


@pytest.fixture
def database():
    base = service("DATABASE_URL")
    name = f"tickflow_e2e_{os.getpid()}"
    psql(base, f"DROP DATABASE IF EXISTS {name}")
    psql(base, f"CREATE DATABASE {name}")
    yield base.rsplit("/", 1)[0] + "/" + name
    psql(base, f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


def test_distributed_pipeline_stores_every_tick_once_across_a_persister_kill(bins, pb, database, tmp_path):
    brokers = service("KAFKA_BROKERS")
    redis_url = service("REDIS_URL")
    env = dict(os.environ, TICKFLOW_KAFKA_BROKERS=brokers, TICKFLOW_DATABASE_URL=database,
               TICKFLOW_REDIS_URL=redis_url, RUST_LOG="info")
    ports = {c: free_port() for c in ["ingest", "router", "indicators", "persister", "grpc"]}
    logs = {}

    def start(name, *args):
        log = open(tmp_path / f"{name}.log", "a")
        logs[name] = tmp_path / f"{name}.log"
        return subprocess.Popen(
            [bins(name), "--metrics-addr", f"127.0.0.1:{ports[name]}", *args],
            env=env, stdout=log, stderr=subprocess.STDOUT)

    t_start_ms = int(time.time() * 1000)
    procs = {}
    try:
        procs["router"] = start("router")
        procs["indicators"] = start("indicators", "--grpc-addr", f"127.0.0.1:{ports['grpc']}")
        procs["persister"] = start("persister")
        for name in ["router", "indicators", "persister"]:
            wait_ready(ports[name], procs[name])

        seen = {}

        def subscribe():
            with grpc.insecure_channel(f"127.0.0.1:{ports['grpc']}") as ch:
                stub = pb.signal_service_pb2_grpc.SignalServiceStub(ch)
                req = pb.signal_service_pb2.SubscribeRequest(
                    kinds=[pb.signal_service_pb2.EVENT_KIND_UPDATE])
                try:
                    for ev in stub.Subscribe(req):
                        if ev.update.ts_recv_ns >= t_start_ms * 1_000_000:
                            seen[ev.update.symbol] = seen.get(ev.update.symbol, 0) + 1
                except grpc.RpcError:
                    pass

        sub = threading.Thread(target=subscribe, daemon=True)
        sub.start()
        time.sleep(0.5)

        procs["ingest"] = start("ingest", "--max-ticks", str(TICKS), "--rate", str(RATE))
        time.sleep(2.5)
        # Crash the persister mid-stream, then bring it back: it resumes from committed offsets.
        procs["persister"].send_signal(signal.SIGKILL)
        procs["persister"].wait()
        time.sleep(1.0)
        procs["persister"] = start("persister")
        wait_ready(ports["persister"], procs["persister"])
        assert procs["ingest"].wait(timeout=60) == 0

        # The topics may hold ticks of earlier tests (the persister group reads them too): count
        # this run's ticks by receipt time, and duplicates over the whole table.
        this_run = f"ts_recv_ns >= {t_start_ms * 1_000_000}"
        deadline = time.time() + 90
        while time.time() < deadline:
            if int(psql(database, f"SELECT count(*) FROM ticks WHERE {this_run}")) >= TICKS:
                break
            time.sleep(0.5)
        time.sleep(2)  # anything late would show up as an excess
        ours, ours_distinct, duplicates = psql(
            database,
            f"SELECT count(*) FILTER (WHERE {this_run}), "
            f"count(DISTINCT idempotency_key) FILTER (WHERE {this_run}), "
            "count(*) - count(DISTINCT idempotency_key) FROM ticks").split("|")
        assert (int(ours), int(ours_distinct), int(duplicates)) == (TICKS, TICKS, 0)

        # Every symbol reached the bot.
        assert set(seen) == set(SYMBOLS), seen

        # Each component's counters moved.
        _, router_metrics = http_get(ports["router"], "/metrics")
        assert metric(router_metrics, 'tickflow_router_ticks_total{outcome="clean"}') >= TICKS
        _, ind_metrics = http_get(ports["indicators"], "/metrics")
        assert metric(ind_metrics, "tickflow_indicators_ticks_total") >= TICKS
        assert "tickflow_indicators_tick_to_update_seconds_bucket" in ind_metrics
        _, pers_metrics = http_get(ports["persister"], "/metrics")
        assert metric(pers_metrics, "tickflow_persister_rows_stored_total") > 0

        # Redis holds a decodable snapshot per symbol.
        import redis
        r = redis.Redis.from_url(redis_url)
        snap = pb.signal_service_pb2.Snapshot.FromString(r.get("tickflow:snapshot:EURUSD"))
        assert snap.symbol == "EURUSD" and snap.last_tick.bid > 0

        # SIGTERM drains and exits cleanly.
        for name in ["router", "indicators", "persister"]:
            procs[name].send_signal(signal.SIGTERM)
        for name in ["router", "indicators", "persister"]:
            assert procs[name].wait(timeout=30) == 0, logs[name].read_text()[-3000:]
    finally:
        for p in procs.values():
            if p.poll() is None:
                p.kill()

    # The topics, read by the standard client and decoded from proto/ by Python protobuf.
    for topic in ["ticks.raw", "ticks.clean"]:
        keys = read_topic_keys(brokers, topic, t_start_ms, pb)
        assert len(keys) == TICKS, (topic, len(keys))
        assert len(set(keys)) == TICKS, topic
