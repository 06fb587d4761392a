"""The channels a service opens to the others, from its settings: where they are (the local
registry the launcher writes, or Kubernetes DNS) and, under mTLS, the service's own certificate.
Here rather than in the client kit because the certificate is security's (libs.security already
builds on libs.rpcclient; the reverse would be a cycle)."""

from __future__ import annotations

from pathlib import Path
from typing import Protocol

from libs.rpcclient.channels import ChannelFactory
from libs.rpcclient.discovery import KubernetesDns, LocalRegistry, Resolver
from libs.security.credentials import CertificateFiles


class ClientSettings(Protocol):
    """The settings a service that calls others declares (read-only, so Literal fields fit)."""

    @property
    def discovery(self) -> str: ...

    @property
    def registry_file(self) -> Path: ...

    @property
    def kubernetes_namespace(self) -> str: ...

    @property
    def security(self) -> str: ...

    @property
    def certs_dir(self) -> Path: ...


def resolver_of(settings: ClientSettings) -> Resolver:
    if settings.discovery == "local":
        return LocalRegistry(settings.registry_file)
    return KubernetesDns(settings.kubernetes_namespace)


def service_channels(settings: ClientSettings, service: str) -> ChannelFactory:
    """Channels for `service`'s calls to the others (with its client certificate under mtls)."""
    credentials = (
        CertificateFiles.for_service(settings.certs_dir, service).channel_credentials()
        if settings.security == "mtls"
        else None
    )
    return ChannelFactory(resolver_of(settings), credentials=credentials)
