"""The rule window's fast passes give exactly what the plain definitions give, for any
window: movements in any time order (two command processes' clocks may disagree), young
and old accounts, evidence taken by several rules. A busy account's window is scanned
several times per event, so these passes avoid work; they must never change a verdict."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from hypothesis import given
from hypothesis import strategies as st

from domain.rules.window import CREDIT, DEBIT, AccountWindow, Movement

T0 = datetime(2026, 1, 1, tzinfo=UTC)
RULES = ("velocity", "pass_through", "new_account_outflow")


@st.composite
def windows(draw: st.DrawFn) -> tuple[AccountWindow, datetime]:
    count = draw(st.integers(0, 40))
    offsets = draw(st.lists(st.integers(0, 10 * 86_400), min_size=count, max_size=count))
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
