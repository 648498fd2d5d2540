"""Alert routes of the query API: the list, one alert, and its evidence re-run from the
event store (the API contract, "Alerts and cases").

An alert's `status` is its case's: `closed` once the case is closed, else `open` (an
alert exists before the case opener has opened its case, and before the cases read
model exists at all).
"""

from __future__ import annotations

import asyncio
from datetime import datetime
from typing import Annotated, Any, Final, Literal, cast
from uuid import UUID

from eventsourcing.persistence import InterfaceError, OperationalError
from fastapi import APIRouter, Depends, Query
from psycopg import AsyncConnection, sql
from psycopg.rows import DictRow
from pydantic import AwareDatetime, BaseModel
from starlette.responses import Response

from application.ledger import Ledger
from domain.errors import DomainError, Unavailable
from domain.text import BRANCH_PATTERN
from infrastructure.eventstore.recorder import VigilRecorder
from infrastructure.monitoring.evidence import rebuild_evidence
from infrastructure.readmodels.readstore import STATEMENT_TIMEOUT_MS
from infrastructure.readmodels.schema import SCHEMA
from interfaces.api.http.auth import Principal, require
from interfaces.api.http.problems import problem_responses
from interfaces.api.query.deps import LedgerDep, ReadSide, ReadSideDep
from interfaces.api.query.pagination import (
    PAGE_SIZE_DEFAULT,
    Cursor,
    Limit,
    QueryInvalid,
    decode_cursor,
    encode_cursor,
    equal_to,
    page_reply,
    where_all,
)
from interfaces.api.query.views import Actor, iso_utc, json_reply

router = APIRouter(prefix="/v1/alerts", tags=["alerts"])

AlertsReader = Annotated[Principal, Depends(require("alerts.read"))]
EvidenceReader = Annotated[Principal, Depends(require("alerts.evidence"))]

AlertStatus = Literal["open", "closed"]
Severity = Literal["critical", "high", "medium"]
RuleName = Literal[
    "large_transaction",
    "structuring",
    "velocity",
    "pass_through",
    "new_account_outflow",
    "dormant_reactivation",
    "watchlist",
    # Not a rule: an event a consumer could not apply, so the rules never saw it.
    "quarantined_event",
]

ALERTS_CURSOR: Final = "alerts"
ALERTS_TABLE: Final = f"{SCHEMA}.alerts"
CASES_TABLE: Final = f"{SCHEMA}.cases"

_schema: Final = sql.Identifier(SCHEMA)
TABLES_PRESENT: Final = (
    "SELECT to_regclass(%(alerts)s) IS NOT NULL AS alerts, "
    "to_regclass(%(cases)s) IS NOT NULL AS cases"
)
ALERT_COLUMNS: Final = sql.SQL(
    "a.alert_id, a.rule, a.severity, a.account_id, a.branch, a.transaction_ids, a.positions, "
    "a.explanation, a.raised_at, a.notification_id, a.chain_head, a.rule_config_version, "
    "a.case_id"
)
RULE_CONFIG: Final = "SELECT parameters FROM public.rule_configs WHERE version = %(version)s"


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
    case_id: str
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
    AwareDatetime | None,
    Query(alias="from", description="ISO 8601 with a zone; alerts raised at or after it."),
]
To = Annotated[
    AwareDatetime | None, Query(description="ISO 8601 with a zone; alerts raised before it.")
]
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
    filters = {
        "severity": severity,
        "rule": rule,
        "account_id": account_id,
        "branch": branch,
        "from": from_,
        "to": to,
    }
    async with read_side.store.connection() as conn:
        alerts, cases = await _tables_present(conn)
        if not alerts or (status == "closed" and not cases):
            rows: list[dict[str, Any]] = []
        else:
            cursor_ = await conn.execute(*_alerts_query(cases, status, filters, after, limit))
            rows = await cursor_.fetchall()
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
    config = await read_side.store.fetch_one(RULE_CONFIG, {"version": row["rule_config_version"]})
    # Configurations are stored before any alert names them and never deleted.
    assert config is not None, f"rule configuration {row['rule_config_version']} is missing"
    evidence = await asyncio.to_thread(_rebuild, ledger, row, config["parameters"])
    return json_reply({"alert": alert_view(row), **evidence})


# --- Helpers --------------------------------------------------------------------------


