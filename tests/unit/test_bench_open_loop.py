"""The benchmark's open loop over real loopback HTTP: a request that finds every connection
waiting for its reply is not sent, and counts as late and as unsent; one that finds a
connection free is sent."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

import pytest

LOAD = Path(__file__).resolve().parents[2] / "load"
sys.path.insert(0, str(LOAD))

import bench_load  # noqa: E402
from bench_load import Stream, Tally, open_loop  # noqa: E402

ACCOUNT_IDS = ["00000000-0000-4000-8000-000000000001", "00000000-0000-4000-8000-000000000002"]


async def _serve(delay_s: float) -> tuple[asyncio.Server, str]:
    """A keep-alive HTTP server that answers every request 201 after `delay_s`."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = next(
                    int(line.split(b":", 1)[1])
                    for line in head.split(b"\r\n")
                    if line.lower().startswith(b"content-length:")
                )
                await reader.readexactly(length)
                await asyncio.sleep(delay_s)
                writer.write(b"HTTP/1.1 201 Created\r\ncontent-length: 2\r\n\r\n{}")
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    return server, f"http://127.0.0.1:{port}"


def _run(delay_s: float, per_s: float, seconds: float) -> Tally:
    async def main() -> Tally:
        server, url = await _serve(delay_s)
        tally = Tally()
        try:
            streams = [Stream(per_s, 1)]
            await open_loop(url, "token", ACCOUNT_IDS, streams, seconds, tally)
        finally:
            server.close()
            await server.wait_closed()
        return tally

    return asyncio.run(main())


def test_requests_finding_no_free_connection_are_unsent(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(bench_load, "CONNECTIONS_MAX", 2)
    # 10 requests 20 ms apart; each reply takes 1 s: the first two hold both connections.
    tally = _run(delay_s=1.0, per_s=50, seconds=0.2)
    assert tally.scheduled == 10
    assert tally.requests == 2
    assert tally.ok == 2
    assert tally.unsent == 8
    assert tally.late == 8


def test_requests_with_a_free_connection_are_sent(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(bench_load, "CONNECTIONS_MAX", 2)
    # Replies back well before the next request is due: every request is sent.
    tally = _run(delay_s=0.0, per_s=20, seconds=0.25)
    assert tally.scheduled == 5
    assert tally.requests == 5
    assert tally.unsent == 0
