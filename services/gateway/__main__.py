"""`python -m services.gateway`: the HTTP front door (REST/JSON, GraphQL, SSE) on uvicorn."""

from __future__ import annotations

import socket
import sys

import uvicorn

from libs.runtime import event_loop
from libs.runtime.config import ConfigError, load_settings
from libs.runtime.stacks import print_stacks_on_sigusr1
from libs.telemetry.logging import configure_logging
from libs.telemetry.metrics import configure_metrics
from libs.telemetry.tracing import configure_tracing
from services.gateway.app import GatewayServer, build
from services.gateway.config import GatewaySettings


def main() -> None:
    try:
        settings = load_settings(GatewaySettings)
    except ConfigError as error:
        print(f"GatewaySettings: {error}", file=sys.stderr)
        raise SystemExit(2) from None
    if settings.workers > 1:
        print(
            "GatewaySettings: GATEWAY_WORKERS: the gateway runs one process per replica; "
            "run more replicas (they share rate limits and idempotency keys through "
            "GATEWAY_REDIS_URL)",
            file=sys.stderr,
        )
        raise SystemExit(2)
    configure_logging("gateway", settings.log_level)
    configure_tracing("gateway", settings.trace_exporter)
    metrics = configure_metrics("gateway", settings.metrics_port, host=settings.host)
    # Bind first, so port 0 is resolved before the app logs `serving` with the real port.
    # IPPROTO_TCP explicitly: asyncio sets TCP_NODELAY only on sockets that say so, and without
    # it Nagle + delayed ACK cost 40 ms on every keep-alive response.
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind((settings.host, settings.port))
    # Listening before the app logs `serving`: connections queue until uvicorn accepts them.
    listener.listen(2048)
    settings = settings.model_copy(update={"port": listener.getsockname()[1]})

    async def serve() -> None:
        print_stacks_on_sigusr1()
        # Built inside the loop: gRPC's aio channels belong to the loop that creates them.
        gateway = build(settings)
        config = uvicorn.Config(
            gateway.app,
            log_config=None,  # our JSON logs; the access log is the gateway's own
            access_log=False,
            timeout_graceful_shutdown=int(settings.grace_seconds),
            lifespan="on",
        )
        await GatewayServer(config, gateway).serve(sockets=[listener])

    try:
        event_loop.run(serve())
    except ConfigError as error:
        print(f"GatewaySettings: {error}", file=sys.stderr)
        raise SystemExit(2) from None
    finally:
        metrics.shutdown()


if __name__ == "__main__":
    main()
