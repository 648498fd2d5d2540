"""`vigil api command`: serve an app with uvicorn, logging as JSON."""

from __future__ import annotations

import uvicorn

from infrastructure.settings import Settings


def serve_api(which: str, settings: Settings, *, port: int | None, workers: int) -> int:
    if which != "command":
        raise ValueError(f"unknown API {which!r}")
    chosen_port = port if port is not None else settings.command_port
    config = uvicorn.Config(
        "interfaces.api.factories:command_app",
        factory=True,
        host=settings.host,
        port=chosen_port,
        workers=workers,
        access_log=False,
        log_config=None,
        proxy_headers=False,
        timeout_graceful_shutdown=10,
    )
    uvicorn.Server(config).run()
    return 0
