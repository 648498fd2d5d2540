"""The command side's retry rule: what the store refused as a whole (a lost race, a deadlock
victim, a serialization failure) is tried again; a failure that may have written something
(a connection lost during the commit) is a 503 at once, never a second write."""

from __future__ import annotations

import psycopg.errors
import pytest
from eventsourcing.persistence import IntegrityError, OperationalError, PersistenceError

from application.retry import lost_race, retrying
from domain.errors import Unavailable


def _translated(driver_error: Exception) -> PersistenceError:
    """As eventsourcing's datastore raises it: its own class, the driver's error as cause."""
    try:
        try:
            raise driver_error
        except psycopg.OperationalError as error:
            raise OperationalError(str(error)) from error
    except OperationalError as translated:
        return translated


@pytest.mark.parametrize(
    "error",
    [
        IntegrityError("duplicate key value violates unique constraint"),
        _translated(psycopg.errors.DeadlockDetected("deadlock detected")),
        _translated(psycopg.errors.SerializationFailure("could not serialize access")),
    ],
)
def test_a_transaction_the_store_refused_whole_is_a_lost_race(error: Exception) -> None:
    assert lost_race(error)


@pytest.mark.parametrize(
    "error",
    [
        _translated(psycopg.errors.lookup("40003")("statement completion unknown")),
        _translated(psycopg.OperationalError("server closed the connection unexpectedly")),
        OperationalError("no cause"),
        ValueError("not the store's"),
    ],
)
def test_a_failure_with_an_unknown_outcome_is_no_lost_race(error: Exception) -> None:
    assert not lost_race(error)


def test_a_deadlock_victim_is_tried_again_and_its_retry_commits() -> None:
    tries: list[bool] = []
    failed: list[int] = []

    def attempt(last: bool) -> str:
        tries.append(last)
        if len(tries) == 1:
            raise _translated(psycopg.errors.DeadlockDetected("deadlock detected"))
        return "committed"

    outcome = retrying(
        attempt, retries_max=3, backoff_s=0.0, on_failure=lambda: failed.append(len(tries))
    )
    assert outcome == "committed"
    assert tries == [False, False]
    assert failed == [1]


def test_a_lost_connection_is_not_tried_again() -> None:
    tries: list[bool] = []

    def attempt(last: bool) -> str:
        tries.append(last)
        raise _translated(psycopg.OperationalError("server closed the connection unexpectedly"))

    with pytest.raises(Unavailable, match="unreachable"):
        retrying(attempt, retries_max=3, backoff_s=0.0)
    assert tries == [False]


def test_deadlocks_every_time_give_up_after_the_bound() -> None:
    tries: list[bool] = []

    def attempt(last: bool) -> str:
        tries.append(last)
        raise _translated(psycopg.errors.DeadlockDetected("deadlock detected"))

    with pytest.raises(Unavailable, match="gave up after 3"):
        retrying(attempt, retries_max=3, backoff_s=0.0)
    assert tries == [False, False, True]
