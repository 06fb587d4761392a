"""The Holder service of test_overload.py in a process of its own (`python -m`), as services
run: Freeze blocks its event loop until a byte arrives from HOLDER_THAW_PORT. Logs what it
started and how many calls expired before starting when it stops; with HOLDER_HANG_ON_STOP,
its stop never ends (a hung shutdown, for libs.runtime.processes)."""

from __future__ import annotations

import asyncio
import logging
import os
import socket

from libs.runtime.config import ServiceSettings
from libs.runtime.tests.test_overload import Holder, add_holder
from libs.server.grpc_app import GrpcApp, run_service

log = logging.getLogger("emporium.test")


class HolderSettings(ServiceSettings):
    model_config = ServiceSettings.model_config | {"env_prefix": "HOLDER_"}
    thaw_port: int = 0
    hang_on_stop: bool = False


async def build(settings: HolderSettings) -> GrpcApp:
    app = GrpcApp("holder", settings.model_copy(update={"reflection": False}), domain="test")
    holder = Holder()
    if settings.thaw_port:
        holder.thaw = socket.create_connection(("127.0.0.1", settings.thaw_port))
    app.add_servicer(add_holder, holder)

    async def report() -> None:
        assert app.overload is not None
        extra = {
            "started": holder.started,
            "expired": app.overload.expired,
            "shed": app.overload.shed,
        }
        log.info("holder stopped", extra=extra)

    async def wait_forever_in_stop() -> None:
        await asyncio.Event().wait()

    app.on_stop(report)
    if settings.hang_on_stop:
        app.on_stop(wait_forever_in_stop)
    return app


if __name__ == "__main__":
    os.environ.setdefault("HOLDER_PORT", "0")
    run_service(HolderSettings, build)
