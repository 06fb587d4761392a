"""Which grpcio to pin: the same grpc.aio unary echo server under each grpcio release, driven by
the same client (the project's pinned grpcio), in one run. Each release is installed into its
own virtualenv under build/bench-venvs (from PyPI, once).

    tools/bench grpcio_versions [--versions 1.75.1 1.85.1] [--seconds 10]
"""

from __future__ import annotations

import argparse
import asyncio
import platform
import subprocess
import sys
import time
from pathlib import Path

import grpc

from bench.load import Result, closed_loop, ratio_line
from libs.runtime.processes import start_service

REPO = Path(__file__).resolve().parents[1]


def venv_for(version: str) -> Path:
    venv = REPO / "build" / "bench-venvs" / f"grpcio-{version}"
    python = venv / "bin" / "python3"
    if not python.exists():
        print(f"installing grpcio=={version} into {venv} ...", flush=True)
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
        subprocess.run(
            [
                str(python),
                "-m",
                "pip",
                "install",
                "--quiet",
                "--disable-pip-version-check",
                f"grpcio=={version}",
            ],
            check=True,
            stderr=subprocess.DEVNULL,
        )
    return python


async def measure(version: str, args: argparse.Namespace) -> Result:
    python = venv_for(version)
    server = await start_service(
        "echo_server", {"PYTHONPATH": str(REPO / "bench")}, python=str(python)
    )
    try:
        async with grpc.aio.insecure_channel(server.address) as channel:
            echo = channel.unary_unary(
                "/bench.Echo/Echo", request_serializer=None, response_deserializer=None
            )
            payload = b"x" * 64
            return await closed_loop(
                f"grpcio {version} server",
                lambda: echo(payload),
                concurrency=args.concurrency,
                seconds=args.seconds,
            )
    finally:
        await server.terminate()


async def run(args: argparse.Namespace) -> None:
    results = [await measure(version, args) for version in args.versions]
    print(
        f"\n{platform.node()} · {platform.machine()} · {time.strftime('%Y-%m-%d')} · "
        f"client grpcio {grpc.__version__} · concurrency {args.concurrency} · {args.seconds}s"
    )
    for result in results:
        print(result.line())
    for result in results[1:]:
        print(ratio_line(f"{result.label} / {results[0].label}", result.rate, results[0].rate))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--versions", nargs="+", default=["1.75.1", "1.85.1"])
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--concurrency", type=int, default=16)
    asyncio.run(run(parser.parse_args()))


if __name__ == "__main__":
    main()
