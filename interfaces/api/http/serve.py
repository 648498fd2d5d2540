"""`vigil api command|query`: serve one app with uvicorn, logging as JSON."""

from __future__ import annotations

import uvicorn

from infrastructure.limits import API_DRAIN_S
from infrastructure.settings import Settings

# Factories uvicorn imports by name in each worker process, and the setting of each port.
APPS = {
    "command": ("interfaces.api.factories:command_app", "command_port"),
    "query": ("interfaces.api.factories:query_app", "query_port"),
}


def serve_api(which: str, settings: Settings, *, port: int | None, workers: int) -> int:
    if which not in APPS:
        raise ValueError(f"unknown API {which!r}")
    factory, port_setting = APPS[which]
    config = uvicorn.Config(
        factory,
        factory=True,
        host=settings.host,
        port=port if port is not None else int(getattr(settings, port_setting)),
        workers=workers,
        access_log=False,
        log_config=None,
        proxy_headers=False,
        timeout_graceful_shutdown=API_DRAIN_S,
    )
    uvicorn.Server(config).run()
    return 0
