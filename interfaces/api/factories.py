"""App factories uvicorn imports by name (one per worker process): settings are read once
per process, here, and passed down."""

from __future__ import annotations

from fastapi import FastAPI

from infrastructure.logging import configure_logging
from infrastructure.settings import load_settings
from interfaces.api.command_app import create_command_app


def command_app() -> FastAPI:
    settings = load_settings()
    configure_logging(settings.log_level, service="command-api")
    return create_command_app(settings)
