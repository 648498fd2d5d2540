"""The one retry loop of the command side: an attempt that loses a race is tried again from
fresh state, a bounded number of times, with a capped, jittered back-off between attempts.

A race is lost when another writer took a version or a command id first (an integrity
error), or when PostgreSQL chose the attempt's transaction as the victim of a deadlock or a
serialization failure (SQLSTATE 40P01, 40001: say, with a process creating an index at
start). Either way the transaction was rolled back and wrote nothing, so trying again is
safe. Any other failure of the store is not retried here, since it may leave the outcome
unknown (a connection lost during the commit): the caller hears `Unavailable` (503, retry
later, with the same command id). When the attempts run out the caller hears `Unavailable`
too.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from typing import TypeVar

from eventsourcing.persistence import (
    IntegrityError,
    InterfaceError,
    OperationalError,
    PersistenceError,
)

from domain.errors import Unavailable

RETRY_BACKOFF_S_MAX = 0.25
# PostgreSQL's codes for a transaction it rolled back to break a cycle: nothing was written.
# (Not the whole class 40: 40003, "statement completion unknown", is no such promise.)
ROLLED_BACK_SQLSTATES = frozenset({"40001", "40P01"})

T = TypeVar("T")


def retrying(
    attempt: Callable[[bool], T],
    *,
    retries_max: int,
    backoff_s: float,
    on_failure: Callable[[], object] | None = None,
) -> T:
    """What `attempt` returns, once it does not lose a race; at most `retries_max` tries.

    `attempt` is told whether it is the last try (a group then holds back the commands
    that keep losing). `on_failure` runs after any failed try, whatever the error, before
    it is retried or raised (a group drops what it holds of its accounts).
    """
    assert retries_max > 0, retries_max
    for number in range(retries_max):
        try:
            return attempt(number == retries_max - 1)
        except BaseException as error:
            if on_failure is not None:
                on_failure()
            if not isinstance(error, PersistenceError):
                raise
            if not lost_race(error):
                raise unavailable(error) from error
            back_off(backoff_s, number)
    raise Unavailable(f"gave up after {retries_max} conflicting attempts")


def lost_race(error: BaseException) -> bool:
    """Whether the store refused the attempt as a whole and wrote nothing of it: another
    writer was first, or the database rolled the transaction back to break a deadlock or a
    serialization conflict (the driver's error, with its SQLSTATE, is the cause)."""
    if isinstance(error, IntegrityError):
        return True
    if not isinstance(error, PersistenceError):
        return False
    return getattr(error.__cause__, "sqlstate", None) in ROLLED_BACK_SQLSTATES


def unavailable(error: PersistenceError) -> Unavailable:
    """What a caller hears when the store failed otherwise than by a lost race: retry."""
    if isinstance(error, (OperationalError, InterfaceError)):
        return Unavailable(f"event store unreachable: {type(error).__name__}")
    return Unavailable(f"event store refused the write: {error}")


def back_off(backoff_s: float, attempt: int) -> None:
    """Sleep before another attempt: exponential, capped, jittered."""
    sleep_s = min(backoff_s * 2**attempt, RETRY_BACKOFF_S_MAX)
    time.sleep(sleep_s * (0.5 + random.random()))
