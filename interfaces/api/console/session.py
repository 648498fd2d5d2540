"""The console's session: the caller's token in an HttpOnly, SameSite=Strict cookie (Secure
in production), checked on every request like any API token; and a CSRF token per session,
an HMAC of the session under a key only the server holds, carried by every form."""

from __future__ import annotations

import hashlib
import hmac
from typing import Final

from fastapi import Request, Response

from domain.errors import Forbidden
from infrastructure.settings import Settings

COOKIE: Final = "vigil_console"
CSRF_FIELD: Final = "csrf"
SESSION_MAX_AGE_S: Final = 12 * 3600


def _key(settings: Settings) -> bytes:
    return hashlib.sha256(b"vigil-console-csrf:" + settings.audit_mac_key_resolved()).digest()


def csrf_token(settings: Settings, session: str) -> str:
    return hmac.new(_key(settings), session.encode(), hashlib.sha256).hexdigest()


def session_token(request: Request) -> str | None:
    return request.cookies.get(COOKIE) or None


def set_session(response: Response, settings: Settings, token: str) -> None:
    response.set_cookie(
        COOKIE,
        token,
        max_age=SESSION_MAX_AGE_S,
        httponly=True,
        samesite="strict",
        secure=settings.env == "production",
        path="/console",
    )


def clear_session(response: Response) -> None:
    response.delete_cookie(COOKIE, path="/console")


def check_form(request: Request, settings: Settings, session: str, given: str | None) -> None:
    """A state-changing form: from this origin, with this session's CSRF token."""
    origin = request.headers.get("origin")
    if origin is not None and origin != _own_origin(request):
        raise Forbidden("a console form must come from the console's own origin")
    if request.headers.get("sec-fetch-site") not in (None, "same-origin", "none"):
        raise Forbidden("a console form must come from the console's own origin")
    if not given or not hmac.compare_digest(given, csrf_token(settings, session)):
        raise Forbidden("the form's CSRF token is missing or wrong; reload the page")


def _own_origin(request: Request) -> str:
    host = request.headers.get("host", "")
    return f"{request.url.scheme}://{host}"
