"""Audit queries over the event store: an account exactly as it was at a moment or version.

Rebuilt from the stored events alone (never a read model), by the aggregate's own
`mutate`, so the state an auditor sees is the state the command side decided with.
Synchronous: callers on an event loop run it in a worker thread.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Final
from uuid import UUID

from application.ledger import Ledger
from domain.account import Account
from domain.errors import AccountNotFound, EventUnreadable, ValidationFailed
from domain.integrity import format_timestamp
from domain.money import format_amount

# Events decoded per round trip: memory stays bounded however long the history.
STATE_PAGE_EVENTS: Final = 1_000


@dataclass(frozen=True, slots=True)
class AccountState:
    """An account rebuilt to `account.version`; `last_event_at` is that version's time."""

    account: Account
    as_of: datetime | None
    last_event_at: datetime


def account_state(
    ledger: Ledger,
    account_id: UUID,
    *,
    as_of: datetime | None = None,
    version: int | None = None,
) -> AccountState:
    """The account as of a moment (the last event stamped at or before it) or a version.

    Exactly one of `as_of` and `version` (422 otherwise). 404 `account_not_found` if the
    account did not exist then (before its opening, or a version it never reached).
    """
    if (as_of is None) == (version is None):
        raise ValidationFailed("give exactly one of as_of and version", field="query.as_of")
    if as_of is not None and as_of.tzinfo is None:
        raise ValidationFailed("as_of needs a time zone", field="query.as_of")
    if version is not None and version < 1:
        raise ValidationFailed("version starts at 1", field="query.version")
    if version is not None:
        account = _rebuild_to_version(ledger, account_id, version)
    else:
        assert as_of is not None
        account = _rebuild_as_of(ledger, account_id, as_of)
    return AccountState(account=account, as_of=as_of, last_event_at=account.modified_on)


def state_view(state: AccountState) -> dict[str, Any]:
    """The reply of `GET /v1/audit/accounts/{id}/state` (amounts in the currency's places)."""
    account = state.account
    currency = account.currency
    return {
        "account_id": str(account.id),
        "version": account.version,
        "as_of": format_timestamp(state.as_of if state.as_of else state.last_event_at),
        "last_event_at": format_timestamp(state.last_event_at),
        "owner": account.owner,
        "branch": account.branch,
        "currency": currency,
        "status": account.status.value,
        "balance": format_amount(account.balance_minor, currency),
        "available_balance": format_amount(account.available_minor, currency),
        "held": format_amount(account.held_minor, currency),
        "overdraft_limit": format_amount(account.overdraft_limit_minor, currency),
        "last_hash": account.last_hash,
    }


def _rebuild_to_version(ledger: Ledger, account_id: UUID, version: int) -> Account:
    account: Account | None = None
    for event in _account_events(ledger, account_id, lte=version):
        account = _applied(account, event)
    if account is None:
        raise AccountNotFound(f"account {account_id} does not exist")
    if account.version != version:
        raise AccountNotFound(
            f"account {account_id} has no version {version} (latest {account.version})"
        )
    return account


def _rebuild_as_of(ledger: Ledger, account_id: UUID, as_of: datetime) -> Account:
    """The state after the highest version stamped at or before `as_of`.

    Clocks of several processes need not agree, so a later version may carry an earlier
    time. The whole history is read: state at version N includes every event up to N,
    whatever its stamp, and only the last qualifying version decides. A copy is kept only
    where a qualifying run of events ends, usually once.
    """
    account: Account | None = None
    qualified: Account | None = None
    qualified_is_current = False
    for event in _account_events(ledger, account_id, lte=None):
        if event.timestamp > as_of and qualified_is_current:
            qualified = copy.deepcopy(account)
            qualified_is_current = False
        account = _applied(account, event)
        if event.timestamp <= as_of:
            qualified, qualified_is_current = None, True
    if account is None:
        raise AccountNotFound(f"account {account_id} does not exist")
    if qualified_is_current:
        return account
    if qualified is None:
        raise AccountNotFound(f"account {account_id} was opened after {format_timestamp(as_of)}")
    return qualified


def _applied(account: Account | None, event: Account.Event) -> Account:
    mutated = event.mutate(account)
    assert isinstance(mutated, Account), "an account's stream rebuilds an account"
    assert mutated.version == event.originator_version, "versions follow one another"
    assert mutated.last_hash == event.hash, "the chain head is the last event's hash"
    return mutated


def _account_events(ledger: Ledger, account_id: UUID, lte: int | None) -> Iterator[Account.Event]:
    after = 0
    while True:
        page = ledger.recorder.select_events(account_id, gt=after, lte=lte, limit=STATE_PAGE_EVENTS)
        for stored in page:
            try:
                event = ledger.mapper.to_domain_event(stored)
            except Exception as error:
                raise EventUnreadable.of(
                    f"version {stored.originator_version} of account {account_id}",
                    error,
                    "and the state asked for needs it",
                ) from error
            if not isinstance(event, Account.Event):
                # A case or watchlist id is not an account's.
                raise AccountNotFound(f"account {account_id} does not exist")
            yield event
        if len(page) < STATE_PAGE_EVENTS:
            return
        after = page[-1].originator_version
