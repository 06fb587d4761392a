"""TcpProxy: bytes pass unchanged and in order; `delay` adds latency each way, not a bandwidth
limit; `cut` drops connections and `start` listens again on the same port."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import pytest

from libs.testing.tcp_proxy import TcpProxy


async def _echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    while data := await reader.read(65536):
        writer.write(data)
        await writer.drain()
    writer.close()


@pytest.fixture
async def echo_port() -> AsyncIterator[int]:
    server = await asyncio.start_server(_echo, "127.0.0.1", 0)
    async with server:
        yield server.sockets[0].getsockname()[1]


async def _round_trip(port: int, payload: bytes) -> tuple[bytes, float]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    started = time.perf_counter()
    writer.write(payload)
    await writer.drain()
    echoed = await reader.readexactly(len(payload))
    elapsed = time.perf_counter() - started
    writer.close()
    return echoed, elapsed


async def test_without_delay_bytes_pass_unchanged(echo_port: int) -> None:
    proxy = TcpProxy("127.0.0.1", echo_port)
    port = await proxy.start()
    payload = bytes(range(256)) * 1000
    echoed, _ = await _round_trip(port, payload)
    assert echoed == payload
    await proxy.cut()


async def test_delay_is_added_each_way_and_keeps_order(echo_port: int) -> None:
    proxy = TcpProxy("127.0.0.1", echo_port, delay=0.05)
    port = await proxy.start()
    _, direct = await _round_trip(echo_port, b"ping")
    echoed, proxied = await _round_trip(port, b"ping")
    assert echoed == b"ping"
    assert proxied >= 0.1 > direct
    # 200 writes in a row, each its own chunk: they arrive in order after about one round
    # trip's delay, not 200 of them (latency, not bandwidth).
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    started = time.perf_counter()
    sent = b""
    for index in range(200):
        chunk = f"{index:05d}".encode()
        sent += chunk
        writer.write(chunk)
        await writer.drain()
        await asyncio.sleep(0)
    assert await reader.readexactly(len(sent)) == sent
    assert 0.1 <= time.perf_counter() - started < 1.0
    writer.close()
    await proxy.cut()


async def test_cut_drops_connections_and_start_listens_again(echo_port: int) -> None:
    proxy = TcpProxy("127.0.0.1", echo_port, delay=0.01)
    port = await proxy.start()
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"hello")  # a round trip first: the proxy has then connected upstream
    assert await reader.readexactly(5) == b"hello"
    await proxy.cut()
    assert await reader.read(10) == b""
    writer.close()
    with pytest.raises(ConnectionRefusedError):
        await asyncio.open_connection("127.0.0.1", port)
    assert await proxy.start() == port
    echoed, _ = await _round_trip(port, b"again")
    assert echoed == b"again"
    await proxy.cut()


def test_a_negative_delay_is_refused() -> None:
    with pytest.raises(ValueError, match="delay"):
        TcpProxy("127.0.0.1", 1, delay=-1)
