"""`tools/certs`: a development CA and one certificate per service under var/certs.

Each certificate's URI SAN is the service's SPIFFE id. `operator` is for people (grpcurl),
`warehouse` for scanners. Existing files are kept unless --force; keys are never committed
(.gitignore).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from libs.security.certificates import CertificateAuthority, spiffe_id

REPO = Path(__file__).resolve().parents[3]
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dir", type=Path, default=REPO / "var" / "certs")
    parser.add_argument("--force", action="store_true", help="a new CA and new certificates")
    args = parser.parse_args()
    written = ensure(args.dir, args.force)
    print(f"certificates in {args.dir}: {', '.join(written) if written else 'all present'}")
    for name in IDENTITIES:
        print(f"  {name:<14} {spiffe_id(name)}")


if __name__ == "__main__":
    main()
