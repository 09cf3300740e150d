"""The published grpcio-reflection client (which speaks reflection v1alpha, as older grpcurl and
GUI clients do) lists the services of a running `tickflow run`, the health service included, and
resolves the schema through them."""

import subprocess

import grpc
from google.protobuf.descriptor_pool import DescriptorPool
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import (
    ProtoReflectionDescriptorDatabase,
)

from conftest import free_port, wait_port


def test_the_grpcio_reflection_client_lists_every_service(bins, tmp_path):
    port = free_port()
    run = subprocess.Popen(
        [bins("tickflow"), "run", "--rate", "100", "--duration", "60s", "--store",
         f"sqlite:{tmp_path / 't.db'}", "--grpc-addr", f"127.0.0.1:{port}",
         "--status-interval", "1h", "--auth-token", "s3cret"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    try:
        wait_port(port, proc=run)
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            db = ProtoReflectionDescriptorDatabase(channel)
            services = set(db.get_services())
            assert {"tickflow.v1.SignalService", "grpc.health.v1.Health"} <= services, services
            pool = DescriptorPool(db)
            methods = {m.name for m in pool.FindServiceByName("tickflow.v1.SignalService").methods}
            assert {"Subscribe", "GetSnapshot"} <= methods, methods
            health = pool.FindServiceByName("grpc.health.v1.Health")
            assert "Check" in {m.name for m in health.methods}
    finally:
        run.kill()
        run.wait()
