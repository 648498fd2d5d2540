"""What the query routers share, built once in the app's lifespan and passed as one parameter."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Final

from fastapi import Depends, Query, Request

from application.ledger import Ledger
from infrastructure.readmodels.balances_cache import AccountCache
from infrastructure.readmodels.freshness import ChangeWaiters
from infrastructure.readmodels.readstore import ReadStore

# Aggregate versions are bigint in the store.
VERSION_MAX: Final = 2**63 - 1


@dataclass(frozen=True, slots=True)
class ReadSide:
    store: ReadStore
    cache: AccountCache
    waiters: ChangeWaiters


# Dependencies are coroutines: FastAPI would run plain functions in its thread pool.
async def _read_side(request: Request) -> ReadSide:
    read_side: ReadSide = request.app.state.read_side
    return read_side


async def _ledger(request: Request) -> Ledger:
    """The event store, for the routes that read it rather than the read models."""
    ledger: Ledger = request.app.state.ledger
    return ledger


ReadSideDep = Annotated[ReadSide, Depends(_read_side)]
LedgerDep = Annotated[Ledger, Depends(_ledger)]

MinVersion = Annotated[
    int | None,
    Query(
        ge=1,
        le=VERSION_MAX,
        description=(
            "Read your writes: the version a command reply carried. Waits up to 2 s for "
            "the projection, else 503 `projection_lagging` with `Retry-After`."
        ),
    ),
]
