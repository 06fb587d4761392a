"""A load generator across several processes, so that the generator is not what is measured.

One asyncio client in one process costs about as much CPU per gRPC call as a bare grpc.aio server
answering it (both ~110 µs): it cannot offer 3x the capacity of a server it shares two cores
with. Here `processes` client processes each offer `rate / processes` on their own channels
(open loop: arrivals do not wait for answers), with requests serialized once and answers left
undecoded (only the status is read), and report every call back to the parent over a pipe:
when it was due, when it was sent, how it ended, how long it took, whether it carried a retry
hint. The parent merges them and reads each phase's CPU of the generator and of the servers.

Targets: a unary gRPC method (raw bytes in, status out), or an HTTP POST/GET on keep-alive
HTTP/1.1 connections (a minimal client on asyncio streams: a fresh `unique_header` value per
request, e.g. an Idempotency-Key). Every call has the `deadline`: gRPC sends it as the call's
timeout; HTTP gives up on the connection then (and the server is told the same budget by its
own settings).
"""

from __future__ import annotations

import array
import asyncio
import contextlib
import itertools
import multiprocessing
import os
import sys
import time
import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from pathlib import Path
from typing import cast

# Outcome codes: gRPC status codes as they are (0 OK, 4 DEADLINE_EXCEEDED, 8 RESOURCE_EXHAUSTED,
# 14 UNAVAILABLE, ...); HTTP statuses as 1000 + status (1200, 1503, ...); these two are the
# client's own: a call it gave up on at its deadline, and a transport failure.
CLIENT_TIMEOUT = 4
HTTP = 1000
TRANSPORT_ERROR = 2000


def code_name(code: int) -> str:
    if code == TRANSPORT_ERROR:
        return "connection error"
    if code >= HTTP:
        return f"HTTP {code - HTTP}"
    import grpc

    for status in grpc.StatusCode:
        if status.value[0] == code:
            return status.name
    return f"code {code}"


def ok(code: int) -> bool:
    return code == 0 or HTTP + 200 <= code < HTTP + 300


@dataclass(frozen=True)
class Target:
    """What each call sends. kind "grpc": `path` is /package.Service/Method and `body` the
    serialized request; kind "http": `path` is the URL path, `body` the JSON (empty: a GET)."""

    kind: str
    address: str  # host:port
    path: str
    body: bytes
    headers: tuple[tuple[str, str], ...] = ()
    unique_header: str | None = None
    channels_per_process: int = 2


@dataclass(frozen=True)
class Phase:
    """`rate` calls/s in all (open loop) for `seconds`; or, with `concurrency`, that many
    callers back to back (closed loop, to measure capacity)."""

    name: str
    seconds: float
    rate: float = 0.0
    concurrency: int = 0


@dataclass
class Calls:
    """Every call of a run: phase index, due and sent times (s from the run's start, one clock
    for every process: CLOCK_MONOTONIC), latency from due time (ms), code, retry hint."""

    phase: array.array[int] = field(default_factory=lambda: array.array("b"))
    due: array.array[float] = field(default_factory=lambda: array.array("d"))
    sent: array.array[float] = field(default_factory=lambda: array.array("d"))
    latency_ms: array.array[float] = field(default_factory=lambda: array.array("d"))
    code: array.array[int] = field(default_factory=lambda: array.array("h"))
    hint: array.array[int] = field(default_factory=lambda: array.array("b"))

    COLUMNS = ("phase", "due", "sent", "latency_ms", "code", "hint")

    def add(self, phase: int, due: float, sent: float, done: float, code: int, hint: bool) -> None:
        self.phase.append(phase)
        self.due.append(due)
        self.sent.append(sent)
        self.latency_ms.append((done - due) * 1000)
        self.code.append(code)
        self.hint.append(hint)

    def extend(self, other: Calls) -> None:
        for name in self.COLUMNS:
            getattr(self, name).extend(getattr(other, name))

    def rows(self, phase: int) -> list[tuple[float, float, float, int, bool]]:
        """(due, sent, latency ms, code, hint) of every call due in `phase`."""
        return [
            (d, s, ms, c, bool(h))
            for p, d, s, ms, c, h in zip(
                self.phase,
                self.due,
                self.sent,
                self.latency_ms,
                self.code,
                self.hint,
                strict=True,
            )
            if p == phase
        ]


@dataclass
class Run:
    calls: Calls
    # per phase: (start, end) on the run's clock, generator CPU seconds (all its processes)
    bounds: list[tuple[float, float]]
    generator_cpu: list[float]


