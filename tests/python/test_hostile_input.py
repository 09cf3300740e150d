"""Broken input for every source (the simulator aside): lines (for Dukascopy, hour files) from
1 byte to 8 MiB, binary junk and valid ticks interleaved, fed to the real `ingest` binary with
the real `router` on a real Kafka. For each source: the process keeps running to the end, every
valid tick reaches `ticks.clean` exactly once, every invalid input is on `ticks.dlq` with a
reason (read with confluent-kafka, decoded with modules generated from proto/), and ingest's
counters add up: inputs = published + rejected + skipped.

A second test stops Kafka while a source produces rejects: no dead letter is lost."""

import http.server
import json
import lzma
import os
import random
import re
import signal
import socket
import ssl
import struct
import subprocess
import threading
import time
import urllib.request
from datetime import datetime, timezone
from pathlib import Path

import pytest
from confluent_kafka import Consumer, TopicPartition

from conftest import ROOT, free_port, position_at_end, read_topic_keys, wait_port

# Sizes of the junk lines, in bytes: from 1 byte to 8 MiB, around every limit (MT5 4 KiB,
# CSV and OANDA 64 KiB, the 1 KiB prefix a dead letter keeps, Kafka's 1 MB message).
SIZES = [1, 2, 17, 1_000, 1_025, 4_096, 4_097, 65_536, 65_537, 1 << 20, (1 << 20) + 1, 8 << 20]
DEAD_LETTER_REASONS = {"malformed_line", "line_too_long", "malformed_message", "corrupt_file"}
MAX_DEAD_LETTER_PAYLOAD = 16 * 1024


def junk_lines():
    """Returns the junk lines (without their newline): printable and binary, every size."""
    rnd = random.Random(13)
    out = []
    for n in SIZES:
        out.append(b"x" * n)
        # Binary: NUL bytes, invalid UTF-8, high bytes, carriage returns; never a newline.
        out.append(bytes(rnd.choice([0, 0xFF, 0xC3, 0x80, 0x0D, 0x7B, 0x22]) for _ in range(min(n, 5000))))
    out.append(b"{}")
    out.append(b'{"type":"tick"}')
    return out


def require_kafka():
    brokers = os.environ.get("KAFKA_BROKERS")
    if not brokers:
        if os.environ.get("TICKFLOW_REQUIRE_SERVICES") == "1":
            pytest.fail("KAFKA_BROKERS is not set")
        pytest.skip("KAFKA_BROKERS is not set (run under scripts/test.sh)")
    return brokers


@pytest.fixture(scope="module")
def router(bins, tmp_path_factory):
    """One router of its own, at the end of ticks.raw, for every test of this module."""
    brokers = require_kafka()
    log = tmp_path_factory.mktemp("router") / "router.log"
    group = f"router-hostile-{os.getpid()}-{time.time_ns()}"
    position_at_end(brokers, group, "ticks.raw")
    env = dict(os.environ, TICKFLOW_KAFKA_BROKERS=brokers, RUST_LOG="warn")
    p = subprocess.Popen([bins("router"), "--metrics-addr", f"127.0.0.1:{free_port()}", "--group", group],
                         env=env, stdout=subprocess.DEVNULL, stderr=open(log, "w"))
    time.sleep(3)
    assert p.poll() is None, log.read_text()[-3000:]
    yield brokers
    p.terminate()
    p.wait(timeout=30)


def read_dead_letters(brokers, since_ms, pb, origin):
    """Returns the dead letters on `ticks.dlq` produced since `since_ms` from `origin`."""
    c = Consumer({"bootstrap.servers": brokers, "group.id": f"hostile-dlq-{os.getpid()}",
                  "enable.auto.commit": False, "auto.offset.reset": "earliest"})
    try:
        md = c.list_topics("ticks.dlq", timeout=10)
        parts = [TopicPartition("ticks.dlq", p, since_ms) for p in md.topics["ticks.dlq"].partitions]
        starts = c.offsets_for_times(parts, timeout=10)
        ends = {p: c.get_watermark_offsets(TopicPartition("ticks.dlq", p), timeout=10)[1]
                for p in md.topics["ticks.dlq"].partitions}
        todo = {tp.partition for tp in starts if 0 <= tp.offset < ends[tp.partition]}
        c.assign([tp for tp in starts if tp.partition in todo])
        out = []
        deadline = time.time() + 60
        while todo and time.time() < deadline:
            m = c.poll(1.0)
            if m is None or m.error():
                continue
            d = pb.tick_pb2.DeadLetter.FromString(m.value())
            if d.origin == origin and d.ts_rejected_ns >= since_ms * 1_000_000:
                out.append(d)
            if m.offset() + 1 >= ends[m.partition()]:
                todo.discard(m.partition())
        assert not todo, "could not read ticks.dlq to its end"
        return out
    finally:
        c.close()


