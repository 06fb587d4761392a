"""A TCP proxy on loopback that a test can cut and restore, to take a real dependency away, or
slow down by a fixed delay each way, to put a network between a service and its dependency."""

from __future__ import annotations

import asyncio
import contextlib


class TcpProxy:
    def __init__(self, target_host: str, target_port: int, *, delay: float = 0.0) -> None:
        """`delay`: seconds each chunk of bytes spends in the proxy, in each direction (so a
        round trip through it takes 2 * delay longer); chunks keep their order and the proxy
        keeps reading meanwhile: latency, not a bandwidth limit."""
        if delay < 0:
            raise ValueError("delay must be >= 0")
        self._target = (target_host, target_port)
        self._delay = delay
        self._server: asyncio.Server | None = None
        self._pipes: set[asyncio.Task[None]] = set()
        self._writers: set[asyncio.StreamWriter] = set()
        self.port = 0

    async def start(self) -> int:
        """Listens on the same port as before (a free one the first time)."""
        self._server = await asyncio.start_server(
            self._accept, "127.0.0.1", self.port, reuse_address=True
        )
        self.port = self._server.sockets[0].getsockname()[1]
        return self.port

    async def cut(self) -> None:
        """Stops listening and drops every open connection."""
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None
        for writer in list(self._writers):
            writer.transport.abort()
        for pipe in list(self._pipes):
            pipe.cancel()
        self._writers.clear()

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            upstream_reader, upstream_writer = await asyncio.open_connection(*self._target)
        except OSError:
            writer.transport.abort()
            return
        self._writers |= {writer, upstream_writer}
        for source, sink in ((reader, upstream_writer), (upstream_reader, writer)):
            task = asyncio.create_task(self._pipe(source, sink))
            self._pipes.add(task)
            task.add_done_callback(self._pipes.discard)

    async def _pipe(self, source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> None:
        with contextlib.suppress(OSError, asyncio.CancelledError):
            if self._delay:
                await self._delayed(source, sink)
            else:
                while data := await source.read(65536):
                    sink.write(data)
                    await sink.drain()
        sink.transport.abort()
        self._writers.discard(sink)

    async def _delayed(self, source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> None:
        """Each chunk reaches `sink` `delay` s after it was read; b"" (end of stream) too."""
        loop = asyncio.get_running_loop()
        chunks: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue()

        async def read() -> None:
            data = b"..."
            with contextlib.suppress(OSError):
                while data:
                    data = await source.read(65536)
                    chunks.put_nowait((loop.time() + self._delay, data))
            if data:  # a reset: the end of the stream, at once
                chunks.put_nowait((loop.time(), b""))

        reading = asyncio.create_task(read())
        try:
            while True:
                due, data = await chunks.get()
                await asyncio.sleep(due - loop.time())
                if not data:
                    return
                sink.write(data)
                await sink.drain()
        finally:
            reading.cancel()
