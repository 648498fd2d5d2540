"""Alert routes of the query API: the list, one alert, and its evidence re-run from the
event store (the API contract, "Alerts and cases").

An alert's `status` is its case's: `closed` once the case is closed, else `open` (an
alert exists before the case opener has opened its case, and before the cases read
model exists at all).
"""

from __future__ import annotations

import asyncio
from datetime import datetime
from typing import Annotated, Any, Final, Literal
from uuid import UUID

from fastapi import APIRouter, Depends, Query
from pydantic import BaseModel
from starlette.responses import Response

from domain.errors import DomainError
from domain.integrity import format_timestamp
from domain.text import BRANCH_PATTERN
from infrastructure.monitoring.evidence import rebuild_in_snapshot
from infrastructure.readmodels.readers.alerts import (
    AlertFilters,
    AlertRow,
    alerts_page,
    rule_config,
)
from infrastructure.readmodels.readers.alerts import fetch_alert as read_alert
from interfaces.api.http.auth import Principal, require
from interfaces.api.http.deps import json_reply
from interfaces.api.http.instants import Instant
from interfaces.api.http.problems import problem_responses
from interfaces.api.query.deps import LedgerDep, ReadSide, ReadSideDep
from interfaces.api.query.pagination import (
    PAGE_SIZE_DEFAULT,
    Cursor,
    Limit,
    QueryInvalid,
    decode_cursor,
    encode_cursor,
    page_reply,
)
from interfaces.api.query.views import Actor

router = APIRouter(prefix="/v1/alerts", tags=["alerts"])

AlertsReader = Annotated[Principal, Depends(require("alerts.read"))]
EvidenceReader = Annotated[Principal, Depends(require("alerts.evidence"))]

AlertStatus = Literal["open", "closed", "suppressed"]
Severity = Literal["critical", "high", "medium"]
RuleName = Literal[
    "large_transaction",
    "structuring",
    "velocity",
    "pass_through",
    "new_account_outflow",
    "dormant_reactivation",
    "watchlist",
    # Screening in the money path: a command held for review before it posted.
    "screening_amount",
    "screening_watchlist",
    # Not a rule: an event a consumer could not apply, so the rules never saw it.
    "quarantined_event",
]

ALERTS_CURSOR: Final = "alerts"


class AlertNotFound(DomainError):
    code = "alert_not_found"
    title = "Alert not found"


# --- Reply models (the OpenAPI document) ----------------------------------------------


class AlertView(BaseModel):
    alert_id: str
    rule: RuleName
    severity: Severity
    account_id: str
    branch: str | None
    transaction_ids: list[str]
    positions: list[int]
    explanation: str
    raised_at: str
    status: AlertStatus
    case_id: str | None  # None: suppressed, or not routed to a case yet
    rule_config_version: int
    scored_at_position: int
    chain_head: str | None


class AlertPage(BaseModel):
    items: list[AlertView]
    next_cursor: str | None


class EvidenceEvent(BaseModel):
    notification_id: int
    version: int
    event_type: str
    timestamp: str
    transaction_id: str | None
    payload: dict[str, Any]
    hash: str | None
    previous_hash: str | None
    actor: Actor
    correlation_id: str | None


class Verdict(BaseModel):
    reproduced: bool
    rule: RuleName
    positions: list[int]
    transaction_ids: list[str]
    explanation: str | None


class EvidenceOut(BaseModel):
    alert: AlertView
    rule_config_version: int
    rule_config: dict[str, Any]
    evidence: list[EvidenceEvent]
    chain_head_matches: bool
    verdict: Verdict


From = Annotated[
    Instant | None,
    Query(alias="from", description="ISO 8601 with a zone; alerts raised at or after it."),
]
To = Annotated[Instant | None, Query(description="ISO 8601 with a zone; alerts raised before it.")]
BranchFilter = Annotated[str | None, Query(pattern=f"^{BRANCH_PATTERN.pattern}$")]


# --- Routes ---------------------------------------------------------------------------


