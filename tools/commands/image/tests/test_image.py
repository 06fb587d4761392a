"""The service image, built by tools/image's code (docker, podman or buildah), run the way the
dev overlay's manifests run each service: read-only root, uid/gid 10001 with fsGroup 10001, no
capabilities, Secrets as files with the manifest's modes, emptyDirs where it says, its env as
kubelet expands it (the AMQP URL from the RabbitMQ operator's Secret). Each service must
answer SERVING on gRPC health (200 on /healthz for the gateway) and exit 0 on SIGTERM.

What differs from a cluster, and only that: addresses (ports 0 on loopback instead of cluster
DNS) and the database, broker vhost and Redis of the test servers. Slow (the first build makes
the Debian base); tagged `image`: tools/test runs it on its own.
"""

from __future__ import annotations

import asyncio
import os
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import grpc
import httpx
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from libs.runtime.processes import start_service
from tools.commands.image.build import IMAGE_PYTHON, Built, build_image, find_engine
from tools.commands.image.pod import kubelet_env, launcher, mountpoints, secret_data, volumes
from tools.mesh import overlays

pytestmark = pytest.mark.image
OVERLAY = "dev/linkerd"
NAMESPACE = "emporium"
SERVICES = ["identity", "catalog", "inventory", "orders", "payments", "notifications", "gateway"]
RABBITMQ_SECRET = "emporium-rabbitmq-default-user"
Document = dict[str, Any]


@pytest.fixture(scope="module")
def built() -> Built:
    if os.geteuid() != 0:
        pytest.fail("the image test needs root (buildah, unshare, mount, chroot)")
    engine = find_engine(os.environ.get("EMPORIUM_IMAGE_ENGINE") or None)
    given = os.environ.get("EMPORIUM_IMAGE")  # an image built before (e.g. by tools/image)
    if given:
        return Built(given, engine, 0.0, engine.size(given))
    return build_image(engine, "test", lambda message: print(message, flush=True))


@pytest.fixture(scope="module")
def manifests(tmp_path_factory: pytest.TempPathFactory) -> list[Document]:
    return overlays.render(overlays.prepare(tmp_path_factory.mktemp("deploy")), OVERLAY)


def _deployment(manifests: list[Document], name: str) -> Document:
    (found,) = (d for d in manifests if d["kind"] == "Deployment" and d["metadata"]["name"] == name)
    return found


@pytest.fixture(scope="module")
def rootfs(
    built: Built, manifests: list[Document], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Path]:
    with built.engine.rootfs(built.reference, tmp_path_factory.mktemp("rootfs")) as root:
        for name in SERVICES:
            mountpoints(
                root, _deployment(manifests, name)["spec"]["template"]["spec"]["containers"][0]
            )
        yield root


def _container_script(
    name: str,
    built: Built,
    root: Path,
    manifests: list[Document],
    scratch: Path,
    operator_secret: dict[str, str],
    local: dict[str, str],
) -> tuple[Path, dict[str, str]]:
    """The launcher of `name`'s container, and its environment as kubelet made it (before the
    `local` overrides)."""
    pod = _deployment(manifests, name)["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert container["args"] == ["python", "-m", f"services.{name}"]
    secrets = {**secret_data(manifests), RABBITMQ_SECRET: operator_secret}
    env = kubelet_env(container, secrets, NAMESPACE)
    mounts = volumes(pod, container, secrets, scratch)
    config = built.engine.config(built.reference)
    # Only what the manifest sets is replaced (and Redis keys kept apart from other tests').
    applied = {k: v for k, v in local.items() if k in env or k == "GATEWAY_REDIS_KEY_PREFIX"}
    script = launcher(root, config, pod, container, {**env, **applied}, mounts, scratch / "run")
    return script, env


def _operator_secret(amqp_url: str) -> dict[str, str]:
    """What the RabbitMQ operator's default-user Secret holds, for the test broker."""
    url = urlsplit(amqp_url)
    return {
        "username": url.username or "",
        "password": url.password or "",
        "host": url.hostname or "",
    }


def _local(
    name: str, postgres_url: str, amqp_url: str, redis_url: str, prefix: str
) -> dict[str, str]:
    prefix_env = name.upper()
    local = {
        f"{prefix_env}_HOST": "127.0.0.1",
        f"{prefix_env}_PORT": "0",
        "EMPORIUM_AMQP_URL": amqp_url,
    }
    if name != "gateway":
        local[f"{prefix_env}_DATABASE_URL"] = postgres_url
    else:
        local |= {"GATEWAY_REDIS_URL": redis_url, "GATEWAY_REDIS_KEY_PREFIX": prefix}
    return local


async def _healthy(name: str, port: int) -> None:
    if name == "gateway":
        async with httpx.AsyncClient() as client:
            response = await client.get(f"http://127.0.0.1:{port}/healthz")
        assert response.status_code == 200, response.text
        return
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        reply = await health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(), timeout=10
        )
    assert reply.status == health_pb2.HealthCheckResponse.SERVING


