"""GrpcApp's middleware chain and settings, with a small servicer of the standard health API."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc_health.v1.health_pb2 import HealthCheckRequest as Request
from grpc_health.v1.health_pb2 import HealthCheckResponse as Response
from grpc_reflection.v1alpha import reflection_pb2
from pydantic_settings import SettingsConfigDict

from libs.runtime.config import ConfigError, ServiceSettings, load_settings
from libs.runtime.errors import DomainError, ErrorKind, FieldViolation
from libs.server.grpc_app import GrpcApp
from libs.testing.rpc import rich_error, serving


class Probe:
    """A test service (test.Probe) on the health messages; Check fails as `service` names."""

    def __init__(self) -> None:
        self.feed_closed = asyncio.Event()

    async def Check(
        self, request: Request, context: grpc.aio.ServicerContext[object, object]
    ) -> Response:
        if request.service == "domain":
            raise DomainError(
                ErrorKind.FAILED_PRECONDITION,
                "NOT_READY",
                "not ready",
                {"stage": "warmup"},
                [FieldViolation("service", "too early")],
            )
        if request.service == "dependency":
            raise ConnectionResetError("peer went away")
        if request.service == "bug":
            raise KeyError("secret-internal-detail")
        return Response(status=Response.SERVING)

    async def Watch(
        self, request: Request, context: grpc.aio.ServicerContext[object, object]
    ) -> AsyncIterator[Response]:
        yield Response(status=Response.SERVING)
        raise DomainError(ErrorKind.ABORTED, "STREAM_BROKE", "stream broke")

    async def Feed(
        self, request: Request, context: grpc.aio.ServicerContext[object, object]
    ) -> AsyncIterator[Response]:
        """Streams until the client leaves."""
        try:
            while True:
                yield Response(status=Response.SERVING)
        finally:
            self.feed_closed.set()


def translate_connection_errors(error: Exception) -> DomainError | None:
    if isinstance(error, ConnectionError):
        return DomainError(ErrorKind.UNAVAILABLE, "DEPENDENCY_DOWN", "dependency down")
    return None


def add_probe_to_server(servicer: Probe, server: grpc.aio.Server) -> None:
    """What a generated add_*_to_server function does, for a service with no .proto."""
    codec: dict[str, Any] = {
        "request_deserializer": Request.FromString,
        "response_serializer": Response.SerializeToString,
    }
    server.add_registered_method_handlers(  # type: ignore[attr-defined]
        "test.Probe",
        {
            "Check": grpc.unary_unary_rpc_method_handler(servicer.Check, **codec),
            "Watch": grpc.unary_stream_rpc_method_handler(servicer.Watch, **codec),
            "Feed": grpc.unary_stream_rpc_method_handler(servicer.Feed, **codec),
        },
    )


class ProbeStub:
    def __init__(self, channel: grpc.aio.Channel, probe: Probe) -> None:
        self.probe = probe
        codec: dict[str, Any] = {
            "request_serializer": Request.SerializeToString,
            "response_deserializer": Response.FromString,
        }
        self.Check = channel.unary_unary("/test.Probe/Check", **codec)
        self.Watch = channel.unary_stream("/test.Probe/Watch", **codec)
        self.Feed = channel.unary_stream("/test.Probe/Feed", **codec)


@pytest.fixture
async def stub() -> AsyncIterator[ProbeStub]:
    app = GrpcApp(
        "test",
        ServiceSettings(reflection=False),
        domain="test.emporium.dev",
        translators=[translate_connection_errors],
    )
    probe = Probe()
    app.add_servicer(add_probe_to_server, probe)
    async with serving(app) as channel:
        yield ProbeStub(channel, probe)


async def check(stub: ProbeStub, service: str) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.Check(Request(service=service))
    return caught.value


async def test_domain_error_becomes_rich_status(stub: ProbeStub) -> None:
    error = rich_error(await check(stub, "domain"))
    assert error.code is grpc.StatusCode.FAILED_PRECONDITION
    assert error.info is not None
    assert (error.info.reason, error.info.domain) == ("NOT_READY", "test.emporium.dev")
    assert dict(error.info.metadata) == {"stage": "warmup"}
    assert error.fields == ["service"]


async def test_translated_dependency_failure_is_unavailable(stub: ProbeStub) -> None:
    error = rich_error(await check(stub, "dependency"))
    assert error.code is grpc.StatusCode.UNAVAILABLE
    assert error.info is not None and error.info.reason == "DEPENDENCY_DOWN"


async def test_bug_is_internal_without_leaking_details(stub: ProbeStub) -> None:
    error = rich_error(await check(stub, "bug"))
    assert error.code is grpc.StatusCode.INTERNAL
    assert "secret-internal-detail" not in error.message
    ok = await stub.Check(Request(service="fine"))
    assert ok.status == Response.SERVING


async def test_streaming_error_after_messages_keeps_its_status(
    stub: ProbeStub,
) -> None:
    call = stub.Watch(Request())
    first: Any = await call.read()
    assert first.status == Response.SERVING
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call.read()
    error = rich_error(caught.value)
    assert error.code is grpc.StatusCode.ABORTED
    assert error.info is not None and error.info.reason == "STREAM_BROKE"


async def test_a_client_leaving_a_stream_early_closes_it_quietly(
    stub: ProbeStub, caplog: pytest.LogCaptureFixture
) -> None:
    call = stub.Feed(Request())
    for _ in range(2):  # `grpcurl ... | head -2`
        await call.read()
    call.cancel()
    # The handler's generators close in the RPC's own task (not later, in the event loop's
    # finalizer), so the span's context is restored where it was set: no "Failed to detach".
    await asyncio.wait_for(stub.probe.feed_closed.wait(), 10)
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert errors == [], [r.getMessage() for r in errors]


class Settings(ServiceSettings):
    model_config = SettingsConfigDict(env_prefix="TESTSVC_", frozen=True)


def test_settings_errors_name_each_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TESTSVC_PORT", "70000")
    monkeypatch.setenv("TESTSVC_LOG_LEVEL", "LOUD")
    with pytest.raises(ConfigError) as caught:
        load_settings(Settings)
    assert "TESTSVC_PORT" in str(caught.value)
    assert "TESTSVC_LOG_LEVEL" in str(caught.value)


def test_settings_from_a_toml_file_with_env_winning(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    config = tmp_path / "service.toml"
    config.write_text("port = 6000\ngrace_seconds = 3.5\n")
    monkeypatch.setenv("TESTSVC_CONFIG_FILE", str(config))
    monkeypatch.setenv("TESTSVC_PORT", "7000")
    settings = load_settings(Settings)
    assert settings.port == 7000
    assert settings.grace_seconds == 3.5


def test_missing_config_file_is_named(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("TESTSVC_CONFIG_FILE", str(tmp_path / "absent.toml"))
    with pytest.raises(ConfigError, match="TESTSVC_CONFIG_FILE"):
        load_settings(Settings)


@pytest.mark.parametrize("version", ["v1", "v1alpha"])
async def test_reflection_answers_under_v1_and_v1alpha(version: str) -> None:
    app = GrpcApp("test", ServiceSettings(), domain="test.emporium.dev")
    app.add_servicer(add_probe_to_server, Probe())
    async with serving(app) as channel:
        info = channel.stream_stream(
            f"/grpc.reflection.{version}.ServerReflection/ServerReflectionInfo",
            request_serializer=reflection_pb2.ServerReflectionRequest.SerializeToString,
            response_deserializer=reflection_pb2.ServerReflectionResponse.FromString,
        )
        call = info(None)
        await call.write(reflection_pb2.ServerReflectionRequest(list_services=""))
        listed: Any = await call.read()
        await call.write(
            reflection_pb2.ServerReflectionRequest(
                file_containing_symbol="grpc.reflection.v1.ServerReflection"
            )
        )
        described: Any = await call.read()
        await call.done_writing()
    names = {service.name for service in listed.list_services_response.service}
    assert {"test.Probe", "grpc.reflection.v1.ServerReflection"} <= names
    assert "grpc.reflection.v1alpha.ServerReflection" in names
    assert described.WhichOneof("message_response") == "file_descriptor_response"
