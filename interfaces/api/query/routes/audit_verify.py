"""`GET /v1/audit/verify` (auditor, compliance): `vigil audit verify`'s report as JSON.

The whole store is read and every chain, MAC and checkpoint recomputed, in a worker
thread; on a large store that takes a while (about as long as the CLI). One verification
runs at a time per process; a second request waits for the first to finish.
"""

from __future__ import annotations

import asyncio
from typing import Any

from fastapi import APIRouter, Request
from pydantic import BaseModel
from starlette.responses import Response

from application.ledger import Ledger
from infrastructure.audit.verify import verify_store
from infrastructure.settings import Settings
from interfaces.api.http.deps import json_reply
from interfaces.api.http.problems import problem_responses
from interfaces.api.query.routes.audit import AuditReader, From, To, record_access

router = APIRouter(prefix="/v1/audit", tags=["audit"])


class FindingOut(BaseModel):
    kind: str
    aggregate_id: str | None
    version: int | None
    notification_id: int | None
    detail: str


class VerifyOut(BaseModel):
    clean: bool
    findings: list[FindingOut]
    findings_total: int
    counts: dict[str, int]
    events: int
    aggregates: int
    checkpoints: int
    head: int
    last_checkpoint: int | None
    events_after_last_checkpoint: int
    since: str | None
    until: str | None
    elapsed_s: float
    rate_events_per_s: float
    summary: str


@router.get(
    "/verify",
    response_model=VerifyOut,
    responses=problem_responses(),
    summary="Recompute every hash chain, MAC and signed checkpoint; `clean` or the findings",
)
async def verify(
    request: Request, who: AuditReader, since: From = None, until: To = None
) -> Response:
    detail: dict[str, Any] = {
        "from": None if since is None else since.isoformat(),
        "to": None if until is None else until.isoformat(),
    }
    await record_access(request, who, "audit.verify", detail)
    settings: Settings = request.app.state.settings
    ledger: Ledger = request.app.state.ledger
    lock: asyncio.Lock = _verify_lock(request)
    async with lock:
        report = await asyncio.to_thread(
            verify_store, settings, since=since, until=until, ledger=ledger
        )
    return json_reply(report.as_json())


def _verify_lock(request: Request) -> asyncio.Lock:
    state = request.app.state
    if getattr(state, "verify_lock", None) is None:
        state.verify_lock = asyncio.Lock()
    lock: asyncio.Lock = state.verify_lock
    return lock
