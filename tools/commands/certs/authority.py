"""The development CA and one certificate per identity (its SPIFFE id as URI SAN): what
`tools/certs` writes under var/certs, and tests under their own directory."""

from __future__ import annotations

from pathlib import Path

from libs.security.certificates import CertificateAuthority

IDENTITIES = (
    "catalog",
    "inventory",
    "orders",
    "payments",
    "notifications",
    "identity",
    "gateway",
    "operator",
    "warehouse",
)


def ensure(directory: Path, force: bool = False) -> list[str]:
    """Creates what is missing; returns the names written."""
    directory.mkdir(parents=True, exist_ok=True)
    ca_cert, ca_key = directory / "ca.pem", directory / "ca-key.pem"
    written: list[str] = []
    if force or not (ca_cert.exists() and ca_key.exists()):
        authority = CertificateAuthority.create()
        ca_cert.write_bytes(authority.certificate_pem)
        ca_key.write_bytes(authority.key_pem)
        ca_key.chmod(0o600)
        written.append("ca")
        force = True  # a new CA invalidates every certificate
    else:
        authority = CertificateAuthority.load(ca_cert.read_bytes(), ca_key.read_bytes())
    for name in IDENTITIES:
        cert, key = directory / f"{name}.pem", directory / f"{name}-key.pem"
        if force or not (cert.exists() and key.exists()):
            issued = authority.issue(name)
            cert.write_bytes(issued.certificate_pem)
            key.write_bytes(issued.key_pem)
            key.chmod(0o600)
            written.append(name)
    return written