# ---- the parent ---------------------------------------------------------------------------


async def run(
    target: Target,
    phases: Sequence[Phase],
    *,
    deadline: float,
    processes: int,
    at_phase: Callable[[int], Awaitable[None]] | None = None,
) -> Run:
    """Runs `phases` back to back from `processes` client processes; `at_phase(i)` is awaited
    at the start of each phase i and once more (i = len(phases)) at the end (to read servers'
    CPU)."""
    context = multiprocessing.get_context("spawn")
    pipes: list[Connection] = []
    workers = []
    for index in range(processes):
        parent, child = context.Pipe()
        worker = context.Process(
            target=_worker_main,
            args=(target, list(phases), deadline, index, processes, child, sys.path),
            daemon=True,
        )
        worker.start()
        child.close()
        pipes.append(parent)
        workers.append(worker)
    try:
        for pipe in pipes:  # each has connected and made a first call
            message = await asyncio.to_thread(pipe.recv)
            if message != "ready":
                raise RuntimeError(f"a generator process failed: {message}")
        start = time.monotonic() + 0.3
        for pipe in pipes:
            pipe.send(start)
        bounds = []
        at = start
        for index, phase in enumerate(phases):
            await asyncio.sleep(max(0.0, at - time.monotonic()))
            if at_phase is not None:
                await at_phase(index)
            bounds.append((at - start, at - start + phase.seconds))
            at += phase.seconds
        await asyncio.sleep(max(0.0, at - time.monotonic()))
        if at_phase is not None:
            await at_phase(len(phases))
        calls = Calls()
        cpu = [0.0] * len(phases)
        for pipe in pipes:
            message = await asyncio.to_thread(pipe.recv)
            if not isinstance(message, dict):
                raise RuntimeError(f"a generator process failed: {message}")
            part = Calls()
            for name in Calls.COLUMNS:
                getattr(part, name).frombytes(message[name])
            calls.extend(part)
            for index, seconds in enumerate(message["cpu"]):
                cpu[index] += seconds
        return Run(calls, bounds, cpu)
    finally:
        for worker in workers:
            worker.join(timeout=10)
            if worker.is_alive():
                worker.kill()


# ---- a client process ---------------------------------------------------------------------


def _worker_main(
    target: Target,
    phases: list[Phase],
    deadline: float,
    index: int,
    count: int,
    pipe: Connection,
    path: list[str],
) -> None:
    sys.path[:] = path
    try:
        calls, cpu = asyncio.run(_worker(target, phases, deadline, index, count, pipe))
    except BaseException as error:  # reported to the parent, which fails the run
        pipe.send(f"{type(error).__name__}: {error}")
        raise
    message: dict[str, object] = {name: getattr(calls, name).tobytes() for name in Calls.COLUMNS}
    message["cpu"] = cpu
    pipe.send(message)


Send = Callable[[], Awaitable[tuple[int, bool]]]


async def _worker(
    target: Target, phases: list[Phase], deadline: float, index: int, count: int, pipe: Connection
) -> tuple[Calls, list[float]]:
    async with contextlib.AsyncExitStack() as stack:
        send = await (_grpc_sender if target.kind == "grpc" else _http_sender)(
            target, deadline, stack
        )
        await send()  # connected, warm
        pipe.send("ready")
        start = await asyncio.to_thread(pipe.recv)
        calls = Calls()
        cpu: list[float] = []
        tasks: set[asyncio.Task[None]] = set()
        clock = time.monotonic
        at = start

        async def call(phase: int, due: float) -> None:
            sent = clock()
            code, hint = await send()
            calls.add(phase, due - start, sent - start, clock() - start, code, hint)

        for number, phase in enumerate(phases):
            await asyncio.sleep(max(0.0, at - clock()))
            cpu_before = time.process_time()
            end = at + phase.seconds
            if phase.concurrency:
                share = phase.concurrency // count + (index < phase.concurrency % count)

                async def caller(phase: int = number, end: float = end) -> None:
                    while (due := clock()) < end:
                        await call(phase, due)

                await asyncio.gather(*(caller() for _ in range(share)))
            else:
                # Arrivals at rate/count each, interleaved with the other processes'.
                interval = count / phase.rate
                due = at + interval * index / count
                while due < end:
                    now = clock()
                    while due <= now and due < end:
                        task = asyncio.create_task(call(number, due))
                        tasks.add(task)
                        task.add_done_callback(tasks.discard)
                        due += interval
                    await asyncio.sleep(min(0.002, max(0.0, due - clock())))
            cpu.append(time.process_time() - cpu_before)
            at = end
        cpu_before = time.process_time()
        if tasks:  # the last arrivals' answers (within their deadline)
            await asyncio.gather(*tasks)
        cpu[-1] += time.process_time() - cpu_before
        return calls, cpu


