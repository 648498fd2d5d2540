"""The console mounted on the query API: its pages, its sign-in, and the handlers that turn
refusals into pages."""

from __future__ import annotations

from fastapi import FastAPI, Request, Response
from fastapi.responses import RedirectResponse

from interfaces.api.console import login, routes
from interfaces.api.console.routes import ApiRefused, NotSignedIn, render
from interfaces.api.console.session import clear_session


def install_console(app: FastAPI) -> None:
    """Mount the console's routes and the handlers that turn refusals into pages."""
    app.include_router(login.router)
    app.include_router(routes.router)
    app.add_exception_handler(NotSignedIn, _not_signed_in)
    app.add_exception_handler(ApiRefused, _refused)


async def _not_signed_in(request: Request, exc: Exception) -> Response:
    response = RedirectResponse("/console/login", status_code=303)
    clear_session(response)
    return response


async def _refused(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, ApiRefused)
    if exc.status == 401:
        return await _not_signed_in(request, exc)
    return render(request, "error.html", exc.status, status=exc.status, detail=str(exc), who=None)
