"""The HTTP port of the processes that serve no API (the relay, the workers, the case
opener): `/metrics` (Prometheus) as before, and `/health/live` and `/health/ready` as the
APIs answer them, so that an orchestrator probes every process the same way.

`/health/live`: 200 while the process runs. `/health/ready`: 503 `unavailable` while
PostgreSQL does not answer within a second (nothing can be done without it); else 200,
`degraded` with its reasons (transport TLS waived in production, what the process itself
reports), or `ok`. Every answer is `{"status", "checks", "reasons"}`.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Iterable
from typing import Any
from wsgiref.simple_server import WSGIServer, make_server

import psycopg
from prometheus_client import make_wsgi_app
from prometheus_client.exposition import ThreadingWSGIServer, _SilentHandler

from infrastructure.postgres.connect import connect
from infrastructure.settings import Settings

READY_TIMEOUT_S = 1
Reasons = Callable[[], list[str]]  # what the process reports as degraded (cheap, no I/O)


def start_metrics_and_health(
    settings: Settings, port: int, process: str, reasons: Reasons | None = None
) -> tuple[WSGIServer, threading.Thread]:
    """Serve /metrics, /health/live and /health/ready on `port` from a daemon thread."""
    metrics = make_wsgi_app()

    def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        path = environ.get("PATH_INFO", "")
        if path == "/health/live":
            return _json(start_response, 200, {"status": "ok", "process": process})
        if path == "/health/ready":
            status, body = readiness(settings, reasons)
            return _json(start_response, status, body | {"process": process})
        return metrics(environ, start_response)  # type: ignore[no-any-return]

    server = make_server(settings.host, port, app, ThreadingWSGIServer, _SilentHandler)
    thread = threading.Thread(target=server.serve_forever, name=f"{process}-http", daemon=True)
    thread.start()
    return server, thread


def readiness(settings: Settings, reasons: Reasons | None = None) -> tuple[int, dict[str, Any]]:
    checks = {"postgres": _postgres(settings)}
    if checks["postgres"] != "ok":
        return 503, {"status": "unavailable", "checks": checks, "reasons": []}
    found = [*settings.tls_waived(), *(reasons() if reasons else [])]
    return 200, {"status": "degraded" if found else "ok", "checks": checks, "reasons": found}


def _postgres(settings: Settings) -> str:
    try:
        with connect(settings, "health", connect_timeout=READY_TIMEOUT_S) as conn:
            conn.execute("SELECT 1")
    except (psycopg.Error, OSError):
        return "down"
    return "ok"


def _json(start_response: Callable[..., Any], status: int, body: dict[str, Any]) -> list[bytes]:
    data = json.dumps(body).encode()
    phrase = {200: "OK", 503: "Service Unavailable"}[status]
    start_response(
        f"{status} {phrase}",
        [("Content-Type", "application/json"), ("Content-Length", str(len(data))),
         ("Cache-Control", "no-store")],
    )  # fmt: skip
    return [data]
