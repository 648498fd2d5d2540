"""The console's pages and forms, at `/console` on the query API.

Every page reads through the query API's own routes, in process, with the session's
token, so the API's authentication, RBAC and filters decide what each role sees (a page
a role may not read is refused by the server, not only left out of the menu). Every form
is checked (same origin, the session's CSRF token) and forwarded to the command API
(`VIGIL_COMMAND_API_URL`) with the session's token: the command side decides, and the
query side itself still changes nothing.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final
from urllib.parse import parse_qsl, urlencode

import httpx
from fastapi import APIRouter, Request, Response
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, RedirectResponse
from fastapi.templating import Jinja2Templates

from domain.errors import DomainError
from domain.money import format_amount
from infrastructure.audit.export import default_export_root
from infrastructure.audit.export_verify import MANIFEST_FILE, verify_export
from interfaces.api.console.session import (
    CSRF_FIELD,
    check_form,
    csrf_token,
    session_token,
)
from interfaces.api.http.auth import PERMISSIONS, Principal

HERE: Final = Path(__file__).parent
TEMPLATES: Final = Jinja2Templates(directory=HERE / "templates")
# Amounts in minor units (the events' payloads) shown in the currency's places.
TEMPLATES.env.filters["minor"] = lambda amount, currency: format_amount(int(amount), currency)
STATIC: Final = {"console.js": "text/javascript", "console.css": "text/css"}
# No inline script, no other origin, no framing: the pages' only script is console.js.
CSP: Final = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; "
    "connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
)
# Menu entries: (title, path, the API permission its page reads).
NAV: Final = (
    ("Overview", "/console", "stats.read"),
    ("Accounts", "/console/accounts", "account.read"),
    ("Compliance", "/console/cases", "cases.read"),
    ("Audit", "/console/audit", "audit.read"),
)
SEVERITY_ORDER: Final = ("critical", "high", "medium", "low")
COMMAND_TIMEOUT_S: Final = 10.0

router = APIRouter(prefix="/console", include_in_schema=False)


class NotSignedIn(Exception):
    """No session, or its token no longer verifies: sign in again."""


class Console:
    """One request's view of the console: who is signed in, and the API on their behalf."""

    def __init__(self, request: Request, token: str, principal: Principal) -> None:
        self.request = request
        self.token = token
        self.principal = principal
        self.settings = request.app.state.settings

    def may(self, action: str) -> bool:
        return self.principal.role in PERMISSIONS.get(action, frozenset())

    async def get(self, path: str, **params: Any) -> Any:
        """The query API's reply to GET `path`, read in process with the session's token;
        a refusal is raised as the API's problem."""
        transport = httpx.ASGITransport(app=self.request.app)
        query = {k: v for k, v in params.items() if v not in (None, "")}
        async with httpx.AsyncClient(transport=transport, base_url="http://console") as client:
            response = await client.get(path, params=query, headers=self._auth())
        return _reply(response)

    async def command(
        self, method: str, path: str, body: Mapping[str, Any] | None = None
    ) -> httpx.Response:
        """Send a command to the command API with the session's token."""
        url = self.settings.resolved_command_api_url() + path
        headers = {**self._auth(), "X-Correlation-ID": f"console-{uuid.uuid4()}"}
        async with httpx.AsyncClient(timeout=COMMAND_TIMEOUT_S) as client:
            return await client.request(method, url, json=body or {}, headers=headers)

    def _auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}

    def page(self, template: str, status_code: int = 200, **values: Any) -> HTMLResponse:
        session = self.token
        values |= {
            "who": self.principal,
            "nav": [(t, p) for t, p, action in NAV if self.may(action)],
            "csrf": csrf_token(self.settings, session),
            "csrf_field": CSRF_FIELD,
            "may": self.may,
            "flash": self.request.query_params.get("done"),
            "failed": self.request.query_params.get("failed"),
        }
        return render(self.request, template, status_code, **values)


class ApiRefused(Exception):
    def __init__(self, status: int, problem: Mapping[str, Any]) -> None:
        super().__init__(problem.get("detail", "refused"))
        self.status = status
        self.problem = problem


def _reply(response: httpx.Response) -> Any:
    if response.status_code >= 400:
        try:
            problem = response.json()
        except ValueError:
            problem = {"detail": response.text}
        raise ApiRefused(response.status_code, problem)
    return response.json()