def clean_keys(brokers, since_ms, pb, prefix, want):
    """Waits until `want` distinct keys starting with `prefix` are on ticks.clean (or 60 s),
    then returns every such key read, duplicates included."""
    deadline = time.time() + 60
    while True:
        keys = [k for k in read_topic_keys(brokers, "ticks.clean", since_ms, pb) if k.startswith(prefix)]
        if len(set(keys)) >= want or time.time() > deadline:
            break
        time.sleep(1)
    time.sleep(2)  # anything more would be a duplicate
    return [k for k in read_topic_keys(brokers, "ticks.clean", since_ms, pb) if k.startswith(prefix)]


def summary(log_text):
    """Returns the counters of ingest's final `ingest stopped` line."""
    log_text = re.sub(r"\x1b\[[0-9;]*m", "", log_text)
    lines = [l for l in log_text.splitlines() if "ingest stopped" in l]
    assert lines, log_text[-3000:]
    return {k: int(v) for k, v in re.findall(r"(\w+)=(\d+)", lines[-1])}


def metric_sum(port, name):
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    return sum(float(l.rsplit(" ", 1)[1]) for l in text.splitlines() if l.startswith(name + "{") or l.startswith(name + " "))


def start_ingest(bins, brokers, tmp_path, args):
    metrics = free_port()
    env = dict(os.environ, TICKFLOW_KAFKA_BROKERS=brokers, RUST_LOG="info,rdkafka=warn")
    log = tmp_path / "ingest.log"
    p = subprocess.Popen([bins("ingest"), "--metrics-addr", f"127.0.0.1:{metrics}",
                          "--spool-dir", str(tmp_path / "spool"), *args],
                         env=env, stdout=subprocess.DEVNULL, stderr=open(log, "w"))
    return p, metrics, log


def wait_inputs(p, metrics_port, want, log):
    """Waits until ingest counted `want` inputs and confirmed every one of them."""
    wait_port(metrics_port, proc=p)
    deadline = time.time() + 120
    while time.time() < deadline:
        assert p.poll() is None, "ingest stopped: " + log.read_text()[-3000:]
        try:
            inputs = metric_sum(metrics_port, "tickflow_ingest_inputs_total")
            done = (metric_sum(metrics_port, "tickflow_ingest_ticks_published_total")
                    + metric_sum(metrics_port, "tickflow_ingest_dead_letters_published_total"))
            if inputs >= want and done >= want:
                return
        except OSError:
            pass
        time.sleep(0.5)
    pytest.fail(f"ingest did not count {want} inputs within 120 s: " + log.read_text()[-3000:])


def check(brokers, pb, since_ms, origin, key_prefix, valid, junk, s, log):
    """The acceptance checks shared by every source."""
    keys = clean_keys(brokers, since_ms, pb, key_prefix, valid)
    assert len(set(keys)) == valid, "every valid tick reached ticks.clean"
    assert len(keys) == valid, "each once"
    letters = read_dead_letters(brokers, since_ms, pb, origin)
    assert len(letters) == junk, [(d.reason, d.detail[:100]) for d in letters]
    assert all(d.reason in DEAD_LETTER_REASONS and d.detail and d.component == "ingest" for d in letters)
    assert all(len(d.payload) <= MAX_DEAD_LETTER_PAYLOAD for d in letters)
    too_long = [d for d in letters if d.reason == "line_too_long"]
    assert too_long and all(re.search(r"line of \d+ bytes", d.detail) for d in too_long)
    # The counters add up.
    assert s["inputs"] == valid + junk, s
    assert s["inputs"] == s["published"] + s["rejected"] + s["skipped"], s
    assert (s["published"], s["rejected"], s["failed"]) == (valid, junk, 0), s
    assert s["dead_letters"] == junk and s["dead_letters_lost"] == 0, s
    assert "panicked" not in log


