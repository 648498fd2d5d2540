"""What the command and the query API share in their routes: the settings as a dependency,
and the JSON reply (bodies built as dicts, encoded once by orjson)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Annotated, Any

import orjson
from fastapi import Depends, Request, Response

from infrastructure.settings import Settings


# Dependencies are coroutines: FastAPI would run plain functions in its thread pool.
async def _settings(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


SettingsDep = Annotated[Settings, Depends(_settings)]


def json_reply(
    body: Any, status_code: int = 200, *, headers: Mapping[str, str] | None = None
) -> Response:
    """`body` as `application/json`; the reply models document its shape."""
    return Response(
        orjson.dumps(body), status_code=status_code, headers=headers, media_type="application/json"
    )
