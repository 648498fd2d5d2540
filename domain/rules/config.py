"""Rule parameters: every threshold and window of the monitoring rules.

Amounts are given in major units of a reference currency and scaled per currency by an
exact factor (JPY times 100, BHD and KWD times 0.3), then turned into integer minor units: no
floats anywhere. `describe()` is the canonical form whose hash names a configuration.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Any

from domain.money import exponent_of

DAY_S = 86_400

SEVERITIES: dict[str, str] = {
    "large_transaction": "high",
    "structuring": "high",
    "velocity": "medium",
    "pass_through": "high",
    "new_account_outflow": "medium",
    "dormant_reactivation": "medium",
    "watchlist": "critical",
}
RULES = tuple(SEVERITIES)


def _default_factors() -> dict[str, Fraction]:
    return {
        "GBP": Fraction(1),
        "EUR": Fraction(1),
        "USD": Fraction(1),
        "CHF": Fraction(1),
        "JPY": Fraction(100),
        "BHD": Fraction(3, 10),
        "KWD": Fraction(3, 10),
    }


@dataclass(frozen=True)
class RulesConfig:
    # Major units of a factor-1 currency.
    reporting_threshold: int = 10_000
    large_transaction: int = 50_000
    structuring_count_min: int = 3
    structuring_window_s: int = DAY_S
    structuring_lower_fraction: Fraction = Fraction(9, 10)
    velocity_count_max: int = 20
    velocity_count_window_s: int = 3_600
    velocity_outflow_max: int = 100_000
    velocity_outflow_window_s: int = DAY_S
    pass_through_incoming_min: int = 5_000
    pass_through_fraction: Fraction = Fraction(4, 5)
    pass_through_window_s: int = 3_600
    new_account_outflow_min: int = 10_000
    new_account_window_s: int = 7 * DAY_S
    dormant_amount_min: int = 5_000
    dormant_idle_s: int = 180 * DAY_S
    currency_factors: dict[str, Fraction] = field(default_factory=_default_factors)
    # Screening in the money path (the command side, before a movement posts): a transfer,
    # withdrawal or hold at or above this amount, or debiting or crediting a watchlisted
    # account when `screening_watchlisted`, is held for compliance review.
    screening_hold_at_or_above: int = 250_000
    screening_watchlisted: bool = True

    def __post_init__(self) -> None:
        for name, value in self.describe().items():
            if name == "currency_factors" or isinstance(value, bool):
                continue
            if Fraction(value) <= 0:
                raise ValueError(f"{name} must be positive, not {value}")
        if not Fraction(0) < self.structuring_lower_fraction < 1:
            raise ValueError("structuring_lower_fraction must lie between 0 and 1")
        if not Fraction(0) < self.pass_through_fraction <= 1:
            raise ValueError("pass_through_fraction must lie in (0, 1]")
        for currency, factor in self.currency_factors.items():
            exponent_of(currency)
            if factor <= 0:
                raise ValueError(f"currency factor of {currency} must be positive")

    def minor(self, major: int | Fraction, currency: str) -> int:
        """A reference amount in this currency's minor units (rounded up: never lower)."""
        key = (major, currency)
        minor = self._minor_cache.get(key)
        if minor is None:
            factor = self.currency_factors.get(currency, Fraction(1))
            exact = Fraction(major) * factor * 10 ** exponent_of(currency)
            minor = self._minor_cache[key] = int(-(-exact.numerator // exact.denominator))
        return minor

    def structuring_lower(self, currency: str) -> int:
        """The least a deposit "just under" the reporting threshold is, in minor units:
        asked at every movement, its Fractions (product, hash) worked out once."""
        lower = self._structuring_lower_cache.get(currency)
        if lower is None:
            major = self.reporting_threshold * self.structuring_lower_fraction
            lower = self._structuring_lower_cache[currency] = self.minor(major, currency)
        return lower

    @functools.cached_property
    def _structuring_lower_cache(self) -> dict[str, int]:
        return {}

    @functools.cached_property
    def _minor_cache(self) -> dict[tuple[int | Fraction, str], int]:
        # Every movement asks for several thresholds, always the same few: each is worked
        # out once. Bounded by the parameters times the currencies (exponent_of refuses
        # unknown ones); not a field, so describe() and the hash never see it.
        return {}

    @property
    def keep_s(self) -> int:
        """How far back an account's window must reach for the timed rules."""
        return max(
            self.structuring_window_s,
            self.velocity_count_window_s,
            self.velocity_outflow_window_s,
            self.pass_through_window_s,
        )

    def describe(self) -> dict[str, Any]:
        """Every parameter as plain JSON values (fractions as strings)."""
        out: dict[str, Any] = {}
        for name in self.__dataclass_fields__:
            value = getattr(self, name)
            if isinstance(value, Fraction):
                value = str(value)
            elif isinstance(value, dict):
                value = {k: str(v) for k, v in sorted(value.items())}
            out[name] = value
        return out
