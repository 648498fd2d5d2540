"""The relay's, the workers' and the case opener's port: /metrics as before, and the
health routes the APIs answer, against a real PostgreSQL (and one that is not there)."""

from __future__ import annotations

from typing import Any

import httpx

from infrastructure.health import start_metrics_and_health
from infrastructure.ops.embedded import free_port
from infrastructure.settings import Settings


def _serve(settings: Settings) -> tuple[str, Any]:
    port = free_port()
    server, _ = start_metrics_and_health(settings, port, "relay", lambda: ["lagging a bit"])
    return f"http://127.0.0.1:{port}", server


def test_live_ready_and_metrics_on_one_port(settings: Settings) -> None:
    url, server = _serve(settings)
    try:
        live = httpx.get(f"{url}/health/live")
        assert live.status_code == 200
        assert live.json() == {"status": "ok", "process": "relay"}
        ready = httpx.get(f"{url}/health/ready")
        assert ready.status_code == 200
        body = ready.json()
        assert body["checks"] == {"postgres": "ok"}
        assert (body["status"], body["reasons"]) == ("degraded", ["lagging a bit"])
        assert ready.headers["cache-control"] == "no-store"
        metrics = httpx.get(f"{url}/metrics")
        assert metrics.status_code == 200
        assert "python_info" in metrics.text
    finally:
        server.shutdown()


def test_not_ready_without_postgresql(settings: Settings) -> None:
    away = settings.model_copy(
        update={"database_url": f"postgresql://vigil@127.0.0.1:{free_port()}/vigil"}
    )
    url, server = _serve(away)
    try:
        assert httpx.get(f"{url}/health/live").status_code == 200  # alive all the same
        ready = httpx.get(f"{url}/health/ready")
        assert ready.status_code == 503
        assert ready.json()["status"] == "unavailable"
        assert ready.json()["checks"] == {"postgres": "down"}
    finally:
        server.shutdown()
