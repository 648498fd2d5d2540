"""Export routes of the query API: make a signed export, list those made, fetch one.

An export is written under `VIGIL_EXPORT_DIR/<export id>/` (default `var/exports`) by the
same code as `vigil audit export`, recorded in `public.audit_exports` and in the access
log. The request waits for the whole export (about 10^4-10^5 events/s, see the README);
files, not the reply, carry the events. A remote auditor fetches them as one `.tar.gz`
(`export-<id>/` with the manifest, which holds the signature, the events and the public
keys), which `vigil audit verify-export` checks once unpacked.
"""

from __future__ import annotations

import asyncio
import os
import tarfile
import tempfile
import uuid
from datetime import datetime
from pathlib import Path
from typing import Annotated, Any, Final, Literal

from eventsourcing.persistence import InterfaceError, OperationalError
from fastapi import APIRouter, Depends, Request
from psycopg import Error as PsycopgError
from pydantic import BaseModel, ConfigDict, Field
from starlette.background import BackgroundTask
from starlette.responses import FileResponse, Response

from domain.errors import DomainError, Unavailable, ValidationFailed
from domain.integrity import format_timestamp
from infrastructure.audit.access_log import ExportRow, export_registered, exports_page
from infrastructure.audit.export import ExportError, default_export_root, export_events
from infrastructure.audit.export_verify import MANIFEST_FILE
from infrastructure.settings import Settings
from interfaces.api.http.auth import Principal, require
from interfaces.api.http.deps import SettingsDep, json_reply
from interfaces.api.http.instants import Instant
from interfaces.api.http.json_body import JsonBodyRoute
from interfaces.api.http.middleware import current_correlation_id
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
from interfaces.api.query.routes.audit import record_access
from interfaces.api.query.views import Actor

router = APIRouter(prefix="/v1/audit/exports", tags=["audit"], route_class=JsonBodyRoute)

Exporter = Annotated[Principal, Depends(require("audit.export"))]

EXPORTS_CURSOR: Final = "audit_exports"
ARCHIVE_MEDIA_TYPE: Final = "application/gzip"


class ExportNotFound(DomainError):
    # The generic 404 code: an export is not a domain object with a code of its own.
    code = "not_found"
    title = "Not found"


class ExportIn(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    from_: Instant = Field(alias="from")
    to: Instant
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
    return json_reply({"export_id": str(export_id), "manifest": manifest}, 201)


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
    after = None if cursor is None else _export_after(cursor)
    rows = await exports_page(read_side.store, after, limit)
    return json_reply(page_reply(rows, limit, _export_item, _export_cursor))


def _export_item(row: ExportRow) -> dict[str, Any]:
    account_id = row["account_id"]
    return {
        "export_id": str(row["export_id"]),
        "range": {
            "from": format_timestamp(row["range_from"]),
            "to": format_timestamp(row["range_to"]),
        },
        "account_id": None if account_id is None else str(account_id),
        "format": row["format"],
        "total": row["total"],
        "exported_by": {"subject": row["exported_by_subject"], "role": row["exported_by_role"]},
        "exported_at": format_timestamp(row["exported_at"]),
    }


def _export_cursor(row: ExportRow) -> str:
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


@router.get(
    "/{export_id}",
    responses=problem_responses("not_found"),
    summary="The signed manifest of one export",
)
async def get_manifest(
    export_id: uuid.UUID,
    request: Request,
    who: Exporter,
    read_side: ReadSideDep,
    settings: SettingsDep,
) -> Response:
    directory = await _export_directory(export_id, read_side, settings)
    await record_access(request, who, "audit.export_manifest", {"export_id": str(export_id)})
    manifest = await asyncio.to_thread((directory / MANIFEST_FILE).read_bytes)
    return Response(manifest, media_type="application/json")


@router.get(
    "/{export_id}/archive",
    response_class=FileResponse,
    responses={
        200: {"content": {ARCHIVE_MEDIA_TYPE: {}}},
        **problem_responses("not_found"),
    },
    summary="One export as a .tar.gz: its manifest (with the signature), events and keys",
)
async def get_archive(
    export_id: uuid.UUID,
    request: Request,
    who: Exporter,
    read_side: ReadSideDep,
    settings: SettingsDep,
) -> Response:
    directory = await _export_directory(export_id, read_side, settings)
    await record_access(request, who, "audit.export_archive", {"export_id": str(export_id)})
    name = f"export-{export_id}"
    path = await asyncio.to_thread(_pack, directory, name)
    return FileResponse(
        path,
        media_type=ARCHIVE_MEDIA_TYPE,
        filename=f"{name}.tar.gz",
        background=BackgroundTask(os.unlink, path),
    )


async def _export_directory(export_id: uuid.UUID, read_side: ReadSide, settings: Settings) -> Path:
    registered = await export_registered(read_side.store, export_id)
    directory = default_export_root(settings) / str(export_id)
    if not registered or not (directory / MANIFEST_FILE).is_file():
        # Registered but its files gone (another host, cleaned) is as absent to a client.
        raise ExportNotFound(f"no export {export_id} on this server")
    return directory


def _pack(directory: Path, name: str) -> str:
    # On disk, not in memory: an export may hold millions of events.
    handle, path = tempfile.mkstemp(prefix="vigil-export-", suffix=".tar.gz")
    with os.fdopen(handle, "wb") as out, tarfile.open(fileobj=out, mode="w:gz") as archive:
        for child in sorted(directory.iterdir()):
            archive.add(child, arcname=f"{name}/{child.name}", recursive=False)
    return path
