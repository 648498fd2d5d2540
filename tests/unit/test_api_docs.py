"""The interactive docs: off in production unless asked for. The apps are built in
process and asked over ASGI without their lifespan (nothing here reaches a server)."""

from __future__ import annotations

import secrets
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from fastapi import FastAPI

from infrastructure.settings import Settings, load_settings
from interfaces.api.command.app import create_command_app
from interfaces.api.query.app import create_query_app
from tests.conftest import signing_key_file
from tests.unit.asgi import asgi_requests

APPS: list[Callable[[Settings], FastAPI]] = [create_command_app, create_query_app]


def _production(tmp_path: Path, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "env": "production",
        "var_dir": tmp_path,
        "database_url": "postgresql://vigil@db/vigil?sslmode=verify-full",
        "redis_url": "rediss://cache:6379/0",
        "kafka_security_protocol": "SSL",
        "jwt_secret": secrets.token_urlsafe(48),
        "jwt_hs256_in_production": True,
        "audit_mac_key": secrets.token_urlsafe(48),
        "cipher_key": secrets.token_urlsafe(48),
        "metrics_token": secrets.token_urlsafe(48),
        "signing_key_file": signing_key_file(tmp_path),
        "rate_limit_anonymous_per_s": 0,  # no Redis here
    }
    values.update(overrides)
    return load_settings(**values)


@pytest.mark.parametrize("create", APPS)
def test_production_serves_neither_docs_nor_the_openapi_document(
    tmp_path: Path, create: Callable[[Settings], FastAPI]
) -> None:
    paths = ("/docs", "/openapi.json", "/redoc", "/docs/assets/swagger-ui-bundle.js")
    replies = asgi_requests(create(_production(tmp_path)), [("GET", path) for path in paths])
    for path, response in zip(paths, replies, strict=True):
        assert response.status_code == 404, path
        assert response.headers["content-type"].startswith("application/problem+json")


@pytest.mark.parametrize("create", APPS)
def test_production_serves_the_docs_when_asked_for_with_local_assets(
    tmp_path: Path, create: Callable[[Settings], FastAPI]
) -> None:
    app = create(_production(tmp_path, api_docs=True))
    paths = ["/docs", "/docs/assets/swagger-ui.css", "/openapi.json"]
    page, css, document = asgi_requests(app, [("GET", path) for path in paths])
    assert page.status_code == 200
    assert "https://" not in page.text
    assert css.status_code == 200
    assert document.status_code == 200
