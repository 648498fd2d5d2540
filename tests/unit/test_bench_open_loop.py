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


@pytest.mark.parametrize(
    ("delay_s", "per_s", "seconds", "scheduled", "sent"),
    [
        # 10 requests 20 ms apart, each reply after 1 s: the first two hold both connections.
        (1.0, 50, 0.2, 10, 2),
        # Replies back well before the next request is due: every request is sent.
        (0.0, 20, 0.25, 5, 5),
    ],
    ids=["replies-slower-than-requests", "replies-in-time"],
)
def test_a_request_finding_no_free_connection_is_unsent_and_late(
    monkeypatch: pytest.MonkeyPatch,
    delay_s: float,
    per_s: float,
    seconds: float,
    scheduled: int,
    sent: int,
) -> None:
    monkeypatch.setattr(bench_load, "CONNECTIONS_MAX", 2)
    tally = _run(delay_s=delay_s, per_s=per_s, seconds=seconds)
    assert tally.scheduled == scheduled
    assert tally.requests == sent
    assert tally.ok == sent
    assert tally.unsent == scheduled - sent
    # Sent late (over 0.1 s after its time) also counts as late: only a stalled host does it.
    assert tally.late >= tally.unsent
