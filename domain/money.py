"""Money: integer minor units plus an ISO 4217 currency. Never a float."""

from __future__ import annotations

import re
from dataclasses import dataclass

from domain.errors import InvalidAmount, UnknownCurrency

# ISO 4217 exponents of the currencies Vigil books. Adding one is adding a line.
CURRENCY_EXPONENTS: dict[str, int] = {
    "GBP": 2,
    "EUR": 2,
    "USD": 2,
    "CHF": 2,
    "CAD": 2,
    "AUD": 2,
    "SEK": 2,
    "NOK": 2,
    "DKK": 2,
    "PLN": 2,
    "JPY": 0,
    "KRW": 0,
    "BHD": 3,
    "KWD": 3,
    "OMR": 3,
}

# ASCII digits only: `\d` would also take Arabic-Indic or full-width digits.
_AMOUNT_PATTERN = re.compile(r"(?P<units>[0-9]{1,30})(?:\.(?P<fraction>[0-9]{1,30}))?")


def exponent_of(currency: str) -> int:
    try:
        return CURRENCY_EXPONENTS[currency]
    except KeyError:
        raise UnknownCurrency(f"unknown currency {currency!r}") from None


@dataclass(frozen=True, slots=True)
class Money:
    amount_minor: int
    currency: str

    def __post_init__(self) -> None:
        assert isinstance(self.amount_minor, int), "money is integer minor units"
        assert self.currency in CURRENCY_EXPONENTS, self.currency

    def format(self) -> str:
        return format_amount(self.amount_minor, self.currency)

    def __str__(self) -> str:
        return f"{self.format()} {self.currency}"


def parse_money(text: str, currency: str, *, amount_max_major: int) -> Money:
    """A positive amount with exactly the currency's decimal places, at most the ceiling."""
    money = parse_amount(text, currency, zero_allowed=False)
    if money.amount_minor > minor_units(amount_max_major, currency):
        raise InvalidAmount(f"amount {text} exceeds the ceiling of {amount_max_major} {currency}")
    return money


def parse_limit(text: str, currency: str, *, limit_max_major: int) -> Money:
    """A limit (an overdraft): like an amount, but zero is allowed."""
    money = parse_amount(text, currency, zero_allowed=True)
    if money.amount_minor > minor_units(limit_max_major, currency):
        ceiling = format_amount(minor_units(limit_max_major, currency), currency)
        raise InvalidAmount(
            f"overdraft limit {text} {currency} exceeds the ceiling of {ceiling} {currency}"
        )
    return money


def minor_units(amount_major: int, currency: str) -> int:
    """A whole number of major units (a ceiling from the settings) in minor units."""
    scale: int = 10 ** exponent_of(currency)
    return amount_major * scale


def parse_amount(text: str, currency: str, *, zero_allowed: bool) -> Money:
    exponent = exponent_of(currency)
    if not isinstance(text, str):
        raise InvalidAmount("amounts are decimal strings, not numbers")
    match = _AMOUNT_PATTERN.fullmatch(text)
    if match is None:
        raise InvalidAmount(f"amount {text!r} is not a positive decimal string")
    fraction = match.group("fraction") or ""
    if len(fraction) != exponent or (exponent == 0 and "." in text):
        raise InvalidAmount(
            f"amount {text!r} must have exactly {exponent} decimal places for {currency}"
        )
    amount_minor = int(match.group("units") + fraction)
    if amount_minor == 0 and not zero_allowed:
        raise InvalidAmount("amount must be greater than zero")
    return Money(amount_minor, currency)


def format_amount(amount_minor: int, currency: str) -> str:
    """The contract's decimal string: `1250.00` GBP, `1250` JPY, `-1.250` BHD."""
    exponent = exponent_of(currency)
    sign = "-" if amount_minor < 0 else ""
    digits = str(abs(amount_minor))
    if exponent == 0:
        return sign + digits
    digits = digits.rjust(exponent + 1, "0")
    return f"{sign}{digits[:-exponent]}.{digits[-exponent:]}"
