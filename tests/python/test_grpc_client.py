"""A client generated from proto/ by Python's grpcio-tools subscribes to `tickflow run` and
receives exactly the events the Rust `tickflow subscribe` client receives."""

import re
import subprocess
import threading

import grpc

from conftest import free_port, wait_port


def test_python_client_receives_the_same_events_as_the_rust_client(bins, pb, tmp_path):
    port = free_port()
    run = subprocess.Popen(
        [bins("tickflow"), "run", "--max-ticks", "6000", "--rate", "2000", "--store",
         f"sqlite:{tmp_path / 't.db'}", "--grpc-addr", f"127.0.0.1:{port}", "--status-interval", "1h"],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
    )
    try:
        wait_port(port, proc=run)
        rust = subprocess.Popen(
            [bins("tickflow"), "subscribe", "--symbols", "EURUSD", "--kinds", "update",
             "--addr", f"http://127.0.0.1:{port}"],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )
        py_events = []

        def consume():
            with grpc.insecure_channel(f"127.0.0.1:{port}") as ch:
                stub = pb.signal_service_pb2_grpc.SignalServiceStub(ch)
                req = pb.signal_service_pb2.SubscribeRequest(
                    symbols=["EURUSD"], kinds=[pb.signal_service_pb2.EVENT_KIND_UPDATE])
                for ev in stub.Subscribe(req):
                    py_events.append(ev)

        t = threading.Thread(target=consume)
        t.start()
        summary, _ = run.communicate(timeout=60)
        t.join(timeout=30)
        rust_out, rust_err = rust.communicate(timeout=30)
    finally:
        run.kill()
    assert run.returncode == 0
    assert "ticks in        6000" in summary
    assert rust.returncode == 0, rust_err

    py = {}
    for ev in py_events:
        assert ev.WhichOneof("kind") == "update"
        assert ev.update.symbol == "EURUSD"
        assert ev.update.ts_recv_ns > 0
        py[ev.seq] = f"{ev.update.price:.6f}"
    rs = {}
    for line in rust_out.splitlines():
        m = re.match(r"#(\d+)\s+update EURUSD tick mid=(\S+) ", line)
        assert m, line
        rs[int(m.group(1))] = m.group(2)
    assert len(py) > 200 and len(rs) > 200, (len(py), len(rs))
    # Both joined at slightly different moments; over the span both were connected, they must
    # have received exactly the same events.
    lo, hi = max(min(py), min(rs)), min(max(py), max(rs))
    common_py = {k: v for k, v in py.items() if lo <= k <= hi}
    common_rs = {k: v for k, v in rs.items() if lo <= k <= hi}
    assert common_py == common_rs
    assert len(common_py) > 200