def now_ms():
    return int(time.time() * 1000)


def test_csv_source(bins, pb, router, tmp_path):
    brokers = router
    since = now_ms()
    base = now_ms() - 60_000
    symbol = f"EURUSD"
    path = tmp_path / "hostile.csv"
    valid, junk = 0, 0
    with open(path, "wb") as f:
        f.write(b"timestamp,bid,ask\n")
        for j, line in enumerate(junk_lines()):
            for k in range(5):
                t = base + valid
                f.write(f"{t},1.{10000 + valid % 7:05d},1.{10003 + valid % 7:05d}\n".encode())
                valid += 1
            f.write(line + b"\n")
            junk += 1
        f.write(f"{base + valid},1.10000,1.10003\n".encode())
        valid += 1
    p, _, log = start_ingest(bins, brokers, tmp_path, ["--source", "csv", "--csv-file", str(path),
                                                       "--csv-format", "plain", "--csv-symbol", symbol])
    assert p.wait(timeout=180) == 0, log.read_text()[-3000:]
    text = log.read_text()
    check(brokers, pb, since, "csv", f"csv|{symbol}|", valid, junk, summary(text), text)


class _Oanda(http.server.BaseHTTPRequestHandler):
    body = b""
    served = 0

    def log_message(self, *a):
        pass

    def do_GET(self):
        cls = type(self)
        self.send_response(200)
        self.send_header("Content-Type", "application/octet-stream")
        self.end_headers()
        first = cls.served == 0
        cls.served += 1
        try:
            if first:
                for i in range(0, len(cls.body), 65_536):
                    self.wfile.write(cls.body[i:i + 65_536])
            # Then heartbeats, as OANDA keeps a stream alive.
            for _ in range(600):
                self.wfile.write(b'{"type":"HEARTBEAT","time":"2024-01-02T10:00:00.000000000Z"}\n')
                self.wfile.flush()
                time.sleep(0.2)
        except (BrokenPipeError, ConnectionResetError):
            pass


