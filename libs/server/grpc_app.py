"""GrpcApp: what turns a servicer into a production gRPC server.

It owns the grpc.aio server, the middleware chain, health (real status from dependency checks),
reflection, and the lifecycle: start, then on SIGTERM/SIGINT health turns NOT_SERVING, streams are
told to end, in-flight RPCs get `grace_seconds` to finish, new RPCs get UNAVAILABLE, and the
process exits.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket
import subprocess
import sys
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, TypeVar

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from libs.runtime import event_loop
from libs.runtime.config import ConfigError, ServiceSettings, load_settings
from libs.runtime.deadline import DeadlineScope
from libs.runtime.error_handling import ErrorTranslation, ExceptionTranslator
from libs.runtime.middleware import Behavior, Context, MethodInfo, Middleware, register
from libs.runtime.overload import AdaptiveLimit, OverloadProtection
from libs.runtime.reflection import enable_reflection
from libs.runtime.stacks import print_stacks_on_sigusr1
from libs.runtime.validation import RequestValidation
from libs.security.authentication import TokenAuthentication
from libs.security.credentials import CertificateFiles
from libs.security.identity import TransportSecurity
from libs.security.policy import Authorization, MethodPolicy
from libs.telemetry.logging import configure_logging
from libs.telemetry.metrics import configure_metrics, serve_worker_metrics
from libs.telemetry.tracing import ServerTelemetry, configure_tracing

log = logging.getLogger("emporium.runtime")
# Set by run_service for the worker processes it starts: they bind the port with SO_REUSEPORT.
SHARED_PORT_ENV = "EMPORIUM_SHARED_PORT"

HealthCheck = Callable[[], Awaitable[object]]
Hook = Callable[[], Awaitable[None]]
SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


class ShutdownGate:
    """Middleware: counts in-flight RPCs; once closed, new RPCs get UNAVAILABLE at once.

    The server keeps accepting connections while it drains, so a late caller gets a clean,
    retryable UNAVAILABLE rather than a reset stream.
    """

    def __init__(self) -> None:
        self.closed = False
        self.in_flight = 0
        self._idle = asyncio.Event()
        self._idle.set()

    async def drained(self) -> None:
        await self._idle.wait()

    def _enter(self) -> None:
        self.in_flight += 1
        self._idle.clear()

    def _leave(self) -> None:
        self.in_flight -= 1
        if self.in_flight == 0:
            self._idle.set()

    def wrap(self, method: MethodInfo, behavior: Behavior) -> Behavior:
        gate = self
        if method.response_streaming:

            async def gated_stream(request: Any, context: Context) -> Any:
                if gate.closed:
                    await _refuse(context)
                gate._enter()
                try:
                    async with contextlib.aclosing(behavior(request, context)) as responses:
                        async for response in responses:
                            yield response
                finally:
                    gate._leave()

            return gated_stream

        async def gated(request: Any, context: Context) -> Any:
            if gate.closed:
                await _refuse(context)
            gate._enter()
            try:
                return await behavior(request, context)
            finally:
                gate._leave()

        return gated


async def _refuse(context: Context) -> None:
    await context.abort(grpc.StatusCode.UNAVAILABLE, "the server is shutting down")


def default_chain(
    domain: str,
    translators: Sequence[ExceptionTranslator] = (),
    authorization: Authorization | None = None,
    tokens: TokenAuthentication | None = None,
) -> list[Middleware]:
    """Outermost first: telemetry sees every outcome (denials included); the caller's identity
    is checked before anything else runs; errors become rich statuses; then input validation,
    whose INVALID_ARGUMENT is itself a DomainError."""
    chain: list[Middleware] = [ServerTelemetry(), DeadlineScope()]
    if authorization is not None:
        chain.append(authorization)
    if tokens is not None:
        chain.append(tokens)
    return [*chain, ErrorTranslation(domain, translators), RequestValidation()]


class GrpcApp:
    def __init__(
        self,
        name: str,
        settings: ServiceSettings,
        *,
        domain: str,
        translators: Sequence[ExceptionTranslator] = (),
        policy: MethodPolicy | None = None,
        chain: Sequence[Middleware] | None = None,
        tokens: TokenAuthentication | None = None,
    ) -> None:
        """`tokens` verifies callers' bearer tokens (the service wires one, e.g.
        libs.security.identity_tokens); the app closes it when it stops."""
        self.name = name
        self.settings = settings
        self.security = TransportSecurity(settings.security)
        if self.security is not TransportSecurity.INSECURE and policy is None:
            raise ConfigError(f"{name}: security={settings.security} needs a method policy")
        authorization = Authorization(policy or {}, self.security, domain)
        self._gate = ShutdownGate()
        self._tokens = tokens
        chain = (
            list(chain)
            if chain is not None
            else default_chain(domain, translators, authorization, tokens)
        )
        self.overload: OverloadProtection | None = None
        if settings.overload_protection:
            self.overload = OverloadProtection(
                AdaptiveLimit.of(settings), domain, settings.retry_pushback_ms
            )
        self._chain: list[Middleware] = [
            self._gate,
            *([self.overload] if self.overload is not None else []),
            *chain,
        ]
        self._server = grpc.aio.server(options=self._channel_options())
        self._health = health.aio.HealthServicer()  # type: ignore[attr-defined]
        self._services: list[str] = []
        self._checks: dict[str, HealthCheck] = {}
        self._on_start: list[Hook] = []
        self._on_shutdown: list[Hook] = []
        self._on_stop: list[Hook] = []
        self._monitor: asyncio.Task[None] | None = None
        self._serving: bool | None = None
        self._stopped = asyncio.Event()
        self.port = 0

    def add_servicer(self, add_to_server: Callable[[Any, Any], None], servicer: object) -> None:
        self._services += register(self._server, add_to_server, servicer, self._chain)

    def add_health_check(self, name: str, check: HealthCheck) -> None:
        """`check` raises (or times out) while the dependency is unusable."""
        self._checks[name] = check

    def on_start(self, hook: Hook) -> None:
        """Runs once the server is serving: start consumers and relays here."""
        self._on_start.append(hook)

    def on_shutdown(self, hook: Hook) -> None:
        """Runs when shutdown begins, before the grace period: end long-lived streams here."""
        self._on_shutdown.append(hook)

    def on_stop(self, hook: Hook) -> None:
        """Runs after the server has stopped: release connections here."""
        self._on_stop.append(hook)

    @property
    def address(self) -> str:
        return f"{self.settings.host}:{self.port}"

    async def start(self) -> int:
        health_pb2_grpc.add_HealthServicer_to_server(self._health, self._server)
        if self.settings.reflection:
            enable_reflection([*self._services, health.SERVICE_NAME], self._server)
        address = f"{self.settings.host}:{self.settings.port}"
        if self.security is TransportSecurity.MTLS:
            files = CertificateFiles.for_service(self.settings.certs_dir, self.name)
            if files.missing():
                raise ConfigError(
                    f"security=mtls but {', '.join(map(str, files.missing()))} missing: "
                    "run tools/certs, or point <SERVICE>_CERTS_DIR at the certificates"
                )
            self.port = self._server.add_secure_port(address, files.server_credentials())
        else:
            self.port = self._server.add_insecure_port(address)
        if self.port == 0:
            raise ConfigError(f"cannot bind {self.settings.host}:{self.settings.port}")
        await self._check_health()
        await self._server.start()
        self._monitor = asyncio.create_task(self._monitor_health(), name="health-monitor")
        for hook in self._on_start:
            await hook()
        log.info(
            "serving",
            extra={"address": self.address, "port": self.port, "services": self._services},
        )
        return self.port

    async def stop(self) -> None:
        """Graceful shutdown; returns within grace_seconds plus the stop hooks' time."""
        if self._stopped.is_set():
            return
        self._stopped.set()
        self._gate.closed = True
        log.info("shutting down", extra={"grace_seconds": self.settings.grace_seconds})
        await self._health.enter_graceful_shutdown()
        if self._monitor is not None:
            self._monitor.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._monitor
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.settings.grace_seconds
        for hook in self._on_shutdown:
            await hook()
        try:
            await asyncio.wait_for(self._gate.drained(), max(0.0, deadline - loop.time()))
        except TimeoutError:
            log.warning(
                "grace period over; cancelling RPCs still running",
                extra={"in_flight": self._gate.in_flight},
            )
        await self._server.stop(max(0.0, deadline - loop.time()))
        for hook in self._on_stop:
            await hook()
        if self._tokens is not None:
            await self._tokens.close()
        log.info("stopped")

    async def run_until_signal(self) -> None:
        loop = asyncio.get_running_loop()
        stop_requested = asyncio.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop_requested.set)
        print_stacks_on_sigusr1()
        await self.start()
        await stop_requested.wait()
        await self.stop()

    async def _monitor_health(self) -> None:
        while True:
            await asyncio.sleep(self.settings.health_check_interval_seconds)
            await self._check_health()

    async def _check_health(self) -> None:
        failures = []
        for name, check in self._checks.items():
            try:
                await asyncio.wait_for(check(), self.settings.health_check_timeout_seconds)
            except Exception as error:  # any failure means the dependency is unusable
                failures.append(f"{name}: {type(error).__name__}: {error}".strip())
        serving = not failures
        if serving != self._serving:
            self._serving = serving
            level = logging.INFO if serving else logging.WARNING
            log.log(level, "health changed", extra={"serving": serving, "failures": failures})
        status = SERVING if serving else NOT_SERVING
        for service in ["", *self._services]:
            await self._health.set(service, status)

    def _channel_options(self) -> list[tuple[str, int]]:
        s = self.settings
        return [
            ("grpc.max_receive_message_length", s.max_message_bytes),
            ("grpc.max_send_message_length", s.max_message_bytes),
            ("grpc.keepalive_time_ms", int(s.keepalive_time_seconds * 1000)),
            ("grpc.keepalive_timeout_ms", int(s.keepalive_timeout_seconds * 1000)),
            ("grpc.http2.min_ping_interval_without_data_ms", 5000),
            ("grpc.keepalive_permit_without_calls", 1),
            ("grpc.max_concurrent_streams", s.max_concurrent_streams),
            # Sharing a port is deliberate (workers > 1, see run_service), never an accident.
            ("grpc.so_reuseport", 1 if os.environ.get(SHARED_PORT_ENV) else 0),
        ]


