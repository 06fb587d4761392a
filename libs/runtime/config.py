"""Typed settings from the environment (and an optional TOML file), validated at start.

Each service subclasses ServiceSettings with its own env prefix (CATALOG_, ...). A bad or
missing setting stops the process with a message naming the variable, not a traceback.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal, TypeVar

from pydantic import Field, ValidationError
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)


class ConfigError(Exception):
    """Raised with one line per bad setting."""


class ServiceSettings(BaseSettings):
    """What every gRPC service can set. Subclasses set `env_prefix`."""

    model_config = SettingsConfigDict(extra="ignore", frozen=True)

    host: str = "127.0.0.1"
    port: int = Field(default=0, ge=0, le=65535, description="0 picks a free port")
    grace_seconds: float = Field(
        default=10.0, gt=0, description="shutdown grace for in-flight RPCs"
    )
    max_message_bytes: int = Field(default=4 * 1024 * 1024, ge=1024)
    keepalive_time_seconds: float = Field(default=30.0, gt=0)
    keepalive_timeout_seconds: float = Field(default=10.0, gt=0)
    max_concurrent_streams: int = Field(default=1000, ge=1)
    health_check_interval_seconds: float = Field(default=2.0, gt=0)
    health_check_timeout_seconds: float = Field(default=1.0, gt=0)
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    trace_exporter: Literal["none", "console"] = "none"
    reflection: bool = True
    # Secure unless said otherwise: TLS off (mesh, insecure) is always an explicit setting,
    # <SERVICE>_SECURITY or fleet-wide EMPORIUM_SECURITY.
    security: Literal["mtls", "mesh", "insecure"] = Field(
        default_factory=lambda: os.environ.get("EMPORIUM_SECURITY", "mtls"),
        validate_default=True,
        description="mtls: TLS with client certificates and SPIFFE ids (local mode); mesh: the "
        "Linkerd/Istio sidecar does mTLS and names the caller; insecure: tests and tools only",
    )
    certs_dir: Path = Field(default=Path("var/certs"), description="tools/certs output (mtls)")
    # Where identity is, so the service verifies callers' tokens itself (libs.security.
    # authentication); unset, only the SPIFFE policy applies.
    identity_target: str | None = Field(
        default_factory=lambda: os.environ.get("EMPORIUM_IDENTITY_TARGET") or None,
        description="host:port or dns:///... of identity, for token verification",
    )
    token_issuer: str = Field(
        default_factory=lambda: os.environ.get(
            "EMPORIUM_TOKEN_ISSUER", "https://identity.emporium.local"
        ),
        description="tokens' iss",
    )
    jwks_refetch_seconds: float = Field(
        default=30.0, gt=0, description="at most one JWKS fetch per interval on an unknown kid"
    )
    token_audience: str = Field(
        default_factory=lambda: os.environ.get("EMPORIUM_TOKEN_AUDIENCE", "emporium"),
        description="tokens' aud",
    )
    workers: int = Field(
        default=1, ge=1, le=64, description="processes serving one port (SO_REUSEPORT)"
    )
    # Prometheus scrapes it; unset serves no endpoint (OTLP export, when configured, still runs).
    # EMPORIUM_METRICS_PORT sets it fleet-wide (the manifests' monitoring component does).
    metrics_port: int | None = Field(
        default_factory=lambda: os.environ.get("EMPORIUM_METRICS_PORT") or None,
        validate_default=True,
        ge=0,
        le=65535,
        description="/metrics HTTP port; 0 picks a free one",
    )

    # Overload protection (libs.runtime.overload): shed with RESOURCE_EXHAUSTED and a retry
    # pushback rather than queue calls until their deadlines pass.
    overload_protection: bool = True
    max_in_flight: int = Field(
        default=512, ge=1, description="unary calls in flight beyond which every call is shed"
    )
    min_in_flight: int = Field(
        default=64,
        ge=1,
        description="unary calls in flight the adaptive limit always admits (a burst on a cold "
        "or noisy window is not shed)",
    )
    overload_cpu_threshold: float = Field(
        default=0.8,
        gt=0,
        description="process CPU use (1.0 = one core) from which calls beyond the adaptive "
        "limit (max rate x min latency) are shed",
    )
    overload_window_seconds: float = Field(
        default=5.0, gt=0, description="how far back the adaptive limit's rate and latency go"
    )
    overload_budget_factor: float = Field(
        default=2.0,
        ge=0,
        description="a unary call whose remaining deadline is less than this many times the "
        "latency a call started now can expect (the lesser of finished calls' moving average "
        "and the calls in flight over the recent completion rate) is shed before it starts "
        "(0 turns this off)",
    )
    overload_queue_target_ms: float = Field(
        default=20.0,
        ge=0,
        description="event-loop delay (how late a timer runs, less the loop thread's wait for "
        "a CPU) that, held for "
        "overload_queue_interval_ms, means a standing queue: arrivals are shed while it lasts "
        "(0 turns this off)",
    )
    overload_queue_interval_ms: float = Field(
        default=100.0, gt=0, description="how long the loop's delay must stay above its target"
    )
    retry_pushback_ms: int = Field(
        default=250, ge=0, description="grpc-retry-pushback-ms sent with a shed call"
    )

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings]
        config_file = os.environ.get(f"{cls._prefix()}CONFIG_FILE")
        if config_file:
            sources.append(TomlConfigSettingsSource(settings_cls, toml_file=Path(config_file)))
        return tuple(sources)

    @classmethod
    def _prefix(cls) -> str:
        return str(cls.model_config.get("env_prefix", ""))


S = TypeVar("S", bound=ServiceSettings)


def load_settings(cls: type[S]) -> S:
    """Reads `cls` from the environment; raises ConfigError naming each bad variable."""
    prefix = cls._prefix()
    config_file = os.environ.get(f"{prefix}CONFIG_FILE")
    if config_file and not Path(config_file).is_file():
        raise ConfigError(f"{prefix}CONFIG_FILE: no such file: {config_file}")
    try:
        return cls()
    except ValidationError as error:
        lines = []
        for problem in error.errors():
            name = prefix + "_".join(str(part) for part in problem["loc"]).upper()
            lines.append(f"{name}: {problem['msg']} (got {problem.get('input')!r})")
        raise ConfigError("invalid configuration:\n  " + "\n  ".join(lines)) from None