def oanda_price(ns, i):
    t = datetime.fromtimestamp(ns // 1_000_000_000, timezone.utc).strftime("%Y-%m-%dT%H:%M:%S")
    return json.dumps({"type": "PRICE", "time": f"{t}.{ns % 1_000_000_000:09d}Z",
                       "bids": [{"price": f"1.{10000 + i % 7:05d}", "liquidity": 1000000}],
                       "asks": [{"price": f"1.{10003 + i % 7:05d}", "liquidity": 1000000}],
                       "status": "tradeable", "tradeable": True, "instrument": "EUR_USD"}).encode()


def test_oanda_source(bins, pb, router, tmp_path):
    brokers = router
    since = now_ms()
    base_ns = (now_ms() - 30_000) * 1_000_000
    body, valid, junk = bytearray(), 0, 0
    for line in junk_lines():
        for _ in range(5):
            body += oanda_price(base_ns + valid * 1_000_000, valid) + b"\n"
            valid += 1
        body += line + b"\n"
        junk += 1
    body += oanda_price(base_ns + valid * 1_000_000, valid) + b"\n"
    valid += 1
    handler = type("Oanda", (_Oanda,), {"body": bytes(body), "served": 0})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        p, metrics, log = start_ingest(bins, brokers, tmp_path, [
            "--source", "oanda", "--oanda-url", f"http://127.0.0.1:{server.server_port}",
            "--oanda-account", "acct", "--oanda-token", "token", "--oanda-instruments", "EUR_USD"])
        wait_inputs(p, metrics, valid + junk, log)
        assert handler.served == 1, "one connection: no junk line broke the stream"
        p.send_signal(signal.SIGTERM)
        assert p.wait(timeout=60) == 0, log.read_text()[-3000:]
    finally:
        server.shutdown()
    text = log.read_text()
    check(brokers, pb, since, "oanda", "oanda|EURUSD|", valid, junk, summary(text), text)


def test_mt5_source(bins, pb, router, tmp_path):
    brokers = router
    since = now_ms()
    port = free_port()
    terminal = f"hostile{time.time_ns()}"
    p, metrics, log = start_ingest(bins, brokers, tmp_path, [
        "--source", "mt5", "--mt5-listen", f"127.0.0.1:{port}", "--mt5-token", "secret"])
    wait_port(port, proc=p)
    s = socket.create_connection(("127.0.0.1", port))
    reader = s.makefile("rb")
    s.sendall(json.dumps({"type": "hello", "token": "secret", "terminal": terminal, "utc_offset_s": 0}).encode() + b"\n")
    assert b"welcome" in reader.readline()
    base = now_ms() - 30_000
    valid, junk = 0, 0

    def tick(i):
        return json.dumps({"type": "tick", "symbol": "EURUSD", "time_msc": base + i,
                           "bid": float(f"1.{10000 + i % 7:05d}"), "ask": float(f"1.{10003 + i % 7:05d}"),
                           "last": 0, "volume": 0, "volume_real": 0, "flags": 6}).encode() + b"\n"

    for line in junk_lines():
        for _ in range(5):
            s.sendall(tick(valid))
            valid += 1
        s.sendall(line + b"\n")
        junk += 1
    s.sendall(tick(valid))
    valid += 1
    # The connection survived every junk line: the last tick is acknowledged on it.
    deadline = time.time() + 60
    acked = None
    while time.time() < deadline:
        s.sendall(b'{"type":"hb"}\n')
        reply = reader.readline()
        assert reply, "ingest closed the connection: " + log.read_text()[-3000:]
        msg = json.loads(reply)
        if msg.get("type") == "ack" and msg["time_msc"] >= base + valid - 1:
            acked = msg["time_msc"]
            break
    assert acked == base + valid - 1, "the last tick was acknowledged on the same connection"
    wait_inputs(p, metrics, valid + junk, log)
    s.close()
    p.send_signal(signal.SIGTERM)
    assert p.wait(timeout=60) == 0, log.read_text()[-3000:]
    text = log.read_text()
    check(brokers, pb, since, "mt5", f"mt5:{terminal}|EURUSD|", valid, junk, summary(text), text)


def bi5(records):
    """Encodes Dukascopy records (ms offset, ask, bid in points) as a .bi5 hour file."""
    raw = b"".join(struct.pack(">IIIff", ms, ask, bid, 1.5, 2.5) for ms, ask, bid in records)
    return lzma.compress(raw, format=lzma.FORMAT_ALONE)


def test_dukascopy_source(bins, pb, router, tmp_path):
    brokers = router
    since = now_ms()
    # Hours of this run, in the recent past; valid and damaged hour files alternate. Each run
    # uses its own millisecond offsets so its keys are its own.
    hour_ms = 3_600_000
    rnd = random.Random(time.time_ns())
    junk_files = [line for line in junk_lines()]
    junk_files.append(lzma.compress(b"\x00" * 21, format=lzma.FORMAT_ALONE))  # not whole records
    junk_files.append(bi5([(hour_ms + 5, 110003, 110000)]))  # a record outside its hour
    # Every hour in the past (the router refuses event times in the future).
    first = (now_ms() // hour_ms - 2 * len(junk_files) - 1) * hour_ms
    valid, junk = 0, 0
    root = tmp_path / "dukascopy"
    for h in range(2 * len(junk_files)):
        start = first + h * hour_ms
        d = datetime.fromtimestamp(start / 1000, timezone.utc)
        p = root / "EURUSD" / f"{d.year:04d}" / f"{d.month - 1:02d}" / f"{d.day:02d}" / f"{d.hour:02d}h_ticks.bi5"
        p.parent.mkdir(parents=True, exist_ok=True)
        if h % 2 == 0:
            offsets = sorted(rnd.sample(range(hour_ms), 5))
            p.write_bytes(bi5([(ms, 110003 + i % 7, 110000 + i % 7) for i, ms in enumerate(offsets)]))
            valid += 5
        else:
            p.write_bytes(junk_files[h // 2])
            junk += 1
    to = first + 2 * len(junk_files) * hour_ms
    iso = lambda ms: datetime.fromtimestamp(ms / 1000, timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    p, _, log = start_ingest(bins, brokers, tmp_path, [
        "--source", "dukascopy", "--dukascopy-dir", str(root), "--symbols", "EURUSD",
        "--from", iso(first), "--to", iso(to)])
    assert p.wait(timeout=180) == 0, log.read_text()[-3000:]
    text = log.read_text()
    s = summary(text)
    keys = clean_keys(brokers, since, pb, "dukascopy|EURUSD|", valid)
    assert len(set(keys)) == valid and len(keys) == valid
    letters = read_dead_letters(brokers, since, pb, "dukascopy")
    assert len(letters) == junk and all(d.reason == "corrupt_file" and "EURUSD" in d.detail for d in letters)
    assert s["inputs"] == valid + junk == s["published"] + s["rejected"] + s["skipped"], s
    assert s["dead_letters"] == junk and s["dead_letters_lost"] == 0, s


def test_no_dead_letter_is_lost_while_kafka_is_stopped(bins, pb, router, tmp_path):
    """An MT5 terminal streams ticks and bad lines at a steady pace while Kafka is stopped for
    4 s and started again: ingest spools ticks and dead letters, and in the end every bad line
    is on ticks.dlq and every tick on ticks.clean once."""
    brokers = router
    if brokers != "127.0.0.1:19092":
        pytest.skip("Kafka is not the one scripts/services.sh runs: not ours to stop")
    services = [str(ROOT / "scripts/services.sh")]
    since = now_ms()
    port = free_port()
    terminal = f"outage{time.time_ns()}"
    p, metrics, log = start_ingest(bins, brokers, tmp_path, [
        "--source", "mt5", "--mt5-listen", f"127.0.0.1:{port}", "--mt5-token", "secret",
        "--spool-after", "1s"])
    wait_port(port, proc=p)
    s = socket.create_connection(("127.0.0.1", port))
    reader = s.makefile("rb")
    s.sendall(json.dumps({"type": "hello", "token": "secret", "terminal": terminal, "utc_offset_s": 0}).encode() + b"\n")
    assert b"welcome" in reader.readline()
    base = now_ms() - 30_000
    n = 1_000

    def tick(i):
        return json.dumps({"type": "tick", "symbol": "EURUSD", "time_msc": base + i,
                           "bid": float(f"1.{10000 + i % 7:05d}"), "ask": float(f"1.{10003 + i % 7:05d}"),
                           "last": 0, "volume": 0, "volume_real": 0, "flags": 6}).encode() + b"\n"

    def stream():
        # 10 s: a tick every 10 ms, a bad line after every 4th.
        for i in range(n):
            s.sendall(tick(i))
            if i % 4 == 3:
                s.sendall(f"bad line {i} of this run".encode() + b"\n")
            time.sleep(0.01)

    sender = threading.Thread(target=stream)
    sender.start()
    try:
        time.sleep(2)
        subprocess.run(services + ["kafka-stop"], check=True)
        time.sleep(4)
        subprocess.run(services + ["kafka-start"], check=True)
        sender.join()
        junk = n // 4
        deadline = time.time() + 120
        acked = None
        while time.time() < deadline and acked != base + n - 1:
            s.sendall(b'{"type":"hb"}\n')
            msg = json.loads(reader.readline() or b"{}")
            if msg.get("type") == "ack":
                acked = msg["time_msc"]
        assert acked == base + n - 1, "the last tick was acknowledged"
        wait_inputs(p, metrics, n + junk, log)
        s.close()
        p.send_signal(signal.SIGTERM)
        assert p.wait(timeout=60) == 0, log.read_text()[-3000:]
    finally:
        if p.poll() is None:
            p.kill()
        subprocess.run(services + ["kafka-start"], check=False)
    text = re.sub(r"\x1b\[[0-9;]*m", "", log.read_text())
    assert "spooling ticks to disk" in text and "dead-letter spool drained" in text, text[-3000:]
    st = summary(text)
    assert st["dead_letters_spooled"] == 0 and st["dead_letters_lost"] == 0, st
    letters = read_dead_letters(brokers, since, pb, "mt5")
    lines = {int(m.group(1)) for d in letters for m in [re.search(r"bad line (\d+) of", d.payload.decode())] if m}
    assert lines == {i for i in range(n) if i % 4 == 3}, f"{junk - len(lines)} dead letters lost"
    assert st["rejected"] == junk and st["dead_letters"] >= junk, st
    keys = clean_keys(brokers, since, pb, f"mt5:{terminal}|EURUSD|", n)
    assert len(set(keys)) == n and len(keys) == n
