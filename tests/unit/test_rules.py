"""Each monitoring rule on hand-made movements: the hit, and the near miss (one deposit
short, one minute outside the window, one penny under the threshold)."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from fractions import Fraction

import pytest

from domain.rules.config import RulesConfig
from domain.rules.engine import Hit, evaluate, grouped, opened
from domain.rules.window import AccountWindow, Movement

T0 = datetime(2026, 5, 4, 9, 0, tzinfo=UTC)
DEFAULTS = RulesConfig()


@dataclass
class Account:
    """Feeds movements to the engine the way the alerts projection does."""

    config: RulesConfig = DEFAULTS
    currency: str = "GBP"
    opened_at: datetime = T0 - timedelta(days=30)
    window: AccountWindow = field(init=False)
    hits: list[Hit] = field(default_factory=list)
    _n: int = 0

    def __post_init__(self) -> None:
        self.window = opened(AccountWindow("acct-1"), self.opened_at, "001", version=1)
        self._n = 100

    def move(
        self,
        kind: str,
        minor: int,
        at: datetime,
        channel: str | None = "cash",
        watchlisted: bool = False,
    ) -> list[Hit]:
        self._n += 1
        direction = "credit" if kind in ("deposit", "transfer_in") else "debit"
        movement = Movement(
            notification_id=self._n,
            transaction_id=f"tx-{self._n}",
            at=at,
            kind=kind,
            direction=direction,
            amount_minor=minor,
            currency=self.currency,
            channel=channel if kind in ("deposit", "withdrawal") else None,
            counterparty_account_id="acct-2" if kind.startswith("transfer") else None,
        )
        hits, self.window = evaluate(
            self.config,
            self.window,
            movement,
            self.window.version + 1,
            counterparty_watchlisted=watchlisted,
        )
        self.hits.extend(hits)
        return hits

    def rules(self) -> list[str]:
        return [hit.rule for hit in self.hits]


def minutes(n: float) -> timedelta:
    return timedelta(minutes=n)


# large_transaction -------------------------------------------------------------------


def test_a_movement_at_the_large_threshold_raises_a_high_alert() -> None:
    account = Account()
    [hit] = account.move("deposit", 5_000_000, T0, channel="wire")
    assert (hit.rule, hit.severity) == ("large_transaction", "high")
    assert hit.explanation == "deposit of 50,000.00 GBP, at or above 50,000.00"
    assert hit.transaction_ids == ["tx-101"]


def test_one_penny_under_the_large_threshold_raises_nothing() -> None:
    account = Account()
    assert account.move("deposit", 4_999_999, T0, channel="wire") == []


@pytest.mark.parametrize(
    ("currency", "at_threshold"),
    [("JPY", 5_000_000), ("BHD", 15_000_000), ("KWD", 15_000_000), ("EUR", 5_000_000)],
)
def test_thresholds_scale_per_currency(currency: str, at_threshold: int) -> None:
    account = Account(currency=currency)
    assert account.move("withdrawal", at_threshold - 1, T0) == []
    assert [h.rule for h in account.move("withdrawal", at_threshold, T0)] == ["large_transaction"]


# structuring --------------------------------------------------------------------------


def test_three_cash_deposits_just_under_the_threshold_within_a_day_are_structuring() -> None:
    account = Account()
    account.move("deposit", 950_000, T0)
    account.move("deposit", 950_000, T0 + timedelta(hours=8))
    [hit] = account.move("deposit", 950_000, T0 + timedelta(hours=23))
    assert hit.rule == "structuring"
    assert hit.explanation == (
        "3 cash deposits totalling 28,500.00 GBP within 1d, each under 10,000.00"
    )
    assert hit.notification_ids == [101, 102, 103]


def test_two_deposits_just_under_are_one_deposit_short_of_structuring() -> None:
    account = Account()
    account.move("deposit", 990_000, T0)
    assert account.move("deposit", 990_000, T0 + minutes(5)) == []


def test_a_deposit_one_minute_outside_the_window_does_not_count() -> None:
    account = Account()
    account.move("deposit", 950_000, T0)
    account.move("deposit", 950_000, T0 + timedelta(hours=23))
    assert account.move("deposit", 950_000, T0 + timedelta(hours=24, minutes=1)) == []


def test_the_structuring_band_is_ninety_percent_inclusive_to_the_threshold_exclusive() -> None:
    below_band = Account()
    for i in range(3):
        below_band.move("deposit", 899_999, T0 + minutes(i))
    assert below_band.hits == []
    at_threshold = Account()
    for i in range(3):
        at_threshold.move("deposit", 1_000_000, T0 + minutes(i))
    assert "structuring" not in at_threshold.rules()
    at_band = Account()
    for i in range(3):
        at_band.move("deposit", 900_000, T0 + minutes(i))
    assert at_band.rules() == ["structuring"]


def test_card_deposits_are_not_cash_and_do_not_structure() -> None:
    account = Account()
    for i in range(3):
        account.move("deposit", 950_000, T0 + minutes(i), channel="card")
    assert account.hits == []


def test_a_deposit_counts_toward_one_structuring_alert_only() -> None:
    account = Account()
    for i in range(3):
        account.move("deposit", 950_000, T0 + minutes(i))
    assert account.rules() == ["structuring"]
    assert account.move("deposit", 950_000, T0 + minutes(4)) == []
    account.move("deposit", 950_000, T0 + minutes(5))
    assert account.move("deposit", 950_000, T0 + minutes(6))[0].notification_ids == [104, 105, 106]


# velocity -----------------------------------------------------------------------------


def test_the_twenty_first_movement_within_an_hour_is_velocity() -> None:
    account = Account()
    for i in range(20):
        assert account.move("deposit", 100, T0 + minutes(i * 2), channel="card") == []
    [hit] = account.move("deposit", 100, T0 + minutes(59), channel="card")
    assert hit.rule == "velocity"
    assert hit.severity == "medium"
    assert len(hit.evidence) == 21


def test_twenty_one_movements_spread_over_more_than_an_hour_are_not_velocity() -> None:
    account = Account()
    for i in range(21):
        account.move("deposit", 100, T0 + minutes(i * 3.05), channel="card")
    assert account.hits == []


def test_more_than_the_outflow_limit_in_a_day_is_velocity() -> None:
    account = Account()
    account.move("withdrawal", 4_000_000, T0)
    account.move("withdrawal", 4_000_000, T0 + timedelta(hours=10))
    assert account.move("withdrawal", 2_000_000, T0 + timedelta(hours=20)) == []
    [hit] = account.move("withdrawal", 1, T0 + timedelta(hours=21))
    assert hit.rule == "velocity"
    assert hit.explanation == "100,000.01 GBP out within 1d, more than 100,000.00"


# pass_through -------------------------------------------------------------------------


def test_most_of_an_incoming_amount_leaving_within_an_hour_is_pass_through() -> None:
    account = Account()
    account.move("transfer_in", 1_000_000, T0)
    assert account.move("transfer_out", 400_000, T0 + minutes(20)) == []
    [hit] = account.move("transfer_out", 400_000, T0 + minutes(50))
    assert (hit.rule, hit.severity) == ("pass_through", "high")
    assert hit.notification_ids == [101, 102, 103]


def test_seventy_nine_percent_leaving_is_not_pass_through() -> None:
    account = Account()
    account.move("transfer_in", 1_000_000, T0)
    assert account.move("transfer_out", 799_999, T0 + minutes(30)) == []


def test_an_outflow_one_minute_after_the_hour_is_not_pass_through() -> None:
    account = Account()
    account.move("transfer_in", 1_000_000, T0)
    assert account.move("transfer_out", 800_000, T0 + minutes(61)) == []


def test_an_incoming_one_penny_under_the_minimum_is_not_pass_through() -> None:
    account = Account()
    account.move("transfer_in", 499_999, T0)
    assert account.move("transfer_out", 499_999, T0 + minutes(1)) == []


# new_account_outflow ------------------------------------------------------------------


def test_ten_thousand_out_within_seven_days_of_opening_is_new_account_risk() -> None:
    account = Account(opened_at=T0)
    account.move("deposit", 2_000_000, T0 + timedelta(hours=1), channel="wire")
    assert account.move("withdrawal", 600_000, T0 + timedelta(days=2)) == []
    [hit] = account.move("transfer_out", 400_000, T0 + timedelta(days=6))
    assert (hit.rule, hit.severity) == ("new_account_outflow", "medium")


def test_outflow_one_minute_after_the_seventh_day_is_not_new_account_risk() -> None:
    account = Account(opened_at=T0)
    account.move("deposit", 2_000_000, T0, channel="wire")
    assert account.move("withdrawal", 1_000_000, T0 + timedelta(days=7, minutes=1)) == []


def test_one_penny_under_ten_thousand_out_is_not_new_account_risk() -> None:
    account = Account(opened_at=T0)
    account.move("deposit", 2_000_000, T0, channel="wire")
    assert account.move("withdrawal", 999_999, T0 + timedelta(days=1)) == []


# dormant_reactivation -----------------------------------------------------------------


def test_a_large_movement_after_180_days_of_silence_is_dormant_reactivation() -> None:
    account = Account()
    account.move("deposit", 100, T0, channel="card")
    [hit] = account.move("withdrawal", 500_000, T0 + timedelta(days=180))
    assert (hit.rule, hit.severity) == ("dormant_reactivation", "medium")
    assert hit.explanation == "withdrawal of 5,000.00 GBP after 180 days without activity"


def test_one_minute_short_of_180_days_is_not_dormant() -> None:
    account = Account()
    account.move("deposit", 100, T0, channel="card")
    assert account.move("withdrawal", 500_000, T0 + timedelta(days=180) - minutes(1)) == []


def test_one_penny_under_the_amount_after_dormancy_is_nothing() -> None:
    account = Account()
    account.move("deposit", 100, T0, channel="card")
    assert account.move("withdrawal", 499_999, T0 + timedelta(days=400)) == []


def test_dormancy_counts_from_opening_when_nothing_ever_moved() -> None:
    account = Account(opened_at=T0)
    [hit] = account.move("deposit", 500_000, T0 + timedelta(days=181), channel="wire")
    assert hit.rule == "dormant_reactivation"


# watchlist ----------------------------------------------------------------------------


def test_a_transfer_with_a_watchlisted_counterparty_is_critical() -> None:
    account = Account()
    [hit] = account.move("transfer_out", 100, T0, watchlisted=True)
    assert (hit.rule, hit.severity) == ("watchlist", "critical")
    assert "to watchlisted account acct-2" in hit.explanation


def test_a_transfer_with_an_unlisted_counterparty_is_nothing() -> None:
    account = Account()
    assert account.move("transfer_in", 100, T0, watchlisted=False) == []


def test_a_deposit_is_never_a_watchlist_hit() -> None:
    account = Account()
    assert account.move("deposit", 100, T0, watchlisted=True) == []


# engine -------------------------------------------------------------------------------


def test_one_movement_can_complete_several_rules_at_once() -> None:
    account = Account(opened_at=T0)
    account.move("deposit", 6_000_000, T0, channel="wire")
    hits = account.move("transfer_out", 6_000_000, T0 + minutes(10), watchlisted=True)
    assert sorted(h.rule for h in hits) == [
        "large_transaction",
        "new_account_outflow",
        "pass_through",
        "watchlist",
    ]


def test_the_window_survives_json_and_gives_the_same_verdicts() -> None:
    live, restored = Account(), Account()
    for i in range(2):
        for account in (live, restored):
            account.move("deposit", 950_000, T0 + minutes(i))
        restored.window = AccountWindow.from_json(restored.window.to_json())
    assert (
        live.move("deposit", 950_000, T0 + minutes(3))[0]
        == restored.move("deposit", 950_000, T0 + minutes(3))[0]
    )


def test_the_window_forgets_movements_no_rule_can_see() -> None:
    account = Account()
    for day in range(10):
        account.move("deposit", 100, T0 + timedelta(days=day), channel="card")
    assert len(account.window.movements) == 1


def test_scoring_out_of_order_is_a_programming_error() -> None:
    account = Account()
    movement = Movement(1, None, T0, "deposit", "credit", 1, "GBP", "cash", None)
    with pytest.raises(AssertionError):
        evaluate(DEFAULTS, account.window, movement, account.window.version)


def test_configurations_refuse_nonsense() -> None:
    with pytest.raises(ValueError, match="positive"):
        RulesConfig(velocity_count_max=0)
    with pytest.raises(ValueError, match="between 0 and 1"):
        RulesConfig(structuring_lower_fraction=Fraction(3, 2))


def test_amounts_in_explanations_are_grouped() -> None:
    assert grouped(2_850_000, "GBP") == "28,500.00"
    assert grouped(1_234_567, "JPY") == "1,234,567"
    assert grouped(-1_000_500, "BHD") == "-1,000.500"
