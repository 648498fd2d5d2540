"""Money parsing and formatting per currency: integer minor units, exact decimal places."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from domain.errors import InvalidAmount, UnknownCurrency
from domain.money import CURRENCY_EXPONENTS, Money, format_amount, parse_amount, parse_money

AMOUNT_MAX = 100_000_000


@pytest.mark.parametrize(
    ("text", "currency", "minor"),
    [
        ("1250.00", "GBP", 125_000),
        ("0.01", "EUR", 1),
        ("99.99", "USD", 9_999),
        ("10.50", "CHF", 1_050),
        ("1250", "JPY", 1_250),
        ("1.250", "BHD", 1_250),
        ("0.001", "KWD", 1),
        ("100000000.00", "GBP", 10_000_000_000),
    ],
)
def test_amounts_parse_to_exact_minor_units(text: str, currency: str, minor: int) -> None:
    assert parse_money(text, currency, amount_max_major=AMOUNT_MAX) == Money(minor, currency)


@pytest.mark.parametrize(
    ("text", "currency"),
    [
        ("0.00", "GBP"),
        ("-1.00", "GBP"),
        ("1.0", "GBP"),
        ("1.000", "GBP"),
        ("1", "GBP"),
        ("1.00", "JPY"),
        ("1.", "JPY"),
        ("1.25", "BHD"),
        ("1e3", "GBP"),
        (" 1.00", "GBP"),
        ("1,00", "EUR"),
        ("", "GBP"),
        ("0", "JPY"),
        ("100000000.01", "GBP"),
        ("NaN", "USD"),
    ],
)
def test_bad_amounts_are_refused_as_invalid_amount(text: str, currency: str) -> None:
    with pytest.raises(InvalidAmount):
        parse_money(text, currency, amount_max_major=AMOUNT_MAX)


@pytest.mark.parametrize("currency", ["XYZ", "gbp", "", "GBPX"])
def test_unknown_currencies_are_refused(currency: str) -> None:
    with pytest.raises(UnknownCurrency):
        parse_money("1.00", currency, amount_max_major=AMOUNT_MAX)


def test_the_ceiling_is_inclusive_in_major_units() -> None:
    assert parse_money("100000000", "JPY", amount_max_major=AMOUNT_MAX).amount_minor == 10**8
    with pytest.raises(InvalidAmount):
        parse_money("100000001", "JPY", amount_max_major=AMOUNT_MAX)


def test_a_zero_overdraft_limit_parses_where_zero_is_allowed() -> None:
    assert parse_amount("0.00", "GBP", zero_allowed=True) == Money(0, "GBP")


@pytest.mark.parametrize(
    ("minor", "currency", "text"),
    [
        (125_000, "GBP", "1250.00"),
        (5, "GBP", "0.05"),
        (0, "EUR", "0.00"),
        (-150, "USD", "-1.50"),
        (1_250, "JPY", "1250"),
        (1, "BHD", "0.001"),
        (-1_250, "KWD", "-1.250"),
    ],
)
def test_amounts_format_with_exactly_the_currency_places(
    minor: int, currency: str, text: str
) -> None:
    assert format_amount(minor, currency) == text


@given(
    minor=st.integers(min_value=1, max_value=10**13),
    currency=st.sampled_from(sorted(CURRENCY_EXPONENTS)),
)
def test_formatting_then_parsing_gives_the_same_money(minor: int, currency: str) -> None:
    text = format_amount(minor, currency)
    assert parse_amount(text, currency, zero_allowed=False) == Money(minor, currency)


def test_money_refuses_floats_by_construction() -> None:
    with pytest.raises(AssertionError):
        Money(1.5, "GBP")  # type: ignore[arg-type]
