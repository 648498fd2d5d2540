"""Shared dependencies and reply helpers of the command API's routers."""

from __future__ import annotations

import uuid
from typing import Annotated

from fastapi import Depends, Header, Request, Response

from application.commands import Command, Outcome, Submission
from application.group_commit import GroupCommitter
from application.terms import HELD_FOR_REVIEW
from domain.integrity import Actor
from infrastructure.metrics import record_command_outcome
from interfaces.api.command.schemas import IdempotencyKey
from interfaces.api.http.auth import Principal
from interfaces.api.http.deps import json_reply
from interfaces.api.http.middleware import current_correlation_id
from interfaces.api.http.roles import Role

REPLAYED_HEADER = "Idempotent-Replayed"


# Dependencies are coroutines: FastAPI would run plain functions in its thread pool.
async def _commands(request: Request) -> GroupCommitter:
    # The group committer: this request's commands share a transaction with others'.
    commands: GroupCommitter = request.app.state.committer
    return commands


CommandsDep = Annotated[GroupCommitter, Depends(_commands)]
IdempotencyKeyHeader = Annotated[IdempotencyKey | None, Header(alias="Idempotency-Key")]


def submission(command: Command, principal: Principal) -> Submission:
    """The command with who sent it; tellers act only within their own branch."""
    return Submission(
        command=command,
        actor=Actor(principal.subject, principal.role.value),
        correlation_id=current_correlation_id() or str(uuid.uuid4()),
        branch_scope=principal.branch if principal.role is Role.TELLER else None,
    )


async def execute(commands: GroupCommitter, action: str, sub: Submission) -> Outcome:
    """Run one command; count its outcome; refusals leave through the problem handler."""
    outcome = (await commands.submit([sub]))[0]
    record_command_outcome(action, outcome.error.code if outcome.error else "ok")
    if outcome.error is not None:
        raise outcome.error
    return outcome


def outcome_reply(outcome: Outcome, status_code: int) -> Response:
    """The reply with `status_code`, or 202 for a command screening held for review (a
    replay of it too: the stored body says so)."""
    assert outcome.body is not None
    if outcome.body.get("status") == HELD_FOR_REVIEW:
        status_code = 202
    headers = {REPLAYED_HEADER: "true"} if outcome.replayed else None
    return json_reply(outcome.body, status_code, headers=headers)