@router.get(
    "",
    response_model=AlertPage,
    responses=problem_responses(),
    summary="Alerts, newest first, filtered by status, severity, rule, account, branch, time",
)
async def list_alerts(
    who: AlertsReader,
    read_side: ReadSideDep,
    status: Annotated[AlertStatus | None, Query()] = None,
    severity: Annotated[Severity | None, Query()] = None,
    rule: Annotated[RuleName | None, Query()] = None,
    account_id: Annotated[UUID | None, Query()] = None,
    branch: BranchFilter = None,
    from_: From = None,
    to: To = None,
    limit: Limit = PAGE_SIZE_DEFAULT,
    cursor: Cursor = None,
) -> Response:
    if from_ is not None and to is not None and from_ > to:
        raise QueryInvalid("from", "must not be after `to`")
    after = _alert_after(cursor)
    filters: AlertFilters = {
        "severity": severity,
        "rule": rule,
        "account_id": account_id,
        "branch": branch,
        "from_": from_,
        "to": to,
    }
    rows = await alerts_page(read_side.store, status, filters, after, limit)
    return json_reply(page_reply(rows, limit, alert_view, _alert_cursor))


@router.get(
    "/{alert_id}",
    response_model=AlertView,
    responses=problem_responses("alert_not_found"),
    summary="One alert",
)
async def get_alert(alert_id: UUID, who: AlertsReader, read_side: ReadSideDep) -> Response:
    return json_reply(alert_view(await fetch_alert(read_side, alert_id)))


@router.get(
    "/{alert_id}/evidence",
    response_model=EvidenceOut,
    responses=problem_responses("alert_not_found"),
    summary="The events the rule saw, rebuilt from the event store, and the re-run verdict",
)
async def get_evidence(
    alert_id: UUID, who: EvidenceReader, read_side: ReadSideDep, ledger: LedgerDep
) -> Response:
    row = await fetch_alert(read_side, alert_id)
    parameters = await rule_config(read_side.store, row["rule_config_version"])
    # Configurations are stored before any alert names them and never deleted.
    assert parameters is not None, f"rule configuration {row['rule_config_version']} is missing"
    evidence = await asyncio.to_thread(rebuild_in_snapshot, ledger, row, parameters)
    return json_reply({"alert": alert_view(row), **evidence})


# --- Helpers --------------------------------------------------------------------------


async def fetch_alert(read_side: ReadSide, alert_id: UUID) -> AlertRow:
    """The alert row with its case's status (`case_status`); 404 if there is none."""
    row = await read_alert(read_side.store, alert_id)
    if row is None:
        raise AlertNotFound(f"alert {alert_id} not found")
    return row


def alert_view(row: AlertRow) -> dict[str, Any]:
    """A `readmodel.alerts` row (with `case_status`) as the contract shows an alert."""
    return {
        "alert_id": str(row["alert_id"]),
        "rule": row["rule"],
        "severity": row["severity"],
        "account_id": str(row["account_id"]),
        "branch": row["branch"],
        "transaction_ids": row["transaction_ids"],
        "positions": row["positions"],
        "explanation": row["explanation"],
        "raised_at": format_timestamp(row["raised_at"]),
        "status": _status(row["case_status"]),
        "case_id": None if row["case_id"] is None else str(row["case_id"]),
        "rule_config_version": row["rule_config_version"],
        "scored_at_position": row["notification_id"],
        "chain_head": row["chain_head"],
    }


def _status(case_status: str | None) -> str:
    if case_status in ("closed", "suppressed"):
        return case_status
    return "open"


def _alert_after(cursor: str | None) -> tuple[datetime, UUID] | None:
    if cursor is None:
        return None
    raised_at, alert_id = decode_cursor(cursor, ALERTS_CURSOR, 2)
    try:
        moment = datetime.fromisoformat(raised_at)
        identifier = UUID(alert_id)
    except (TypeError, ValueError, AttributeError):
        raise QueryInvalid("cursor", "not a cursor of this list") from None
    if moment.tzinfo is None:
        raise QueryInvalid("cursor", "not a cursor of this list")
    return moment, identifier


def _alert_cursor(row: AlertRow) -> str:
    return encode_cursor(ALERTS_CURSOR, [row["raised_at"].isoformat(), str(row["alert_id"])])