@pytest.mark.parametrize("name", SERVICES)
async def test_service_runs_as_its_manifest_says(
    name: str,
    built: Built,
    rootfs: Path,
    manifests: list[Document],
    postgres_url: str,
    amqp_url: str,
    redis_url: str,
    redis_key_prefix: str,
    tmp_path: Path,
) -> None:
    local = _local(name, postgres_url, amqp_url, redis_url, redis_key_prefix)
    script, env = _container_script(
        name, built, rootfs, manifests, tmp_path, _operator_secret(amqp_url), local
    )
    if "EMPORIUM_AMQP_URL" in env:
        # Assembled from the operator's Secret by $(VAR) expansion; the test's vhost replaces
        # the default one in `local`.
        url = urlsplit(amqp_url)
        expected = f"amqp://{url.username}:{url.password}@{url.hostname}:5672/"
        assert env["EMPORIUM_AMQP_URL"] == expected
    service = await start_service(f"services.{name}", {}, python=str(script), within=60)
    try:
        await _healthy(name, service.port)
        code = await asyncio.wait_for(service.terminate(), 30)
        if name == "gateway":
            # uvicorn re-raises the signal once its graceful shutdown is done (kubelet sees 143).
            await service.wait_for_log("Application shutdown complete.", within=10)
            assert code == -signal.SIGTERM
        else:
            assert code == 0
        if name == "payments":
            # The simulator's ledger went to the emptyDir, written as the pod's user.
            ledger = tmp_path / "provider-ledger" / "provider.sqlite3"
            assert ledger.stat().st_uid == 10001
    finally:
        await service.kill()


async def test_the_runner_enforces_the_manifest(
    built: Built, rootfs: Path, manifests: list[Document], tmp_path: Path
) -> None:
    """The harness itself: identity's container runs as 10001:10001 with group 10001, cannot
    write its root or its Secret volumes, and reads its keys (0440, group 10001)."""
    script, _ = _container_script("identity", built, rootfs, manifests, tmp_path, {}, {})
    probe = (
        "import os, pathlib, platform\n"
        "print(platform.python_version())\n"
        "print(os.getuid(), os.getgid(), sorted(os.getgroups()))\n"
        "keys = sorted(pathlib.Path('/var/run/identity/keys').glob('*.pem'))\n"
        "print(len(keys), oct(keys[0].stat().st_mode & 0o777), keys[0].read_text()[:10])\n"
        "for path in ('/app/x', '/var/run/identity/keys/x', '/tmp/x'):\n"
        "    try:\n"
        "        open(path, 'w')\n"
        "    except OSError as error:\n"
        "        print(path, error.strerror)\n"
    )
    process = await asyncio.create_subprocess_exec(
        str(script), "-c", probe, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    out, err = await process.communicate()
    assert process.returncode == 0, err.decode()
    version, user, key, *writes = out.decode().splitlines()
    assert version == IMAGE_PYTHON  # what requirements-runtime.lock is checked against
    assert user == "10001 10001 [10001]"
    assert key.startswith("1 0o440 -----BEGIN")
    assert writes == [
        "/app/x Read-only file system",
        "/var/run/identity/keys/x Read-only file system",
        "/tmp/x Read-only file system",
    ]
