"""Transfers between two accounts: both sides in one event-store transaction."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Response

from interfaces.api.accounts import MONEY_PROBLEMS
from interfaces.api.deps import (
    CommandsDep,
    IdempotencyKeyHeader,
    SettingsDep,
    execute,
    outcome_reply,
    submission,
)
from interfaces.api.json_body import JsonBodyRoute
from interfaces.api.problems import problem_responses
from interfaces.api.responses import TransferOut
from interfaces.api.schemas import TransferIn, resolve_id
from interfaces.auth import Principal, require

router = APIRouter(prefix="/v1/transfers", tags=["transfers"], route_class=JsonBodyRoute)

Transferrer = Annotated[Principal, Depends(require("transfer.create"))]


@router.post(
    "",
    status_code=201,
    response_model=TransferOut,
    responses=problem_responses(*MONEY_PROBLEMS),
    summary="Transfer money between two accounts of the same currency",
)
async def create_transfer(
    body: TransferIn,
    who: Transferrer,
    commands: CommandsDep,
    settings: SettingsDep,
    idempotency_key: IdempotencyKeyHeader = None,
) -> Response:
    transaction_id = resolve_id(body.transaction_id, idempotency_key, who.subject)
    command = body.to_command(transaction_id, settings.amount_max)
    return outcome_reply(await execute(commands, "transfer.create", submission(command, who)), 201)
