"""Closed-loop load on loopback: N concurrent callers for a fixed time; throughput and latency."""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass


@dataclass(frozen=True)
class Result:
    label: str
    calls: int
    seconds: float
    latencies_ms: list[float]
    # Percentiles a load tool reported itself (wrk), when there are no raw latencies.
    reported_percentiles: dict[float, float] | None = None

    @property
    def rate(self) -> float:
        return self.calls / self.seconds

    def percentile(self, q: float) -> float:
        if self.reported_percentiles is not None:
            return self.reported_percentiles[q]
        ordered = sorted(self.latencies_ms)
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else 0.0

    def line(self, unit: str = "calls/s") -> str:
        return (
            f"{self.label:<34} {self.rate:>9.0f} {unit}   p50 {self.percentile(0.5):6.2f} ms"
            f"   p99 {self.percentile(0.99):6.2f} ms"
        )


def faster(a: Result, b: Result) -> Result:
    """The better of two rounds of the same measurement."""
    return a if a.rate >= b.rate else b


async def closed_loop(
    label: str,
    call: Callable[[], Awaitable[object]],
    *,
    concurrency: int,
    seconds: float,
    warmup: float = 1.0,
) -> Result:
    """Each of `concurrency` workers calls `call` back to back; the first `warmup` s don't count."""
    latencies: list[float] = []
    start = time.perf_counter()
    measure_from = start + warmup
    stop_at = measure_from + seconds

    async def worker() -> None:
        while (now := time.perf_counter()) < stop_at:
            await call()
            done = time.perf_counter()
            if now >= measure_from:
                latencies.append((done - now) * 1000)

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return Result(label, len(latencies), seconds, latencies)


def ratio_line(name: str, value: float, baseline: float, target: float | None = None) -> str:
    ratio = value / baseline if baseline else 0.0
    verdict = ""
    if target is not None:
        verdict = f"  (target >= {target:.2f}: {'met' if ratio >= target else 'NOT met'})"
    return f"{name:<34} {ratio:6.3f}{verdict}"


_WRK_DURATION = {"us": 0.001, "ms": 1.0, "s": 1000.0}


async def wrk(label: str, url: str, *, concurrency: int, seconds: float) -> Result:
    """HTTP GET load from wrk (one thread): a C client, so the client is not what is measured."""
    process = await asyncio.create_subprocess_exec(
        "wrk",
        "-t1",
        f"-c{concurrency}",
        f"-d{max(1, round(seconds))}s",
        "--latency",
        url,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    output = (await process.communicate())[0].decode()
    if process.returncode != 0 or "Non-2xx" in output:
        raise RuntimeError(f"wrk {url} failed:\n{output}")
    requests = int(re.search(r"(\d+) requests in", output).group(1))  # type: ignore[union-attr]
    percentiles = {}
    for quantile, name in ((0.5, "50%"), (0.99, "99%")):
        value, unit = re.search(rf"{name}\s+([\d.]+)(us|ms|s)", output).groups()  # type: ignore[union-attr]
        percentiles[quantile] = float(value) * _WRK_DURATION[unit]
    return Result(label, requests, seconds, [], percentiles)
