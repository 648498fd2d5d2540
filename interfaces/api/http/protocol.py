"""uvicorn's HTTP protocol with a deadline for receiving a request.

uvicorn closes a connection idle between requests (`timeout_keep_alive`), but not one
that sends its headers or body a byte at a time: a few hundred of those hold the process's
connections forever. Here each request must arrive whole (request line, headers and body)
within `VIGIL_REQUEST_RECEIVE_TIMEOUT_S` of its first byte, or of the connection opening;
otherwise the connection is closed and `vigil_http_receive_timeouts_total` counts it.
"""

from __future__ import annotations

import asyncio
from typing import Any, Final

from prometheus_client import Counter
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

RECEIVE_TIMEOUTS = Counter(
    "vigil_http_receive_timeouts_total",
    "Connections closed because a request did not arrive whole in time.",
)

RECEIVE_TIMEOUT_S_DEFAULT: Final = 30.0
# Set once per process by the app factory, from the settings (uvicorn builds the protocol).
_receive_timeout_s: list[float] = [RECEIVE_TIMEOUT_S_DEFAULT]


def set_receive_timeout(seconds: float) -> None:
    assert seconds > 0, seconds
    _receive_timeout_s[0] = seconds


class DeadlineHttpToolsProtocol(HttpToolsProtocol):
    _deadline: asyncio.TimerHandle | None = None

    def connection_made(self, transport: Any) -> None:
        super().connection_made(transport)
        self._arm()

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._arm()

    def on_message_complete(self) -> None:
        self._disarm()
        super().on_message_complete()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def _arm(self) -> None:
        if self._deadline is None:
            self._deadline = self.loop.call_later(_receive_timeout_s[0], self._expired)

    def _disarm(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def _expired(self) -> None:
        self._deadline = None
        RECEIVE_TIMEOUTS.inc()
        if not self.transport.is_closing():
            self.transport.close()
