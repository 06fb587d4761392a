"""`python -m tools.mesh secrets --env dev|prod`: the deployment's Secrets and local choices in
mesh/local/<env> (git-ignored), a kustomize Component the overlays include.

Made once and kept (a second run creates only what is missing, so passwords and keys stay):
identity's signing key and accounts (tools.identity init), a password per database role and
the database URLs built from them, PostgreSQL's superuser password. Every run rewrites the
Component itself: the image reference (--image) and the Istio trust domain (--trust-domain).
The AMQP URL is not here: the services assemble it from the RabbitMQ operator's Secret.
"""

from __future__ import annotations

import argparse
import os
import secrets
from pathlib import Path
from typing import Any

import yaml

from tools.identity.accounts import init as init_identity

REPO = Path(__file__).resolve().parents[2]
LOCAL = REPO / "mesh" / "local"
IMAGE = "emporium/services"
DATABASE_USERS = ("identity", "catalog", "inventory", "orders", "payments", "notifications")
DEFAULT_IMAGES = {"dev": f"{IMAGE}:dev"}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--env", choices=("dev", "prod"), required=True)
    parser.add_argument(
        "--image",
        help=f"the image to run, REGISTRY/{IMAGE}:TAG (tools/image tags with the commit); "
        f"dev default {DEFAULT_IMAGES['dev']}",
    )
    parser.add_argument(
        "--trust-domain", default="cluster.local", help="Istio's trust domain (meshConfig)"
    )
    parser.add_argument(
        "--database-host",
        default="postgres",
        help="PostgreSQL's host in the URLs (default: the postgres component's Service)",
    )
    parser.add_argument("--local", type=Path, default=LOCAL, help=argparse.SUPPRESS)


def _password(path: Path) -> str:
    """The password in `path`, created (0600) on first use."""
    if path.exists():
        return path.read_text().strip()
    path.parent.mkdir(parents=True, exist_ok=True)
    value = secrets.token_urlsafe(24)  # URL-safe: it goes into database URLs as it is
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(descriptor, "w") as file:
        file.write(value)
    return value


def _write_private(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(descriptor, "w") as file:
        file.write(text)


def _image(reference: str) -> dict[str, str]:
    name, _, tag = reference.rpartition(":")
    if not name or "/" in tag or not tag:
        raise SystemExit(f"--image: {reference!r} is not REGISTRY/NAME:TAG")
    return {"name": IMAGE, "newName": name, "newTag": tag}


def component(directory: Path, image: str, trust_domain: str) -> dict[str, Any]:
    keys = sorted((directory / "identity" / "keys").glob("*.pem"))
    generators: list[dict[str, Any]] = [
        {
            "name": f"{user}-database",
            "files": [f"url=database/{user}.url"],
        }
        for user in DATABASE_USERS
    ]
    generators += [
        {"name": "postgres-admin", "files": ["password=postgres/admin"]},
        {"name": "postgres-roles", "files": [f"{u}=postgres/{u}" for u in DATABASE_USERS]},
        {
            "name": "identity-keys",
            "files": [f"{k.name}=identity/keys/{k.name}" for k in keys],
        },
        {
            "name": "identity-accounts",
            "files": [
                "clients.json=identity/clients.json",
                "users.json=identity/users.json",
            ],
        },
    ]
    return {
        "apiVersion": "kustomize.config.k8s.io/v1alpha1",
        "kind": "Component",
        "secretGenerator": generators,
        "images": [_image(image)],
        "patches": [
            {
                "target": {"kind": "ConfigMap", "name": "mesh-identity"},
                "patch": yaml.safe_dump(
                    [{"op": "replace", "path": "/data/trustDomain", "value": trust_domain}]
                ),
            }
        ],
    }


def write_local(args: argparse.Namespace) -> None:
    directory: Path = args.local / args.env
    image = args.image or DEFAULT_IMAGES.get(args.env)
    if image is None:
        raise SystemExit(f"--image is required for {args.env} (REGISTRY/{IMAGE}:TAG)")
    created = [f"identity: {what}" for what in init_identity(directory / "identity")]
    for user in DATABASE_USERS:
        password_file = directory / "postgres" / user
        existed = password_file.exists()
        password = _password(password_file)
        url = f"postgresql+asyncpg://{user}:{password}@{args.database_host}:5432/{user}"
        _write_private(directory / "database" / f"{user}.url", url)
        if not existed:
            created.append(f"{user} database password")
    if not (directory / "postgres" / "admin").exists():
        _password(directory / "postgres" / "admin")
        created.append("postgres superuser password")
    (directory / "kustomization.yaml").write_text(
        "# Written by `python -m tools.mesh secrets`; never committed (mesh/local is ignored).\n"
        + yaml.safe_dump(component(directory, image, args.trust_domain), sort_keys=False)
    )
    print(f"{directory}: {', '.join(created) if created else 'secrets kept'}; image {image}")
