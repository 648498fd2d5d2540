"""The rules' running totals never change a verdict: scored with them, an account's events
raise exactly the alerts and leave exactly the windows that reading the whole window gives,
whatever happens to the window: movements out of time order, alerts of every rule taking
evidence, pruning by time, the cap, a window read back from the store, a scoring that
stopped half-way, a movement in another currency."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta
from fractions import Fraction

from hypothesis import given, settings
from hypothesis import strategies as st

from domain.rules import window as window_module
from domain.rules.config import RulesConfig
from domain.rules.engine import evaluate, opened
from domain.rules.tallies import Slide, Tallies
from domain.rules.window import CREDIT, DEBIT, AccountWindow, Movement

T0 = datetime(2026, 1, 1, tzinfo=UTC)
# Short windows and low thresholds, so that a few dozen events make every rule fire and the
# window prune; amounts in GBP minor units (factor 1/100: thresholds are a hundredth).
CONFIG = RulesConfig(
    reporting_threshold=10,
    large_transaction=40,
    structuring_count_min=2,
    structuring_window_s=1_200,
    velocity_count_max=4,
    velocity_count_window_s=600,
    velocity_outflow_max=30,
    velocity_outflow_window_s=1_800,
    pass_through_incoming_min=8,
    pass_through_window_s=900,
    new_account_outflow_min=20,
    new_account_window_s=3_600,
    dormant_amount_min=5,
    dormant_idle_s=2_000,
    currency_factors={"GBP": Fraction(1, 100), "EUR": Fraction(1, 100)},
)
KINDS = {
    "deposit": CREDIT,
    "withdrawal": DEBIT,
    "transfer_in": CREDIT,
    "transfer_out": DEBIT,
}


@st.composite
def events(draw: st.DrawFn) -> list[tuple[Movement, str]]:
    """Movements with what happens around each: nothing, a reload from the store, a
    scoring of it that stopped half-way first."""
    out = []
    at = T0
    for n in range(draw(st.integers(1, 60))):
        # Mostly forward, sometimes back (another command process's clock).
        at += timedelta(seconds=draw(st.integers(-300, 900)))
        kind = draw(st.sampled_from(sorted(KINDS)))
        movement = Movement(
            notification_id=n + 10,
            transaction_id=f"t{n}",
            at=at,
            kind=kind,
            direction=KINDS[kind],
            amount_minor=draw(st.integers(1, 2_500)),
            currency=draw(st.sampled_from(["GBP"] * 30 + ["EUR"])),
            channel=draw(st.sampled_from(["cash", "api"])),
            counterparty_account_id=None,
        )
        out.append((movement, draw(st.sampled_from(["score"] * 8 + ["reload", "interrupted"]))))
    return out


@settings(max_examples=300, deadline=None)
@given(events(), st.booleans(), st.sampled_from([window_module.WINDOW_MOVEMENTS_MAX, 6, 15]))
def test_scoring_with_running_totals_is_scoring_the_whole_window(
    moves: list[tuple[Movement, str]], is_opened: bool, cap: int
) -> None:
    saved_cap = window_module.WINDOW_MOVEMENTS_MAX
    window_module.WINDOW_MOVEMENTS_MAX = cap
    try:
        start = AccountWindow(account_id="a")
        if is_opened:
            start = opened(start, T0, "001", 1)
        tallied, reference = start, start
        for version, (movement, around) in enumerate(moves, start=2):
            if around == "reload":
                tallied = AccountWindow.from_json(tallied.to_json())
            elif around == "interrupted":
                held = Tallies.of(CONFIG, tallied)
                if held is not None:
                    held.add(movement)
            hits, tallied = evaluate(CONFIG, tallied, movement, version)
            expected, reference = evaluate(CONFIG, reference, movement, version, tally=False)
            assert hits == expected
            assert tallied == reference
            assert_exact(tallied)
    finally:
        window_module.WINDOW_MOVEMENTS_MAX = saved_cap


def assert_exact(window: AccountWindow) -> None:
    """Each total the window carries is its definition's value (a total too high would only
    send the rules to the window; this is about doing so only when they may fire)."""
    tallies = window.tallies
    if tallies is None:
        return
    assert isinstance(tallies, Tallies)
    assert tallies.describes(CONFIG, window)
    velocity = window.unused("velocity")
    minimum = tallies.incoming_min
    for slide, movements in (
        (tallies.recent, velocity),
        (tallies.outflows, [m for m in velocity if m.direction == DEBIT]),
        (
            tallies.incoming,
            [
                m
                for m in window.unused("pass_through")
                if m.direction == CREDIT and minimum is not None and m.amount_minor >= minimum
            ],
        ),
    ):
        if slide is not None:
            held = sorted(m.notification_id for m in movements if m.at > slide.since)
            assert sorted(m.notification_id for m in slide.items) == held
            assert slide.total == sum(m.amount_minor for m in slide.items)
    if tallies.young_outflow is not None:
        assert window.opened_at is not None
        young_until = window.opened_at + timedelta(seconds=CONFIG.new_account_window_s)
        assert tallies.young_outflow == sum(
            m.amount_minor
            for m in window.unused("new_account_outflow")
            if m.direction == DEBIT and window.opened_at <= m.at <= young_until
        )


def test_the_totals_follow_the_window_from_event_to_event() -> None:
    """Forward in time, no alert of a tallied rule: the totals are carried, not counted
    again, and answer as the window does."""
    config = RulesConfig()
    window = opened(AccountWindow(account_id="a"), T0, "001", 1)
    for n in range(1, 30):
        kind = "transfer_out" if n % 3 else "transfer_in"
        movement = Movement(
            n, f"t{n}", T0 + timedelta(seconds=60 * n), kind, KINDS[kind], 1, "GBP", "api", None
        )
        before = window.tallies
        _, window = evaluate(config, window, movement, n + 1)
        assert isinstance(window.tallies, Tallies)
        assert window.tallies.describes(config, window)
        if before is not None:
            assert window.tallies is before


def test_a_slide_forgets_the_oldest_and_refuses_to_go_back() -> None:
    def move(n: int, seconds: int) -> Movement:
        return Movement(
            n, None, T0 + timedelta(seconds=seconds), "deposit", CREDIT, n, "GBP", None, None
        )

    slide = Slide(T0, [move(1, 10), move(2, 5), move(3, 0)])
    assert [m.notification_id for m in slide.items] == [2, 1]  # later than T0, in time order
    assert slide.total == 3
    assert slide.add(move(4, 20))
    assert slide.total == 7
    assert not slide.add(move(5, 15))  # older than the newest held
    assert slide.advance(T0 + timedelta(seconds=10))
    assert slide.total == 4
    assert not slide.advance(T0 + timedelta(seconds=9))
    assert slide.add(move(6, 3))
    assert slide.total == 4


def test_a_window_of_two_currencies_is_read_whole() -> None:
    window = replace(
        AccountWindow(account_id="a"),
        movements=(
            Movement(1, None, T0, "deposit", CREDIT, 5, "GBP", None, None),
            Movement(2, None, T0, "deposit", CREDIT, 5, "EUR", None, None),
        ),
    )
    assert Tallies.of(RulesConfig(), window) is None


def test_totals_describe_only_their_own_window_state() -> None:
    config = RulesConfig()
    window = opened(AccountWindow(account_id="a"), T0, "001", 1)
    movement = Movement(1, "t1", T0, "transfer_out", DEBIT, 1, "GBP", "api", None)
    _, window = evaluate(config, window, movement, 2)
    tallies = window.tallies
    assert isinstance(tallies, Tallies)
    assert tallies.describes(config, window)
    assert not tallies.describes(config, replace(window, used={"velocity": frozenset({1})}))
    assert not tallies.describes(config, replace(window, opened_at=T0 + timedelta(days=1)))
    assert not tallies.describes(config, replace(window, movements=tuple(window.movements)[:0]))
    assert not tallies.describes(RulesConfig(), window)  # another configuration
