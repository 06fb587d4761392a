"""A client refused at the TLS handshake (no client certificate) leaves the service's stderr all
JSON: gRPC's C core's plain-text lines are translated (libs.telemetry.native_logs), and each
refused handshake is one WARNING `tls handshake refused` with the reason. The client gets
UNAVAILABLE and no gRPC status of the service's (it never reached one)."""

from __future__ import annotations

import json
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from libs.runtime.processes import start_service
from libs.testing.databases import sqlite_url
from tools.commands.certs.authority import ensure


async def test_a_refused_handshake_is_one_json_line_and_nothing_plain(tmp_path: Path) -> None:
    certs = tmp_path / "certs"
    ensure(certs)
    service = await start_service(
        "services.inventory",
        {
            "INVENTORY_PORT": "0",
            "INVENTORY_SECURITY": "mtls",
            "INVENTORY_CERTS_DIR": str(certs),
            "INVENTORY_DATABASE_URL": sqlite_url(tmp_path),
        },
    )
    try:
        no_certificate = grpc.ssl_channel_credentials((certs / "ca.pem").read_bytes())
        async with grpc.aio.secure_channel(service.address, no_certificate) as channel:
            health = health_pb2_grpc.HealthStub(channel)
            try:
                await health.Check(health_pb2.HealthCheckRequest(), timeout=5)
                refused = None
            except grpc.aio.AioRpcError as error:
                refused = error
        assert refused is not None and refused.code() is grpc.StatusCode.UNAVAILABLE
    finally:
        await service.terminate()
    await service.wait_for_log("stopped")  # its last line: all before it has been read
    raw = [line for line in service.log_lines if "level" not in line]
    assert raw == [], json.dumps(raw)
    refusals = [line for line in service.log_lines if line["message"] == "tls handshake refused"]
    assert refusals, "no line for the refused handshake"
    assert all(
        line["level"] == "WARNING" and "PEER_DID_NOT_RETURN_A_CERTIFICATE" in str(line["reason"])
        for line in refusals
    ), json.dumps(refusals)