S = TypeVar("S", bound=ServiceSettings)


def run_service(settings_cls: type[S], build: Callable[[S], Awaitable[GrpcApp]]) -> None:
    """Process entry point: settings, logging, tracing, then serve until a signal. With
    <SERVICE>_WORKERS=N > 1, this process supervises N worker processes sharing one port."""
    try:
        settings = load_settings(settings_cls)
    except ConfigError as error:
        print(f"{settings_cls.__name__}: {error}", file=sys.stderr)
        raise SystemExit(2) from None
    service = settings_cls.__name__.removesuffix("Settings").lower()
    configure_logging(service, settings.log_level)
    if settings.workers > 1 and not os.environ.get(SHARED_PORT_ENV):
        raise SystemExit(supervise_workers(settings, settings_cls))
    configure_tracing(service, settings.trace_exporter)
    # A worker serves its metrics on loopback, to its supervisor (which merges them).
    worker = bool(os.environ.get(SHARED_PORT_ENV))
    metrics = configure_metrics(
        service, settings.metrics_port, host="127.0.0.1" if worker else settings.host
    )

    async def main() -> None:
        app = await build(settings)
        await app.run_until_signal()

    try:
        event_loop.run(main())
    except ConfigError as error:
        print(f"{settings_cls.__name__}: {error}", file=sys.stderr)
        raise SystemExit(2) from None
    finally:
        metrics.shutdown()


