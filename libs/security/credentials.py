"""TLS credentials from the files tools/certs writes (var/certs/<service>.pem, -key.pem, ca.pem)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import grpc


@dataclass(frozen=True)
class CertificateFiles:
    ca: Path
    certificate: Path
    key: Path

    @classmethod
    def for_service(cls, directory: Path, service: str) -> CertificateFiles:
        return cls(
            directory / "ca.pem", directory / f"{service}.pem", directory / f"{service}-key.pem"
        )

    def missing(self) -> list[Path]:
        return [path for path in (self.ca, self.certificate, self.key) if not path.is_file()]

    def server_credentials(self) -> grpc.ServerCredentials:
        return grpc.ssl_server_credentials(
            [(self.key.read_bytes(), self.certificate.read_bytes())],
            root_certificates=self.ca.read_bytes(),
            require_client_auth=True,
        )

    def channel_credentials(self) -> grpc.ChannelCredentials:
        return grpc.ssl_channel_credentials(
            self.ca.read_bytes(), self.key.read_bytes(), self.certificate.read_bytes()
        )