def render(request: Request, template: str, status_code: int = 200, **values: Any) -> HTMLResponse:
    response = TEMPLATES.TemplateResponse(request, template, values, status_code=status_code)
    secure_headers(response)
    return response


def secure_headers(response: Response) -> None:
    response.headers["Content-Security-Policy"] = CSP
    response.headers["Cache-Control"] = "no-store"
    # Not no-referrer: with it, browsers send `Origin: null` on form posts, and the forms
    # are checked by their origin.
    response.headers["Referrer-Policy"] = "same-origin"


async def console_of(request: Request) -> Console:
    token = session_token(request)
    if token is None:
        raise NotSignedIn
    try:
        principal = await request.app.state.verifier.verify_async(token)
    except DomainError:
        raise NotSignedIn from None
    request.state.principal = principal
    return Console(request, token, principal)


async def checked_form(request: Request, console: Console) -> dict[str, str]:
    values = await form_values(request)
    try:
        check_form(request, console.settings, console.token, values.get(CSRF_FIELD))
    except DomainError as error:
        raise ApiRefused(403, {"detail": error.detail}) from None
    return values


async def form_values(request: Request) -> dict[str, str]:
    """A form's fields (`application/x-www-form-urlencoded`, what the pages send); the first
    value of a field named twice. Anything else is no form: no fields."""
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type != "application/x-www-form-urlencoded":
        return {}
    body = (await request.body()).decode("utf-8", errors="replace")
    values: dict[str, str] = {}
    for name, value in parse_qsl(body, keep_blank_values=True):
        values.setdefault(name, value)
    return values


def redirect_back(
    path: str, *, done: str | None = None, failed: str | None = None
) -> RedirectResponse:
    query = urlencode({k: v for k, v in (("done", done), ("failed", failed)) if v})
    return RedirectResponse(f"{path}?{query}" if query else path, status_code=303)


def _outcome(response: httpx.Response, success: str) -> tuple[str | None, str | None]:
    """What to tell the user after a command: its success, or the problem's detail."""
    if response.status_code < 300:
        return success, None
    try:
        problem = response.json()
        return None, f"{problem.get('title', 'Refused')}: {problem.get('detail', '')}"
    except ValueError:
        return None, f"refused ({response.status_code})"


# --- Sign-in -------------------------------------------------------------------------------


@router.get("/static/{name}")
async def static(name: str) -> Response:
    if name not in STATIC:
        return Response(status_code=404)
    response = FileResponse(HERE / "static" / name, media_type=STATIC[name])
    response.headers["Cache-Control"] = "no-cache"
    return response


# --- Overview ------------------------------------------------------------------------------


@router.get("")
async def overview(request: Request) -> Response:
    console = await console_of(request)
    if not console.may("stats.read"):
        return RedirectResponse("/console/accounts", status_code=303)
    figures = await _overview_figures(console)
    return console.page("overview.html", figures=figures)


@router.get("/overview.json")
async def overview_json(request: Request) -> Response:
    console = await console_of(request)
    if not console.may("stats.read"):
        raise ApiRefused(403, {"detail": "this role may not read the overview"})
    response = JSONResponse(await _overview_figures(console))
    secure_headers(response)
    return response


async def _overview_figures(console: Console) -> dict[str, Any]:
    stats = await console.get("/v1/stats/overview")
    projections = None
    if console.may("projections.read"):
        projections = await console.get("/v1/projections")
    cases = None
    if console.may("cases.read"):
        cases = await console.get("/v1/cases/counts")
    verify = None
    if console.may("audit.read"):
        verify = getattr(console.request.app.state, "console_last_verify", None)
    transfers_last_hour = sum(
        int(bucket["currencies"].get(c, {}).get("transfers", {}).get("count", 0))
        for bucket in stats["hourly"][-1:]
        for c in bucket["currencies"]
    )
    return {
        "generated_at": stats["generated_at"],
        "totals": stats["totals"],
        "hourly": stats["hourly"],
        "transfers_last_hour": transfers_last_hour,
        "transfers_per_s": round(transfers_last_hour / 3600, 3),
        "open_alerts_by_severity": stats["open_alerts_by_severity"],
        "cases": cases,
        "projections": projections,
        "stale": bool(projections and any(item["lag_s"] > 5 for item in projections["items"])),
        "verify": verify,
    }


