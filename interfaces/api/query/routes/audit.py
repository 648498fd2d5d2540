"""Audit routes of the query API: the full history, point-in-time state, the access log.

Everything here is read from the event store itself (decoded by the ledger's mapper),
never from a read model. Each read is first appended to `public.audit_access_log`
(who, what, when); a read that cannot be recorded is refused with 503.

`GET /v1/audit/events` filters through the event index (`public.event_index`). Where the
index does not exist yet, the store is scanned in notification order with only the
`account_id` filter, and the reply says `"index": false`; a time, type or actor filter
then answers 503 `unavailable` (run `vigil audit reindex`) rather than ignore the filter.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Mapping
from typing import Annotated, Any, Final
from uuid import UUID

import orjson
from eventsourcing.persistence import InterfaceError, OperationalError
from fastapi import APIRouter, Depends, Query, Request
from pydantic import BaseModel, Field
from starlette.responses import Response, StreamingResponse

from application.audit import account_state, state_view
from domain.errors import AccountNotFound, Unavailable
from domain.integrity import format_timestamp
from infrastructure.audit.access_log import (
    AccessFilters,
    AccessLog,
    AccessRecord,
    AccessRow,
    access_log_page,
)
from infrastructure.audit.event_stream import StorePage, StreamedPage, index_present
from infrastructure.audit.event_stream import account_events as read_account_events
from interfaces.api.http.auth import Principal, require
from interfaces.api.http.deps import json_reply
from interfaces.api.http.instants import Instant
from interfaces.api.http.middleware import current_correlation_id
from interfaces.api.http.problems import problem_responses
from interfaces.api.http.text import FilterText
from interfaces.api.query.deps import VERSION_MAX, LedgerDep, ReadSideDep
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

router = APIRouter(prefix="/v1/audit", tags=["audit"])

AuditReader = Annotated[Principal, Depends(require("audit.read"))]
AccessLogReader = Annotated[Principal, Depends(require("audit.access_log"))]

ACCOUNT_EVENTS_CURSOR: Final = "audit_account_events"
EVENTS_CURSOR: Final = "audit_events"
ACCESS_LOG_CURSOR: Final = "audit_access_log"
# The fields of an account's history item (the list; `mac` stays in exports).
HISTORY_FIELDS: Final = (
    "version",
    "notification_id",
    "event_type",
    "timestamp",
    "actor",
    "correlation_id",
    "transaction_id",
    "payload",
    "hash",
    "previous_hash",
)

EventType = Annotated[
    str | None, Query(alias="type", pattern=r"^[A-Za-z]{1,64}$", description="`Deposited`, ...")
]
ActorFilter = Annotated[FilterText | None, Query(description="The actor's subject.")]
From = Annotated[
    Instant | None,
    Query(alias="from", description="ISO 8601 with a zone; events stamped at or after it."),
]
To = Annotated[Instant | None, Query(description="ISO 8601 with a zone; events stamped before it.")]


# --- Reply models (the OpenAPI document) ----------------------------------------------


class HistoryEvent(BaseModel):
    """A stored event. One this server cannot decode carries `unreadable` (why) and null
    in every field its stored row cannot tell."""

    version: int
    notification_id: int
    event_type: str | None
    timestamp: str | None
    actor: Actor | None
    correlation_id: str | None
    transaction_id: str | None
    payload: dict[str, Any] | None
    hash: str | None
    previous_hash: str | None
    unreadable: str | None = Field(
        default=None, description="Present only on an event that cannot be decoded: why."
    )


class HistoryPage(BaseModel):
    items: list[HistoryEvent]
    next_cursor: str | None


class StoreEvent(HistoryEvent):
    aggregate_type: str | None
    aggregate_id: str
    account_id: str | None
    mac: str | None


class StoreEventPage(BaseModel):
    items: list[StoreEvent]
    next_cursor: str | None
    index: bool


class AccountStateView(BaseModel):
    account_id: str
    version: int
    as_of: str
    last_event_at: str
    owner: str
    branch: str
    currency: str
    status: str
    balance: str
    available_balance: str
    held: str  # what pending holds reserved then
    overdraft_limit: str
    last_hash: str


class AccessEntry(BaseModel):
    id: int
    at: str
    subject: str
    role: str
    action: str
    detail: dict[str, Any]
    correlation_id: str | None


class AccessPage(BaseModel):
    items: list[AccessEntry]
    next_cursor: str | None


async def record_access(
    request: Request, who: Principal, action: str, detail: Mapping[str, Any]
) -> None:
    """Append one audit read to the access log before serving it; 503 if that fails."""
    access_log: AccessLog = request.app.state.access_log
    await access_log.record(
        AccessRecord(
            subject=who.subject,
            role=who.role.value,
            action=action,
            detail=detail,
            correlation_id=current_correlation_id(),
        )
    )


# --- Routes ---------------------------------------------------------------------------


@router.get(
    "/accounts/{account_id}/events",
    response_model=HistoryPage,
    responses=problem_responses("account_not_found"),
    summary="Every stored event of an account, in version order, with its hash chain",
)
async def account_events(
    account_id: UUID,
    request: Request,
    who: AuditReader,
    read_side: ReadSideDep,
    ledger: LedgerDep,
    limit: Limit = PAGE_SIZE_DEFAULT,
    cursor: Cursor = None,
) -> Response:
    after = 0 if cursor is None else _int_cursor(cursor, ACCOUNT_EVENTS_CURSOR)
    await record_access(
        request, who, "audit.account_events", {"account_id": str(account_id), "after": after}
    )
    items = await read_account_events(read_side.store, ledger, account_id, after, limit)
    # An unreadable first event of unknown type is shown, not taken for another aggregate's.
    if after == 0 and (not items or items[0]["aggregate_type"] not in ("account", None)):
        raise AccountNotFound(f"account {account_id} not found")
    return json_reply(
        page_reply(
            items,
            limit,
            _history_item,
            lambda item: encode_cursor(ACCOUNT_EVENTS_CURSOR, [item["version"]]),
        )
    )


@router.get(
    "/events",
    response_model=StoreEventPage,
    responses=problem_responses(),
    summary="The whole store in notification order, filtered by time, type, actor, account",
)
async def store_events(
    request: Request,
    who: AuditReader,
    read_side: ReadSideDep,
    ledger: LedgerDep,
    from_: From = None,
    to: To = None,
    event_type: EventType = None,
    actor: ActorFilter = None,
    account_id: Annotated[UUID | None, Query()] = None,
    limit: Limit = PAGE_SIZE_DEFAULT,
    cursor: Cursor = None,
) -> Response:
    if from_ is not None and to is not None and from_ > to:
        raise QueryInvalid("from", "must not be after `to`")
    after = 0 if cursor is None else _int_cursor(cursor, EVENTS_CURSOR)
    filters: dict[str, Any] = {
        "from": from_,
        "to": to,
        "type": event_type,
        "actor": actor,
        "account_id": account_id,
    }
    indexed = await index_present(read_side.store)
    needs_index = [name for name in ("from", "to", "type", "actor") if filters[name] is not None]
    if not indexed and needs_index:
        raise Unavailable(f"the event index is not built yet; cannot filter by {needs_index}")
    detail = {
        "from": None if from_ is None else format_timestamp(from_),
        "to": None if to is None else format_timestamp(to),
        "type": event_type,
        "actor": actor,
        "account_id": None if account_id is None else str(account_id),
    }
    await record_access(request, who, "audit.events", {**detail, "after": after})
    page = await StorePage(read_side.store, ledger, indexed).open(filters, after, limit)
    return StreamingResponse(_streamed(page, indexed), media_type="application/json")


@router.get(
    "/accounts/{account_id}/state",
    response_model=AccountStateView,
    responses=problem_responses("account_not_found"),
    summary="An account exactly as it was at a moment (`as_of`) or a version, from the store",
)
async def account_state_at(
    account_id: UUID,
    request: Request,
    who: AuditReader,
    ledger: LedgerDep,
    as_of: Annotated[Instant | None, Query(description="ISO 8601 with a zone")] = None,
    version: Annotated[int | None, Query(ge=1, le=VERSION_MAX)] = None,
) -> Response:
    if (as_of is None) == (version is None):
        raise QueryInvalid("as_of", "give exactly one of `as_of` and `version`")
    detail = {
        "account_id": str(account_id),
        "as_of": None if as_of is None else format_timestamp(as_of),
        "version": version,
    }
    await record_access(request, who, "audit.account_state", detail)
    try:
        state = await asyncio.to_thread(
            account_state, ledger, account_id, as_of=as_of, version=version
        )
    except (OperationalError, InterfaceError) as error:
        raise Unavailable("the event store is not reachable; retry") from error
    return json_reply(state_view(state))


@router.get(
    "/access-log",
    response_model=AccessPage,
    responses=problem_responses(),
    summary="Who read or exported what, when: newest first, by subject, action or account",
)
async def access_log(
    request: Request,
    who: AccessLogReader,
    read_side: ReadSideDep,
    limit: Limit = PAGE_SIZE_DEFAULT,
    cursor: Cursor = None,
    subject: ActorFilter = None,
    action: Annotated[str | None, Query(pattern=r"^[a-z_.]{1,64}$")] = None,
    account_id: Annotated[UUID | None, Query()] = None,
) -> Response:
    before = VERSION_MAX if cursor is None else _int_cursor(cursor, ACCESS_LOG_CURSOR)
    filters = AccessFilters(
        subject=subject,
        action=action,
        account_id=None if account_id is None else str(account_id),
    )
    await record_access(request, who, "audit.access_log", {"before": before, **filters})
    rows = await access_log_page(read_side.store, before, limit, filters)
    return json_reply(
        page_reply(
            rows,
            limit,
            _access_view,
            lambda row: encode_cursor(ACCESS_LOG_CURSOR, [row["id"]]),
        )
    )


# --- Helpers --------------------------------------------------------------------------


def _int_cursor(cursor: str, kind: str) -> int:
    (value,) = decode_cursor(cursor, kind, 1)
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= VERSION_MAX:
        raise QueryInvalid("cursor", "not a cursor of this list")
    return int(value)


async def _streamed(page: StreamedPage, indexed: bool) -> AsyncIterator[bytes]:
    """The page's JSON written item by item as the events are decoded."""
    shown = 0
    try:
        yield b'{"items":['
        async with contextlib.aclosing(page.items()) as items:
            async for item in items:
                yield (b"," if shown else b"") + orjson.dumps(item)
                shown += 1
    finally:
        await page.close()
    last = page.last_position
    next_cursor = encode_cursor(EVENTS_CURSOR, [last]) if page.more and last is not None else None
    yield b'],"next_cursor":' + orjson.dumps(next_cursor)
    yield b',"index":' + (b"true" if indexed else b"false") + b"}"


def _history_item(item: Mapping[str, Any]) -> dict[str, Any]:
    shown = {name: item[name] for name in HISTORY_FIELDS}
    if "unreadable" in item:
        shown["unreadable"] = item["unreadable"]
    return shown


def _access_view(row: AccessRow) -> dict[str, Any]:
    return {
        "id": row["id"],
        "at": format_timestamp(row["at"]),
        "subject": row["subject"],
        "role": row["role"],
        "action": row["action"],
        "detail": row["detail"],
        "correlation_id": row["correlation_id"],
    }
