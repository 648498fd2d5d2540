"""The console's sign-in: a token pasted into the form (development), or the identity
provider's authorization-code flow with PKCE; and signing out."""

from __future__ import annotations

import base64
import hashlib
import secrets
from typing import Final
from urllib.parse import urlencode

import httpx
from fastapi import APIRouter, Request, Response
from fastapi.responses import HTMLResponse, RedirectResponse

from domain.errors import DomainError
from interfaces.api.console.routes import (
    COMMAND_TIMEOUT_S,
    checked_form,
    console_of,
    form_values,
    redirect_back,
    render,
)
from interfaces.api.console.session import clear_session, set_session

router = APIRouter(prefix="/console", include_in_schema=False)


@router.get("/login")
async def login_page(request: Request) -> HTMLResponse:
    settings = request.app.state.settings
    return render(
        request,
        "login.html",
        failed=request.query_params.get("failed"),
        provider=bool(settings.console_authorize_url and settings.console_token_url),
    )


PKCE_COOKIE: Final = "vigil_console_pkce"
PKCE_MAX_AGE_S: Final = 600


@router.get("/login/provider")
async def login_with_provider(request: Request) -> Response:
    """Start the identity provider's authorization-code flow with PKCE (S256): a fresh
    verifier and state, kept in a short-lived HttpOnly cookie for the callback."""
    settings = request.app.state.settings
    if not (settings.console_authorize_url and settings.console_token_url):
        return redirect_back("/console/login", failed="no identity provider is configured")
    verifier = secrets.token_urlsafe(64)
    state = secrets.token_urlsafe(24)
    challenge = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest())
    query = urlencode(
        {
            "response_type": "code",
            "client_id": settings.console_client_id or "vigil-console",
            "redirect_uri": _callback_url(request),
            "scope": "openid",
            "state": state,
            "code_challenge": challenge.decode().rstrip("="),
            "code_challenge_method": "S256",
        }
    )
    response = RedirectResponse(f"{settings.console_authorize_url}?{query}", status_code=303)
    response.set_cookie(
        PKCE_COOKIE,
        f"{state}.{verifier}",
        max_age=PKCE_MAX_AGE_S,
        httponly=True,
        samesite="lax",  # the provider's redirect back is a top-level navigation
        secure=settings.env == "production",
        path="/console/login",
    )
    return response


@router.get("/login/callback")
async def login_callback(request: Request) -> Response:
    """The provider's redirect back: the state must be ours, and the code is exchanged
    with our verifier; the token it returns must verify like any other."""
    settings = request.app.state.settings
    kept = request.cookies.get(PKCE_COOKIE, "")
    state, _, verifier = kept.partition(".")
    given_state = request.query_params.get("state", "")
    code = request.query_params.get("code", "")
    if not state or not verifier or not code or not secrets.compare_digest(state, given_state):
        return redirect_back(
            "/console/login", failed="the sign-in did not come back as it left; try again"
        )
    async with httpx.AsyncClient(timeout=COMMAND_TIMEOUT_S) as client:
        exchanged = await client.post(
            settings.console_token_url,
            data={
                "grant_type": "authorization_code",
                "code": code,
                "redirect_uri": _callback_url(request),
                "client_id": settings.console_client_id or "vigil-console",
                "code_verifier": verifier,
            },
        )
    token = ""
    if exchanged.status_code == 200:
        body = exchanged.json()
        token = str(body.get("access_token") or body.get("id_token") or "")
    try:
        await request.app.state.verifier.verify_async(token)
    except DomainError:
        return redirect_back(
            "/console/login", failed="the identity provider's token is not valid here"
        )
    response = RedirectResponse("/console", status_code=303)
    response.delete_cookie(PKCE_COOKIE, path="/console/login")
    set_session(response, settings, token)
    return response


def _callback_url(request: Request) -> str:
    return f"{request.url.scheme}://{request.headers.get('host', '')}/console/login/callback"


@router.post("/login")
async def login(request: Request) -> Response:
    """Sign in with a token (development; production uses the identity provider's tokens
    the same way). The form carries no CSRF token yet: there is no session to bind it to,
    and signing in changes nothing but the caller's own cookie."""
    origin = request.headers.get("origin")
    if origin is not None and origin != f"{request.url.scheme}://{request.headers.get('host')}":
        return render(request, "login.html", 403, failed="sign in from the console itself")
    token = (await form_values(request)).get("token", "").strip()
    try:
        await request.app.state.verifier.verify_async(token)
    except DomainError:
        return render(request, "login.html", 401, failed="that token is not valid")
    response = RedirectResponse("/console", status_code=303)
    set_session(response, request.app.state.settings, token)
    return response


@router.post("/logout")
async def logout(request: Request) -> Response:
    console = await console_of(request)
    await checked_form(request, console)
    response = RedirectResponse("/console/login", status_code=303)
    clear_session(response)
    return response
