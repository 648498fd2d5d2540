"""Requests to an ASGI app in process, through httpx's ASGI transport: no server, no
lifespan (nothing the app starts at startup runs)."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import httpx
from starlette.types import ASGIApp


def asgi_requests(app: ASGIApp, requests: Sequence[tuple[str, str]]) -> list[httpx.Response]:
    """Each (method, path) in turn; an exception in the app is its 500, as a server's."""

    async def send_all() -> list[httpx.Response]:
        transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
            return [await client.request(method, path) for method, path in requests]

    return asyncio.run(send_all())
