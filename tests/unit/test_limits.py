"""The ceilings' relations: settings that cannot work refuse to start, with the names of
the variables to change; the widest accepted still fit bigint in every currency."""

from __future__ import annotations

import pytest

from domain.money import CURRENCY_EXPONENTS, minor_units
from infrastructure.limits import (
    BALANCE_RANGE_MINOR_MAX,
    BIGINT_MAX,
    CURRENCY_EXPONENT_MAX,
    check_money_ceilings,
)
from infrastructure.settings import ConfigurationError, Settings, load_settings

DEFAULTS = {
    name: Settings.model_fields[name].default
    for name in ("amount_max", "overdraft_max", "teller_overdraft_max", "balance_max")
}


def test_the_default_ceilings_relate_as_they_must() -> None:
    check_money_ceilings(**DEFAULTS)
    assert DEFAULTS["overdraft_max"] == DEFAULTS["amount_max"]
    assert DEFAULTS["teller_overdraft_max"] == 10_000


@pytest.mark.parametrize(
    ("overrides", "named"),
    [
        ({"overdraft_max": 100_000_001}, "VIGIL_OVERDRAFT_MAX"),
        ({"amount_max": 5_000}, "VIGIL_OVERDRAFT_MAX"),
        ({"teller_overdraft_max": 100_000_001}, "VIGIL_TELLER_OVERDRAFT_MAX"),
        ({"balance_max": 99_999_999}, "VIGIL_AMOUNT_MAX"),
        ({"balance_max": 10**16}, "VIGIL_BALANCE_MAX"),
    ],
)
def test_ceilings_that_do_not_relate_refuse_to_start_naming_the_variable(
    overrides: dict[str, int], named: str
) -> None:
    with pytest.raises(ConfigurationError, match=named):
        load_settings(**overrides)


def test_the_widest_accepted_ceilings_fit_bigint_in_every_currency() -> None:
    widest_major = BALANCE_RANGE_MINOR_MAX // 10**CURRENCY_EXPONENT_MAX // 2
    check_money_ceilings(widest_major, widest_major, 0, widest_major)
    with pytest.raises(ValueError, match="VIGIL_BALANCE_MAX"):
        check_money_ceilings(widest_major, widest_major, 0, widest_major + 1)
    for currency in CURRENCY_EXPONENTS:
        lowest = -minor_units(widest_major, currency)
        # The balance ceiling plus one more amount: what a credit is judged on.
        highest = minor_units(widest_major * 2, currency)
        assert lowest >= -BIGINT_MAX
        assert highest * 1_000 <= BIGINT_MAX
