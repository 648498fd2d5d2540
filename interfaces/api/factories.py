"""App factories uvicorn imports by name (one per worker process): settings are read once
per process, here, and passed down."""

from __future__ import annotations

import structlog
from fastapi import FastAPI

from infrastructure.logging import configure_logging
from infrastructure.runtime import tune_gc
from infrastructure.settings import Settings, load_settings
from interfaces.api.http.health import tls_waived
from interfaces.api.http.protocol import set_receive_timeout


def warn_if_tls_waived(settings: Settings) -> None:
    for reason in tls_waived(settings):
        structlog.get_logger("vigil.settings").warning("transport_tls_waived", reason=reason)


def command_app() -> FastAPI:
    from interfaces.api.command.app import create_command_app

    settings = load_settings()
    set_receive_timeout(settings.request_receive_timeout_s)
    configure_logging(settings.log_level, service="command-api")
    warn_if_tls_waived(settings)
    app = create_command_app(settings)
    tune_gc()
    return app


def query_app() -> FastAPI:
    from interfaces.api.query.app import create_query_app

    settings = load_settings()
    set_receive_timeout(settings.request_receive_timeout_s)
    configure_logging(settings.log_level, service="query-api")
    warn_if_tls_waived(settings)
    app = create_query_app(settings)
    tune_gc()
    return app