def supervise_workers(settings: ServiceSettings, settings_cls: type[ServiceSettings]) -> int:
    """Starts `settings.workers` copies of this service on one port (the kernel spreads new
    connections over them), forwards SIGTERM/SIGINT/SIGUSR1, and returns when all have exited.
    With a metrics port, each worker serves its own on loopback and this process serves them
    merged (libs.telemetry.metrics.WorkerMetrics)."""
    prefix = settings_cls._prefix()
    port = settings.port or free_port(settings.host)
    env = {**os.environ, SHARED_PORT_ENV: "1", f"{prefix}PORT": str(port), f"{prefix}WORKERS": "1"}
    metrics_ports = [free_port() for _ in range(settings.workers)]
    if settings.metrics_port is not None:
        serve_worker_metrics(metrics_ports, settings.metrics_port, settings.host)
    workers = [
        subprocess.Popen(
            [sys.executable, *sys.orig_argv[1:]],
            env=env
            if settings.metrics_port is None
            else {**env, f"{prefix}METRICS_PORT": str(metrics_port)},
        )
        for metrics_port in metrics_ports
    ]
    log.info("supervising workers", extra={"port": port, "workers": [w.pid for w in workers]})

    def forward(signum: int, _frame: object) -> None:
        for worker in workers:
            if worker.poll() is None:
                worker.send_signal(signum)

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    signal.signal(signal.SIGUSR1, forward)  # each worker prints where it waits
    codes = [worker.wait() for worker in workers]
    return max(codes, key=abs)


def free_port(host: str = "127.0.0.1") -> int:
    """A port nothing listens on now (for a process that cannot bind port 0 itself)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind((host, 0))
        return int(probe.getsockname()[1])
