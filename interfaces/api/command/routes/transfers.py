"""Transfers between two accounts: both sides in one event-store transaction."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Response

from interfaces.api.command.deps import (
    CommandsDep,
    IdempotencyKeyHeader,
    execute,
    outcome_reply,
    submission,
)
from interfaces.api.command.responses import HELD_FOR_REVIEW_RESPONSE, TransferOut
from interfaces.api.command.routes.accounts import MONEY_PROBLEMS
from interfaces.api.command.schemas import TransferIn, resolve_id
from interfaces.api.http.auth import Principal, require
from interfaces.api.http.deps import SettingsDep
from interfaces.api.http.json_body import JsonBodyRoute
from interfaces.api.http.problems import problem_responses

router = APIRouter(prefix="/v1/transfers", tags=["transfers"], route_class=JsonBodyRoute)

Transferrer = Annotated[Principal, Depends(require("transfer.create"))]


@router.post(
    "",
    status_code=201,
    response_model=TransferOut,
    responses={**problem_responses(*MONEY_PROBLEMS), **HELD_FOR_REVIEW_RESPONSE},
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
