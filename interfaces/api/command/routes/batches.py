"""Batches: up to `batch_items_max` movements, applied in order, each atomic on its own,
committed together in one event-store transaction."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Response
from pydantic import ValidationError

from application.commands import Outcome, Submission
from domain.errors import DomainError, ValidationFailed
from infrastructure.metrics import record_command_outcome
from interfaces.api.command.deps import (
    CommandsDep,
    IdempotencyKeyHeader,
    submission,
)
from interfaces.api.command.responses import BatchOut
from interfaces.api.command.schemas import (
    BatchIn,
    DepositItem,
    TransferItem,
    batch_item_adapter,
    movement_command,
    resolve_item_id,
)
from interfaces.api.http.auth import Principal, require
from interfaces.api.http.deps import SettingsDep, json_reply
from interfaces.api.http.json_body import JsonBodyRoute
from interfaces.api.http.problems import problem_responses

router = APIRouter(prefix="/v1/batches", tags=["batches"], route_class=JsonBodyRoute)

BatchSubmitter = Annotated[Principal, Depends(require("batch.submit"))]


@router.post(
    "",
    response_model=BatchOut,
    responses=problem_responses(),
    summary="Submit up to 1,000 deposits, withdrawals and transfers",
)
async def submit_batch(
    body: BatchIn,
    who: BatchSubmitter,
    commands: CommandsDep,
    settings: SettingsDep,
    idempotency_key: IdempotencyKeyHeader = None,
) -> Response:
    if len(body.items) > settings.batch_items_max:
        raise ValidationFailed(
            f"a batch holds at most {settings.batch_items_max} items, not {len(body.items)}",
            field="body.items",
        )
    results: list[dict[str, Any] | None] = [None] * len(body.items)
    indexes: list[int] = []
    submissions: list[Submission] = []
    for index, raw in enumerate(body.items):
        try:
            submissions.append(_item_submission(raw, index, who, settings, idempotency_key))
            indexes.append(index)
        except DomainError as error:
            results[index] = _error(index, error.code, error.detail)
        except ValidationError as error:
            results[index] = _error(index, "validation_error", _describe(error))
    for index, outcome in zip(indexes, await commands.submit(submissions), strict=True):
        results[index] = _result(index, outcome)
    for result in results:
        assert result is not None, "every item has a result"
        record_command_outcome("batch.item", result.get("code", "ok"))
    return json_reply({"results": results}, 200)


def _item_submission(
    raw: dict[str, Any],
    index: int,
    who: Principal,
    settings: SettingsDep,
    idempotency_key: str | None,
) -> Submission:
    item = batch_item_adapter.validate_python(raw)
    transaction_id = resolve_item_id(item.transaction_id, idempotency_key, who.subject, index)
    if isinstance(item, TransferItem):
        return submission(item.to_command(transaction_id, settings.amount_max), who)
    kind: Literal["deposit", "withdrawal"] = (
        "deposit" if isinstance(item, DepositItem) else "withdrawal"
    )
    command = movement_command(kind, item.account_id, item, transaction_id, settings.amount_max)
    return submission(command, who)


def _result(index: int, outcome: Outcome) -> dict[str, Any]:
    if outcome.error is not None:
        return _error(index, outcome.error.code, outcome.error.detail)
    assert outcome.body is not None
    result: dict[str, Any] = {"index": index, "status": "ok", **outcome.body}
    if outcome.replayed:
        result["replayed"] = True
    return result


def _error(index: int, code: str, detail: str) -> dict[str, Any]:
    return {"index": index, "status": "error", "code": code, "detail": detail}


def _describe(error: ValidationError) -> str:
    parts = []
    for problem in error.errors(include_url=False, include_input=False)[:5]:
        field = ".".join(str(p) for p in problem["loc"]) or "item"
        parts.append(f"{field}: {problem['msg']}")
    return "; ".join(parts)
