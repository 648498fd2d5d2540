"""The interactive API documentation: `/docs` (Swagger UI) and `/openapi.json`.

Served in development, off in production unless `VIGIL_API_DOCS=true`. Swagger UI's
scripts and styles come from this process (the `swagger-ui-bundle-v2` wheel), never from
a CDN: a browser holding an operator's token runs no script a third party can change.
"""

from __future__ import annotations

from typing import Final

from fastapi import FastAPI
from fastapi.openapi.docs import get_swagger_ui_html
from starlette.responses import HTMLResponse
from starlette.staticfiles import StaticFiles
from swagger_ui_bundle import swagger_ui_path

from infrastructure.settings import Settings

DOCS_PATH: Final = "/docs"
OPENAPI_PATH: Final = "/openapi.json"
ASSETS_PATH: Final = "/docs/assets"


def openapi_url(settings: Settings) -> str | None:
    """What `FastAPI(openapi_url=...)` takes: None turns the document off."""
    return OPENAPI_PATH if settings.docs_served() else None


def install_docs(app: FastAPI, settings: Settings) -> None:
    """Serve Swagger UI from local assets, when the settings serve docs at all."""
    if not settings.docs_served():
        return
    app.mount(ASSETS_PATH, StaticFiles(directory=swagger_ui_path), name="docs-assets")
    title = f"{app.title} - docs"

    @app.get(DOCS_PATH, include_in_schema=False)
    async def docs() -> HTMLResponse:
        return get_swagger_ui_html(
            openapi_url=OPENAPI_PATH,
            title=title,
            swagger_js_url=f"{ASSETS_PATH}/swagger-ui-bundle.js",
            swagger_css_url=f"{ASSETS_PATH}/swagger-ui.css",
            swagger_favicon_url=f"{ASSETS_PATH}/favicon-32x32.png",
        )
