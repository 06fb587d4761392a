"""The one place that makes channels: keepalive, message size limits, round-robin balancing
and (with credentials) TLS."""

from __future__ import annotations

import json
from dataclasses import dataclass

import grpc

from libs.rpcclient.discovery import Resolver


@dataclass(frozen=True)
class ChannelSettings:
    max_message_bytes: int = 4 * 1024 * 1024
    keepalive_time_seconds: float = 30.0
    keepalive_timeout_seconds: float = 10.0


class ChannelFactory:
    def __init__(
        self,
        resolver: Resolver,
        settings: ChannelSettings | None = None,
        credentials: grpc.ChannelCredentials | None = None,
    ) -> None:
        self._resolver = resolver
        self._settings = settings or ChannelSettings()
        self._credentials = credentials

    def channel(self, service: str) -> grpc.aio.Channel:
        target = self._resolver.target(service)
        s = self._settings
        options: list[tuple[str, str | int]] = [
            ("grpc.max_receive_message_length", s.max_message_bytes),
            ("grpc.max_send_message_length", s.max_message_bytes),
            ("grpc.keepalive_time_ms", int(s.keepalive_time_seconds * 1000)),
            ("grpc.keepalive_timeout_ms", int(s.keepalive_timeout_seconds * 1000)),
            # No retryPolicy here: retries are libs.rpcclient's (budget, breaker, idempotency);
            # gRPC keeps only its transparent retries of requests that never left the client.
            ("grpc.service_config", json.dumps({"loadBalancingConfig": [{"round_robin": {}}]})),
        ]
        if self._credentials is None:
            return grpc.aio.insecure_channel(target, options=options)
        return grpc.aio.secure_channel(target, self._credentials, options=options)
