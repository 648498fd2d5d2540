"""Export routes of the query API: make a signed export, list those made.

An export is written under `VIGIL_EXPORT_DIR/<export id>/` (default `var/exports`) by the
same code as `vigil audit export`, recorded in `public.audit_exports` and in the access
log. The request waits for the whole export (about 10^4-10^5 events/s, see the README);
files, not the reply, carry the events.
"""

from __future__ import annotations

import asyncio
import uuid
from datetime import datetime
from typing import Annotated, Any, Final, Literal

import orjson
from eventsourcing.persistence import InterfaceError, OperationalError
from fastapi import APIRouter, Depends, Request
from psycopg import Error as PsycopgError
from pydantic import AwareDatetime, BaseModel, ConfigDict, Field
from starlette.responses import Response

from domain.errors import Unavailable, ValidationFailed
from infrastructure.export import ExportError, default_export_root, export_events
from interfaces.api.deps import SettingsDep
from interfaces.api.json_body import JsonBodyRoute
from interfaces.api.middleware import current_correlation_id
from interfaces.api.problems import problem_responses
from interfaces.api.query.audit import record_access
from interfaces.api.query.deps import LedgerDep, ReadSideDep
from interfaces.api.query.pagination import (
    PAGE_SIZE_DEFAULT,
    Cursor,
    Limit,
    QueryInvalid,
    decode_cursor,
    encode_cursor,
    page_reply,
)
from interfaces.api.query.views import Actor, iso_utc, json_reply
from interfaces.auth import Principal, require

router = APIRouter(prefix="/v1/audit/exports", tags=["audit"], route_class=JsonBodyRoute)

Exporter = Annotated[Principal, Depends(require("audit.export"))]

EXPORTS_CURSOR: Final = "audit_exports"
EXPORTS_PAGE: Final = (
    "SELECT export_id, range_from, range_to, account_id, format, total, exported_by_subject, "
    "exported_by_role, exported_at FROM public.audit_exports "
    "WHERE (exported_at, export_id) < (%(at)s, %(id)s) "
    "ORDER BY exported_at DESC, export_id DESC LIMIT %(limit)s"
)
EXPORTS_FIRST_PAGE: Final = (
    "SELECT export_id, range_from, range_to, account_id, format, total, exported_by_subject, "
    "exported_by_role, exported_at FROM public.audit_exports "
    "ORDER BY exported_at DESC, export_id DESC LIMIT %(limit)s"
)


class ExportIn(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    from_: AwareDatetime = Field(alias="from")
    to: AwareDatetime
    account_id: uuid.UUID | None = None
    format: Literal["jsonl", "csv"] = "jsonl"


class Range(BaseModel):
    from_: str = Field(alias="from")
    to: str


class ExportOut(BaseModel):
    export_id: str
    manifest: dict[str, Any]


class ExportItem(BaseModel):
    export_id: str
    range: Range
    account_id: str | None
    format: str
    total: int
    exported_by: Actor
    exported_at: str


class ExportPage(BaseModel):
    items: list[ExportItem]
    next_cursor: str | None


@router.post(
    "",
    status_code=201,
    response_model=ExportOut,
    responses=problem_responses(),
    summary="Make a signed export of the events stamped in [from, to)",
)
async def create_export(
    body: ExportIn, who: Exporter, ledger: LedgerDep, settings: SettingsDep
) -> Response:
    if body.from_ >= body.to:
        raise ValidationFailed("`from` must be before `to`", field="body.from")
    export_id = uuid.uuid4()
    out_dir = default_export_root(settings) / str(export_id)
    try:
        manifest = await asyncio.to_thread(
            export_events,
            settings,
            body.from_,
            body.to,
            body.account_id,
            body.format,
            out_dir,
            who.actor,
            ledger=ledger,
            export_id=export_id,
            correlation_id=current_correlation_id(),
        )
    except ExportError as error:
        raise Unavailable(str(error)) from error
    except (OperationalError, InterfaceError, PsycopgError) as error:
        raise Unavailable("the event store is not reachable; retry") from error
    reply = {"export_id": str(export_id), "manifest": manifest}
    return Response(orjson.dumps(reply), status_code=201, media_type="application/json")


@router.get(
    "",
    response_model=ExportPage,
    responses=problem_responses(),
    summary="Exports made, newest first",
)
async def list_exports(
    request: Request,
    who: Exporter,
    read_side: ReadSideDep,
    limit: Limit = PAGE_SIZE_DEFAULT,
    cursor: Cursor = None,
) -> Response:
    await record_access(request, who, "audit.exports", {"cursor": cursor})
    if cursor is None:
        rows = await read_side.store.fetch_all(EXPORTS_FIRST_PAGE, {"limit": limit + 1})
    else:
        at, export_id = _export_after(cursor)
        params = {"at": at, "id": export_id, "limit": limit + 1}
        rows = await read_side.store.fetch_all(EXPORTS_PAGE, params)
    return json_reply(page_reply(rows, limit, _export_item, _export_cursor))


def _export_item(row: Any) -> dict[str, Any]:
    account_id = row["account_id"]
    return {
        "export_id": str(row["export_id"]),
        "range": {"from": iso_utc(row["range_from"]), "to": iso_utc(row["range_to"])},
        "account_id": None if account_id is None else str(account_id),
        "format": row["format"],
        "total": row["total"],
        "exported_by": {"subject": row["exported_by_subject"], "role": row["exported_by_role"]},
        "exported_at": iso_utc(row["exported_at"]),
    }


def _export_cursor(row: Any) -> str:
    return encode_cursor(EXPORTS_CURSOR, [row["exported_at"].isoformat(), str(row["export_id"])])


def _export_after(cursor: str) -> tuple[datetime, uuid.UUID]:
    at, export_id = decode_cursor(cursor, EXPORTS_CURSOR, 2)
    try:
        moment = datetime.fromisoformat(at)
        identifier = uuid.UUID(export_id)
    except (TypeError, ValueError, AttributeError):
        raise QueryInvalid("cursor", "not a cursor of this list") from None
    if moment.tzinfo is None:
        raise QueryInvalid("cursor", "not a cursor of this list")
    return moment, identifier