# --- Accounts ------------------------------------------------------------------------------


@router.get("/accounts")
async def accounts(request: Request) -> Response:
    console = await console_of(request)
    params = request.query_params
    page = await console.get(
        "/v1/accounts",
        branch=params.get("branch"),
        status=params.get("status"),
        currency=params.get("currency"),
        cursor=params.get("cursor"),
        limit=25,
    )
    return console.page("accounts.html", page=page, filters=dict(params))


@router.get("/accounts/{account_id}")
async def account(request: Request, account_id: uuid.UUID) -> Response:
    console = await console_of(request)
    params = request.query_params
    record = await console.get(f"/v1/accounts/{account_id}")
    statement = await console.get(
        f"/v1/accounts/{account_id}/transactions", cursor=params.get("cursor"), limit=20
    )
    holds = await console.get(f"/v1/accounts/{account_id}/holds", status="pending")
    as_of = params.get("as_of")
    state = events = None
    if console.may("audit.read"):
        events = await console.get(f"/v1/audit/accounts/{account_id}/events", limit=100)
        if as_of:
            state = await console.get(f"/v1/audit/accounts/{account_id}/state", as_of=_zoned(as_of))
    return console.page(
        "account.html",
        account=record,
        statement=statement,
        holds=holds,
        state=state,
        events=events,
        as_of=as_of or "",
    )


# --- Compliance ----------------------------------------------------------------------------


@router.get("/cases")
async def cases(request: Request) -> Response:
    console = await console_of(request)
    params = request.query_params
    view = params.get("view", "open")
    query: dict[str, Any] = {"severity": params.get("severity"), "limit": 100}
    if view == "mine":
        query["assignee"] = console.principal.subject
    if view in ("open", "unassigned"):
        query["status"] = "open"
    page = await console.get("/v1/cases", **query)
    items = page["items"]
    if view == "unassigned":
        items = [c for c in items if not c["assignee"]]
    return console.page("cases.html", cases=_queue_order(items), view=view)


