"""The installable Python client (clients/python) against the real `tickflow run` binary:
automatic resume across server-side disconnects with no gap and no duplicate, snapshot, bearer
token and TLS; and its generated stubs are those proto/ gives today."""

import importlib
import importlib.metadata
import os
import subprocess
import sys
import time
from pathlib import Path

import grpc
import pytest
from google.protobuf import descriptor_pb2

from conftest import PROTO, ROOT, free_port, wait_port

CLIENT = ROOT / "clients" / "python"
GEN = CLIENT / "tickflow_client" / "_proto" / "tickflow" / "v1"


def start_run(bins, tmp_path, *extra, rate=2000):
    port = free_port()
    proc = subprocess.Popen(
        [bins("tickflow"), "run", "--rate", str(rate), "--max-ticks", "1000000", "--store",
         f"sqlite:{tmp_path / 't.db'}", "--grpc-addr", f"127.0.0.1:{port}", "--status-interval", "1h",
         *extra],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )
    wait_port(port, proc=proc)
    return proc, f"127.0.0.1:{port}"


def stop(proc):
    proc.terminate()
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def _without_json_names(fd):
    """protoc's descriptor sets carry each field's json_name; the generated code drops them."""
    def strip(messages):
        for m in messages:
            for f in m.field:
                f.ClearField("json_name")
            strip(m.nested_type)
    strip(fd.message_type)
    return fd


def test_the_generated_stubs_match_proto(tmp_path):
    # 1. Each committed module embeds exactly the descriptor protoc makes of proto/ today.
    fds = tmp_path / "fds.pb"
    protos = sorted(str(p.relative_to(PROTO)) for p in (PROTO / "tickflow/v1").glob("*.proto"))
    subprocess.run([sys.executable, "-m", "grpc_tools.protoc", f"-I{PROTO}",
                    f"--descriptor_set_out={fds}", *protos], check=True)
    want = {f.name: _without_json_names(f) for f in descriptor_pb2.FileDescriptorSet.FromString(fds.read_bytes()).file}
    committed = sorted(p.name for p in GEN.glob("*_pb2.py"))
    assert committed == sorted(Path(n).stem + "_pb2.py" for n in want), committed
    for name, fd in want.items():
        text = (GEN / (Path(name).stem + "_pb2.py")).read_text()
        start = text.index("AddSerializedFile(b'") + len("AddSerializedFile(")
        end = text.index("')\n", start) + 1
        got = descriptor_pb2.FileDescriptorProto.FromString(eval(text[start:end]))  # a bytes literal
        assert got == fd, f"{name}: the stubs in clients/python are stale; run clients/python/generate.sh"

    # 2. With the grpcio-tools version that made them, generate.sh reproduces them byte for byte.
    out = tmp_path / "gen"
    subprocess.run([CLIENT / "generate.sh", out], check=True,
                   env={**os.environ, "PYTHON": sys.executable})
    fresh = {p.relative_to(out): p.read_text() for p in out.rglob("*.py")}
    base = GEN.parents[1]
    mine = {p.relative_to(base): p.read_text() for p in base.rglob("*.py")}
    assert sorted(fresh) == sorted(mine)
    stamp = "GRPC_GENERATED_VERSION = '%s'" % importlib.metadata.version("grpcio-tools")
    if stamp in mine[Path("tickflow/v1/signal_service_pb2_grpc.py")]:
        for name in fresh:
            assert fresh[name] == mine[name], f"{name} differs: run clients/python/generate.sh"


def test_subscribe_resumes_across_server_disconnects_without_gap_or_duplicate(tf, bins, tmp_path):
    # A tiny queue and the disconnect policy: a consumer slower than the feed is cut off
    # (RESOURCE_EXHAUSTED) again and again; the helper resumes after the last event it yielded.
    run, target = start_run(bins, tmp_path, "--slow-subscriber", "disconnect",
                            "--subscriber-queue", "16", rate=2000)
    reconnects = []
    seqs, gaps = [], []
    try:
        events = tf.subscribe(
            target, on_reconnect=lambda err, delay: reconnects.append(err),
            # No window growth: the client's HTTP/2 window stays small, so it backs up quickly.
            channel_options=[("grpc.http2.bdp_probe", 0)],
        )
        deadline = time.time() + 60
        for ev in events:
            if ev.WhichOneof("kind") == "gap":
                gaps.append(ev.gap)
            else:
                seqs.append(ev.seq)
            time.sleep(0.002)  # a slow bot
            if (len(reconnects) >= 2 and len(seqs) >= 3000) or time.time() > deadline:
                break
        events.close()
    finally:
        stop(run)
    codes = [e.code() if e is not None else None for e in reconnects]
    assert len(reconnects) >= 2, f"the server never cut the slow consumer off ({len(seqs)} events)"
    assert all(c == grpc.StatusCode.RESOURCE_EXHAUSTED for c in codes), codes
    assert not gaps, gaps
    assert seqs == list(range(seqs[0], seqs[0] + len(seqs))), "gap or duplicate across reconnects"
    print(f"{len(seqs)} contiguous events across {len(reconnects)} server-side disconnects")


def test_snapshot_token_and_tls(tf, bins, tmp_path):
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
         "-subj", "/CN=localhost", "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1",
         "-addext", "basicConstraints=critical,CA:FALSE", "-keyout", key, "-out", cert],
        check=True, capture_output=True,
    )
    run, target = start_run(bins, tmp_path, "--auth-token", "s3cret", "--tls-cert", cert,
                            "--tls-key", key, rate=500)
    try:
        target = target.replace("127.0.0.1", "localhost")
        with pytest.raises(grpc.RpcError) as e:
            next(tf.subscribe(target, root_certificates=cert))
        assert e.value.code() == grpc.StatusCode.UNAUTHENTICATED
        with pytest.raises(grpc.RpcError) as e:
            next(tf.subscribe(target, token="wrong", root_certificates=str(cert)))
        assert e.value.code() == grpc.StatusCode.UNAUTHENTICATED

        events = tf.subscribe(target, symbols=["eurusd"], kinds=["update"], token="s3cret",
                              root_certificates=cert.read_bytes())
        got = [next(events) for _ in range(5)]
        events.close()
        assert all(ev.update.symbol == "EURUSD" and ev.resume_token for ev in got)

        snap = tf.snapshot(target, "eurusd", token="s3cret", root_certificates=cert)
        assert snap.symbol == "EURUSD" and snap.latest.values
        with pytest.raises(grpc.RpcError) as e:
            tf.snapshot(target, "EURUSD", root_certificates=cert)
        assert e.value.code() == grpc.StatusCode.UNAUTHENTICATED
    finally:
        stop(run)
