"""`vigil api command|query`: serve one app with uvicorn, logging as JSON."""

from __future__ import annotations

import uvicorn
from uvicorn.supervisors import Multiprocess

from infrastructure.limits import API_DRAIN_S
from infrastructure.settings import Settings
from interfaces.api.http.protocol import DeadlineHttpToolsProtocol

# Factories uvicorn imports by name in each worker process, and the setting of each port.
APPS = {
    "command": ("interfaces.api.factories:command_app", "command_port"),
    "query": ("interfaces.api.factories:query_app", "query_port"),
}


def serve_api(which: str, settings: Settings, *, port: int | None, workers: int) -> int:
    """Serve `which` on its port until SIGTERM or Ctrl-C: in this process, or, with
    `workers` above 1, in that many processes sharing the listening socket."""
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
        # No `server: uvicorn`: a scanner learns nothing of what serves the API.
        server_header=False,
        http=DeadlineHttpToolsProtocol,
        # Past this many connections and tasks at once, uvicorn answers 503 at once.
        limit_concurrency=settings.http_concurrency_max,
        timeout_graceful_shutdown=API_DRAIN_S,
    )
    if workers > 1:
        # Each worker process imports the factory, so each has its own pools and, on the
        # command side, its own group committer and accounts in memory: the store's version
        # checks keep them consistent, as they do for separate hosts.
        Multiprocess(config, sockets=[config.bind_socket()]).run()
    else:
        uvicorn.Server(config).run()
    return 0