def _queue_order(items: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Highest severity first, then oldest."""
    rank = {s: i for i, s in enumerate(SEVERITY_ORDER)}
    return sorted(items, key=lambda c: (rank.get(c["severity"], 9), c["opened_at"]))


@router.post("/cases/next")
async def next_case(request: Request) -> Response:
    """Take the oldest unassigned case of the highest severity: `assign` with
    `if_unassigned`, so two analysts never get the same case (the loser tries the next)."""
    console = await console_of(request)
    await checked_form(request, console)
    page = await console.get("/v1/cases", status="open", limit=200)
    waiting = _queue_order([c for c in page["items"] if not c["assignee"]])
    for case in waiting:
        response = await console.command(
            "POST",
            f"/v1/cases/{case['case_id']}/assign",
            {"assignee": console.principal.subject, "if_unassigned": True},
        )
        if response.status_code == 200:
            return redirect_back(f"/console/cases/{case['case_id']}", done="assigned to you")
        if response.status_code != 409:
            _, failed = _outcome(response, "")
            return redirect_back("/console/cases", failed=failed)
    return redirect_back("/console/cases", done="no unassigned case waits")


@router.get("/cases/{case_id}")
async def case_page(request: Request, case_id: uuid.UUID) -> Response:
    console = await console_of(request)
    case = await console.get(f"/v1/cases/{case_id}")
    evidence = None
    if console.may("alerts.evidence"):
        try:
            evidence = await console.get(f"/v1/alerts/{case['alert_id']}/evidence")
        except ApiRefused:
            evidence = None  # a screening case's alert appears once projected
    history = None
    if console.may("account.read"):
        history = await console.get(f"/v1/accounts/{case['account_id']}/transactions", limit=10)
    return console.page("case.html", case=case, evidence=evidence, recent=history)


ACTIONS: Final[dict[str, Callable[[dict[str, str]], dict[str, Any]]]] = {
    "acknowledge": lambda v: {"note": v.get("note") or None},
    "comment": lambda v: {"note": v.get("note", "")},
    "escalate": lambda v: {"note": v.get("note", "")},
    "close": lambda v: {"resolution": v.get("resolution", ""), "note": v.get("note", "")},
    "assign": lambda v: {"assignee": v.get("assignee", ""), "note": v.get("note") or None},
    "freeze-account": lambda v: {"note": v.get("note", "")},
    "release": lambda v: {"note": v.get("note", "")},
    "reject": lambda v: {"note": v.get("note", "")},
}


@router.post("/cases/{case_id}/{action}")
async def case_action(request: Request, case_id: uuid.UUID, action: str) -> Response:
    console = await console_of(request)
    values = await checked_form(request, console)
    if action not in ACTIONS:
        return Response(status_code=404)
    body = {k: v for k, v in ACTIONS[action](values).items() if v is not None}
    response = await console.command("POST", f"/v1/cases/{case_id}/{action}", body)
    done, failed = _outcome(response, f"{action.replace('-', ' ')}: done")
    return redirect_back(f"/console/cases/{case_id}", done=done, failed=failed)


# --- Audit ---------------------------------------------------------------------------------


@router.get("/audit")
async def audit(request: Request) -> Response:
    console = await console_of(request)
    if not console.may("audit.read"):
        raise ApiRefused(403, {"detail": "this role may not read the audit pages"})
    exports = await console.get("/v1/audit/exports", limit=20)
    for export in exports["items"]:
        export["check"] = await _export_check(request, export["export_id"])
    access = None
    if console.may("audit.access_log"):
        access = await console.get("/v1/audit/access-log", limit=20)
    verify = getattr(request.app.state, "console_last_verify", None)
    return console.page("audit.html", exports=exports, access=access, verify=verify)


async def _export_check(request: Request, export_id: str) -> str:
    """Whether an export's files verify (every hash, the manifest's signature), as
    `vigil audit verify-export` checks them; once per export (they never change)."""
    checks: dict[str, str] = request.app.state.__dict__.setdefault("console_export_checks", {})
    if export_id in checks:
        return checks[export_id]
    directory = default_export_root(request.app.state.settings) / export_id
    if not (directory / MANIFEST_FILE).is_file():
        return "files not on this server"
    check = await asyncio.to_thread(verify_export, directory)
    verdict = "signature and files verify" if check.verified else f"{len(check.problems)} problems"
    checks[export_id] = verdict
    return verdict


@router.post("/audit/verify")
async def run_verify(request: Request) -> Response:
    console = await console_of(request)
    await checked_form(request, console)
    result = await console.get("/v1/audit/verify")
    request.app.state.console_last_verify = {
        "ok": bool(result.get("clean")),
        "at": datetime.now(UTC).strftime("%Y-%m-%d %H:%M:%S UTC"),
        "summary": result,
    }
    word = "clean" if result.get("clean") else "FINDINGS"
    return redirect_back("/console/audit", done=f"verify: {word}")


@router.post("/audit/exports")
async def create_export(request: Request) -> Response:
    """Exports are the query side's own files: made through its route, in process."""
    console = await console_of(request)
    values = await checked_form(request, console)
    transport = httpx.ASGITransport(app=request.app)
    body = {"from": _zoned(values.get("from", "")), "to": _zoned(values.get("to", ""))}
    async with httpx.AsyncClient(transport=transport, base_url="http://console") as client:
        response = await client.post(
            "/v1/audit/exports", json=body, headers={"Authorization": f"Bearer {console.token}"}
        )
    done, failed = _outcome(response, "export made")
    return redirect_back("/console/audit", done=done, failed=failed)


def _zoned(value: str) -> str:
    """A `datetime-local` input's value, taken as UTC."""
    if not value or value.endswith("Z") or "+" in value:
        return value
    return value + (":00Z" if len(value) == 16 else "Z")


@router.get("/audit/exports/{export_id}/archive")
async def download_export(request: Request, export_id: uuid.UUID) -> Response:
    console = await console_of(request)
    transport = httpx.ASGITransport(app=request.app)
    async with httpx.AsyncClient(transport=transport, base_url="http://console") as client:
        response = await client.get(
            f"/v1/audit/exports/{export_id}/archive",
            headers={"Authorization": f"Bearer {console.token}"},
        )
    if response.status_code != 200:
        _reply(response)
    return Response(
        response.content,
        media_type="application/gzip",
        headers={"Content-Disposition": f'attachment; filename="export-{export_id}.tar.gz"'},
    )