async def _grpc_sender(target: Target, deadline: float, stack: contextlib.AsyncExitStack) -> Send:
    import grpc

    stubs = []
    for _ in range(target.channels_per_process):
        # A channel of its own (its own connection), not one shared through the subchannel pool.
        channel = grpc.aio.insecure_channel(
            target.address, options=[("grpc.use_local_subchannel_pool", 1)]
        )
        await stack.enter_async_context(channel)
        stubs.append(channel.unary_unary(target.path, None, None))
    turns = itertools.cycle(stubs)
    body = target.body
    metadata = target.headers or None

    async def send() -> tuple[int, bool]:
        try:
            await next(turns)(body, timeout=deadline, metadata=metadata)
            return 0, False
        except grpc.aio.AioRpcError as error:
            trailers = cast("tuple[tuple[str, object], ...]", tuple(error.trailing_metadata()))
            hint = any(key == "grpc-retry-pushback-ms" for key, _ in trailers)
            return error.code().value[0], hint

    return send


class _HttpPool:
    """Keep-alive HTTP/1.1 connections: an idle one is reused, else a new one is opened."""

    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port
        self.idle: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []
        self.everything: set[asyncio.StreamWriter] = set()

    async def take(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        if self.idle:
            return self.idle.pop()
        return await self.fresh()

    async def fresh(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        reader, writer = await asyncio.open_connection(self.host, self.port)
        self.everything.add(writer)
        return reader, writer

    def give_back(self, connection: tuple[asyncio.StreamReader, asyncio.StreamWriter]) -> None:
        self.idle.append(connection)

    def drop(self, writer: asyncio.StreamWriter) -> None:
        self.everything.discard(writer)
        writer.close()

    async def close(self) -> None:
        for writer in list(self.everything):
            writer.close()


async def _http_sender(target: Target, deadline: float, stack: contextlib.AsyncExitStack) -> Send:
    host, _, port = target.address.rpartition(":")
    pool = _HttpPool(host, int(port))
    stack.push_async_callback(pool.close)
    verb = "POST" if target.body else "GET"
    fixed = "".join(f"{name}: {value}\r\n" for name, value in target.headers)
    head = f"{verb} {target.path} HTTP/1.1\r\nHost: {target.address}\r\n{fixed}" + (
        f"Content-Type: application/json\r\nContent-Length: {len(target.body)}\r\n"
    ) * bool(target.body)
    unique = target.unique_header

    async def exchange(
        reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> tuple[int, bool, bool]:
        extra = f"{unique}: {uuid.uuid4()}\r\n" if unique else ""
        writer.write((head + extra + "\r\n").encode() + target.body)
        response = await reader.readuntil(b"\r\n\r\n")
        lines = response.decode("latin-1").split("\r\n")
        status = int(lines[0].split(" ", 2)[1])
        length, hint, keep = 0, False, True
        for line in lines[1:]:
            name, _, value = line.partition(":")
            name = name.strip().lower()
            if name == "content-length":
                length = int(value)
            elif name == "retry-after":
                hint = True
            elif name == "connection" and value.strip().lower() == "close":
                keep = False
        if length:
            await reader.readexactly(length)
        return HTTP + status, hint, keep

    async def send() -> tuple[int, bool]:
        writer = None
        try:
            async with asyncio.timeout(deadline):
                reused = bool(pool.idle)
                reader, writer = await pool.take()
                try:
                    code, hint, keep = await exchange(reader, writer)
                except (OSError, asyncio.IncompleteReadError):
                    if not reused:
                        raise
                    # The server closed a keep-alive connection that sat idle (uvicorn: after
                    # 5 s): once more on a new one, as browsers do.
                    pool.drop(writer)
                    writer = None
                    reader, writer = await pool.fresh()
                    code, hint, keep = await exchange(reader, writer)
        except TimeoutError:
            if writer is not None:
                pool.drop(writer)
            return CLIENT_TIMEOUT, False
        except (OSError, asyncio.IncompleteReadError, ValueError, IndexError):
            if writer is not None:
                pool.drop(writer)
            return TRANSPORT_ERROR, False
        if keep:
            pool.give_back((reader, writer))
        else:
            pool.drop(writer)
        return code, hint

    return send


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far, its threads included (/proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