async def fetch_alert(read_side: ReadSide, alert_id: UUID) -> dict[str, Any]:
    """The alert row with its case's status (`case_status`); 404 if there is none."""
    async with read_side.store.connection() as conn:
        alerts, cases = await _tables_present(conn)
        row = None
        if alerts:
            query = sql.SQL("SELECT {columns}, {status} FROM {schema}.alerts a{join} {where}")
            cursor = await conn.execute(
                query.format(
                    **_case_parts(cases), where=sql.SQL("WHERE a.alert_id = %(alert_id)s")
                ),
                {"alert_id": alert_id},
            )
            row = await cursor.fetchone()
    if row is None:
        raise AlertNotFound(f"alert {alert_id} not found")
    return row


def alert_view(row: Any) -> dict[str, Any]:
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
        "raised_at": iso_utc(row["raised_at"]),
        "status": "closed" if row["case_status"] == "closed" else "open",
        "case_id": str(row["case_id"]),
        "rule_config_version": row["rule_config_version"],
        "scored_at_position": row["notification_id"],
        "chain_head": row["chain_head"],
    }


async def _tables_present(conn: AsyncConnection[DictRow]) -> tuple[bool, bool]:
    # The query API may start before the alerts worker and the cases projection have
    # created their tables: then there are no alerts, or none whose case is closed.
    cursor = await conn.execute(TABLES_PRESENT, {"alerts": ALERTS_TABLE, "cases": CASES_TABLE})
    row = await cursor.fetchone()
    assert row is not None, "a SELECT without FROM returns one row"
    return bool(row["alerts"]), bool(row["cases"])


def _case_parts(cases: bool) -> dict[str, sql.Composable]:
    if not cases:
        return {
            "columns": ALERT_COLUMNS,
            "status": sql.SQL("NULL::text AS case_status"),
            "schema": _schema,
            "join": sql.SQL(""),
        }
    return {
        "columns": ALERT_COLUMNS,
        "status": sql.SQL("c.status AS case_status"),
        "schema": _schema,
        "join": sql.SQL(" LEFT JOIN {schema}.cases c ON c.case_id = a.case_id").format(
            schema=_schema
        ),
    }


def _alerts_query(
    cases: bool,
    status: str | None,
    filters: dict[str, Any],
    after: tuple[datetime, UUID] | None,
    limit: int,
) -> tuple[sql.Composed, dict[str, Any]]:
    params: dict[str, Any] = {"limit": limit + 1}
    equal = {c: filters[c] for c in ("severity", "rule", "account_id", "branch")}
    conditions = equal_to(equal, params, table="a")
    if filters["from"] is not None:
        conditions.append(sql.SQL("a.raised_at >= %(from)s"))
        params["from"] = filters["from"]
    if filters["to"] is not None:
        conditions.append(sql.SQL("a.raised_at < %(to)s"))
        params["to"] = filters["to"]
    if status == "closed":
        conditions.append(sql.SQL("c.status = 'closed'"))
    elif status == "open" and cases:
        conditions.append(sql.SQL("c.status IS DISTINCT FROM 'closed'"))
    if after is not None:
        # Newest first, ties by id: the next page sorts strictly after the last row shown.
        conditions.append(
            sql.SQL(
                "(a.raised_at < %(after_at)s OR (a.raised_at = %(after_at)s "
                "AND a.alert_id > %(after_id)s))"
            )
        )
        params["after_at"], params["after_id"] = after
    query = sql.SQL(
        "SELECT {columns}, {status} FROM {schema}.alerts a{join}{where} "
        "ORDER BY a.raised_at DESC, a.alert_id LIMIT %(limit)s"
    ).format(**_case_parts(cases), where=where_all(conditions))
    return query, params


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


def _alert_cursor(row: Any) -> str:
    return encode_cursor(ALERTS_CURSOR, [row["raised_at"].isoformat(), str(row["alert_id"])])


def _rebuild(ledger: Ledger, row: dict[str, Any], parameters: dict[str, Any]) -> dict[str, Any]:
    """In a worker thread: one read-only snapshot of the event store, from the ledger's
    own pool (bounded), so the rebuild sees one consistent history."""
    datastore = cast(VigilRecorder, ledger.recorder).datastore
    try:
        with datastore.get_connection() as conn, conn.transaction(force_rollback=True):
            conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ READ ONLY")
            conn.execute(f"SET LOCAL statement_timeout = {STATEMENT_TIMEOUT_MS}")
            return rebuild_evidence(ledger, conn, row, parameters)
    except (OperationalError, InterfaceError) as error:
        raise Unavailable("the event store is not reachable; retry") from error
