"""A stall between the services and PostgreSQL, for `make faults`: a loopback TCP proxy
that can stop forwarding, as a network that drops packets would."""

from __future__ import annotations

import asyncio
import contextlib
import threading

from bench_system import BenchFailed

from infrastructure.ops.embedded import LOOPBACK


class StallingProxy:
    """A TCP proxy on loopback to PostgreSQL, in a thread of its own (the driver's loop may
    be busy); `stall()` stops it forwarding anything, both ways, until `resume()`: open
    connections hang, new ones are accepted and hang too, as on a network that drops."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.port = 0
        self.loop = asyncio.new_event_loop()
        self._flowing = asyncio.Event()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, name="pg-proxy", daemon=True)

    def start(self) -> int:
        self._thread.start()
        if not self._ready.wait(10):
            raise BenchFailed("the PostgreSQL proxy did not start")
        return self.port

    def stall(self) -> None:
        self.loop.call_soon_threadsafe(self._flowing.clear)

    def resume(self) -> None:
        self.loop.call_soon_threadsafe(self._flowing.set)

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)

        async def serve() -> None:
            self._flowing.set()
            server = await asyncio.start_server(self._connection, LOOPBACK, 0)
            self.port = server.sockets[0].getsockname()[1]
            self._ready.set()
            async with server:
                await server.serve_forever()

        with contextlib.suppress(Exception):
            self.loop.run_until_complete(serve())

    async def _connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await self._flowing.wait()
        try:
            upstream_reader, upstream_writer = await asyncio.open_connection(
                LOOPBACK, self.target_port
            )
        except OSError:
            writer.close()
            return
        await asyncio.gather(
            self._pipe(reader, upstream_writer),
            self._pipe(upstream_reader, writer),
            return_exceptions=True,
        )

    async def _pipe(self, source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> None:
        try:
            while data := await source.read(65536):
                await self._flowing.wait()
                sink.write(data)
                await sink.drain()
        finally:
            sink.close()
