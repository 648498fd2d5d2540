"""uvicorn's HTTP protocol with a deadline for receiving a request, and a problem reply
for a request that is not valid HTTP.

uvicorn closes a connection idle between requests (`timeout_keep_alive`), but not one
that sends its headers or body a byte at a time: a few hundred of those hold the process's
connections forever. Here each request must arrive whole (request line, headers and body)
within `VIGIL_REQUEST_RECEIVE_TIMEOUT_S` of its first byte, or of the connection opening;
otherwise the connection is closed and `vigil_http_receive_timeouts_total` counts it.

A request the HTTP parser refuses (a control character in a header, a malformed
`Content-Length`, both `Content-Length` and `Transfer-Encoding`) never reaches the app:
uvicorn answers it itself, in plain text. Here that answer is a 400 `bad_request` problem
like every other error, and the connection is closed as uvicorn closes it.
"""

from __future__ import annotations

import asyncio
from typing import Any, Final

import orjson
from prometheus_client import Counter
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from interfaces.api.http.problems import PROBLEM_MEDIA_TYPE, title_for

RECEIVE_TIMEOUTS = Counter(
    "vigil_http_receive_timeouts_total",
    "Connections closed because a request did not arrive whole in time.",
)

NOT_HTTP: Final = orjson.dumps(
    {
        "type": "/problems/bad_request",
        "title": title_for("bad_request"),
        "status": 400,
        "detail": "the request is not valid HTTP/1.1: its request line, a header, or how "
        "its body's length is given could not be read",
        "code": "bad_request",
    }
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

    def send_400_response(self, msg: str) -> None:
        # uvicorn's own, with a problem body instead of its text (`msg` goes to its log).
        content = [b"HTTP/1.1 400 Bad Request\r\n"]
        for name, value in self.server_state.default_headers:
            content.extend([name, b": ", value, b"\r\n"])
        content.extend(
            [
                b"content-type: " + PROBLEM_MEDIA_TYPE.encode("ascii") + b"\r\n",
                b"content-length: " + str(len(NOT_HTTP)).encode("ascii") + b"\r\n",
                b"connection: close\r\n",
                b"\r\n",
                NOT_HTTP,
            ]
        )
        self.transport.write(b"".join(content))
        self.transport.close()

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
