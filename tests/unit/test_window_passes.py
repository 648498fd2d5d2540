"""The rule window's fast passes give exactly what the plain definitions give, for any
window: movements in any time order (two command processes' clocks may disagree), young
and old accounts, evidence taken by several rules. A busy account's window is scanned
several times per event, so these passes avoid work; they must never change a verdict."""

from __future__ import annotations

import itertools
from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from domain.rules import window as window_module
from domain.rules.config import RulesConfig
from domain.rules.engine import evaluate, opened
from domain.rules.window import CREDIT, DEBIT, AccountWindow, Movement

T0 = datetime(2026, 1, 1, tzinfo=UTC)
RULES = ("velocity", "pass_through", "new_account_outflow")


@st.composite
def windows(draw: st.DrawFn) -> tuple[AccountWindow, datetime]:
    count = draw(st.integers(0, 40))
    offsets = draw(st.lists(st.integers(0, 10 * 86_400), min_size=count, max_size=count))
    if draw(st.booleans()):
        offsets.sort()  # the usual window, in time order: pruned by bisection
    movements = tuple(
        Movement(
            notification_id=n + 1,
            transaction_id=f"t{n}",
            at=T0 + timedelta(seconds=offset),
            kind="transfer_out" if n % 2 else "transfer_in",
            direction=DEBIT if n % 2 else CREDIT,
            amount_minor=100,
            currency="GBP",
            channel="api",
            counterparty_account_id=None,
        )
        for n, offset in enumerate(offsets)
    )
    ids = [m.notification_id for m in movements]
    used = {
        rule: frozenset(draw(st.lists(st.sampled_from(ids), max_size=len(ids))) if ids else [])
        for rule in draw(st.lists(st.sampled_from(RULES), unique=True))
    }
    opened_at = draw(st.none() | st.just(T0 + timedelta(seconds=draw(st.integers(0, 86_400)))))
    window = AccountWindow(
        account_id="a",
        opened_at=opened_at,
        movements=movements,
        used={rule: taken for rule, taken in used.items() if taken},
    )
    now = T0 + timedelta(seconds=draw(st.integers(0, 12 * 86_400)))
    return window, now


def reference_pruned(
    window: AccountWindow, now: datetime, keep_s: int, new_account_s: int
) -> AccountWindow:
    horizon = now - timedelta(seconds=keep_s)
    young_until = window.opened_at + timedelta(seconds=new_account_s) if window.opened_at else None
    kept = tuple(
        m
        for m in window.movements
        if m.at > horizon or (young_until is not None and m.at <= young_until)
    )
    kept = kept[max(0, len(kept) - window_module.WINDOW_MOVEMENTS_MAX) :]
    ids = {m.notification_id for m in kept}
    used = {r: frozenset(i for i in t if i in ids) for r, t in window.used.items()}
    return AccountWindow(
        account_id=window.account_id,
        opened_at=window.opened_at,
        movements=kept,
        used={r: t for r, t in used.items() if t},
    )


@given(windows(), st.integers(60, 3 * 86_400), st.integers(0, 7 * 86_400))
def test_pruning_keeps_exactly_what_the_definition_keeps(
    case: tuple[AccountWindow, datetime], keep_s: int, new_account_s: int
) -> None:
    window, now = case
    pruned = window.pruned(now, keep_s, new_account_s)
    expected = reference_pruned(window, now, keep_s, new_account_s)
    assert pruned.movements == expected.movements
    assert pruned.used == expected.used


@given(windows(), st.lists(st.integers(-86_400, 86_400), max_size=20))
def test_a_window_knows_whether_its_movements_are_in_time_order_as_they_come(
    case: tuple[AccountWindow, datetime], steps: list[int]
) -> None:
    """The order a window remembers beside its movements is the order they have, through
    added movements, pruning and a window rebuilt with other movements."""
    window, _ = case
    at = window.movements[-1].at if window.movements else T0
    for n, step in enumerate(steps, start=1000):
        at += timedelta(seconds=step)
        window = window.with_movement(_movement(n, at), dict(window.used), None)
        assert window.in_time_order() is in_order(window.movements)
        expected = reference_pruned_by(window, at)
        window = window.pruned(at, 3_600, 0)
        assert window == expected
        rebuilt = AccountWindow(account_id="a", movements=window.movements[::-1])
        assert rebuilt.in_time_order() is in_order(rebuilt.movements)


def in_order(movements: tuple[Movement, ...]) -> bool:
    return all(a.at <= b.at for a, b in itertools.pairwise(movements))


def reference_pruned_by(window: AccountWindow, now: datetime) -> AccountWindow:
    expected = reference_pruned(window, now, 3_600, 0)
    return replace(window, movements=expected.movements, used=expected.used)


@given(windows(), st.sampled_from(RULES), st.integers(0, 12 * 86_400))
def test_unused_since_is_unused_then_since(
    case: tuple[AccountWindow, datetime], rule: str, since_s: int
) -> None:
    window, _ = case
    since = T0 + timedelta(seconds=since_s)
    taken = window.used.get(rule, frozenset())
    unused = [m for m in window.movements if m.notification_id not in taken]
    assert window.unused(rule) == unused
    assert window.unused_since(rule, since) == [m for m in unused if m.at > since]


def _movement(n: int, at: datetime) -> Movement:
    return Movement(n, f"t{n}", at, "transfer_out", DEBIT, 100, "GBP", "api", None)


def test_the_window_keeps_the_newest_movements_up_to_its_cap(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(window_module, "WINDOW_MOVEMENTS_MAX", 5)
    movements = tuple(_movement(n, T0 + timedelta(seconds=n)) for n in range(1, 9))
    window = AccountWindow(
        account_id="a",
        opened_at=T0,
        movements=movements,
        used={"velocity": frozenset({1, 2, 7}), "pass_through": frozenset({2})},
    )
    pruned = window.pruned(T0 + timedelta(seconds=10), 86_400, 7 * 86_400)
    assert [m.notification_id for m in pruned.movements] == [4, 5, 6, 7, 8]
    assert pruned.used == {"velocity": frozenset({7})}


def test_a_busy_new_account_scores_in_bounded_time_and_space(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Past the cap every event sees a window of the same size: the velocity rule still
    fires on each 21st unused movement."""
    monkeypatch.setattr(window_module, "WINDOW_MOVEMENTS_MAX", 50)
    config = RulesConfig()
    window = opened(AccountWindow(account_id="a"), T0, "001", 1)
    velocity = 0
    for n in range(1, 400):
        hits, window = evaluate(config, window, _movement(n, T0 + timedelta(seconds=n)), n + 1)
        assert len(window.movements) <= 50
        velocity += sum(hit.rule == "velocity" for hit in hits)
    assert velocity == 399 // (config.velocity_count_max + 1)


def test_the_workers_window_cache_holds_a_bounded_number_of_movements() -> None:
    from uuid import uuid4

    from infrastructure.monitoring.windows import WindowCache

    cache = WindowCache(size_max=100, movements_max=25)
    ids = [uuid4() for _ in range(5)]
    for k, account in enumerate(ids):
        moves = tuple(_movement(10 * k + n, T0) for n in range(10))
        cache.keep({account: AccountWindow(account_id=str(account), movements=moves)})
        assert cache.movements <= 25
    assert [cache.get(a) is not None for a in ids] == [False, False, False, True, True]
    # Replacing a held window counts its movements once.
    cache.keep({ids[4]: AccountWindow(account_id=str(ids[4]), movements=())})
    assert cache.movements == 10
