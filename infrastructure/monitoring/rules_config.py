"""The rule configuration file (`VIGIL_RULES_CONFIG`, TOML), validated at start.

Every section and key is optional; what is missing keeps its default (README lists them).
Unknown sections or keys are refused, so a typo never silently keeps a default. Each
configuration is stored with the SHA-256 of its canonical parameters, so an alert names
the exact version that fired and evidence can re-run it.
"""

from __future__ import annotations

import hashlib
import json
import tomllib
from dataclasses import fields
from fractions import Fraction
from pathlib import Path
from typing import Any

from domain.errors import DomainError
from domain.rules.config import RulesConfig
from domain.screening import Screening
from infrastructure.settings import ConfigurationError, Settings

# TOML section -> {key: RulesConfig field}
SECTIONS: dict[str, dict[str, str]] = {
    "thresholds": {
        "reporting": "reporting_threshold",
        "large_transaction": "large_transaction",
    },
    "structuring": {
        "count_min": "structuring_count_min",
        "window_s": "structuring_window_s",
        "lower_fraction": "structuring_lower_fraction",
    },
    "velocity": {
        "count_max": "velocity_count_max",
        "count_window_s": "velocity_count_window_s",
        "outflow_max": "velocity_outflow_max",
        "outflow_window_s": "velocity_outflow_window_s",
    },
    "pass_through": {
        "incoming_min": "pass_through_incoming_min",
        "fraction": "pass_through_fraction",
        "window_s": "pass_through_window_s",
    },
    "new_account_outflow": {
        "outflow_min": "new_account_outflow_min",
        "window_s": "new_account_window_s",
    },
    "dormant_reactivation": {
        "amount_min": "dormant_amount_min",
        "idle_s": "dormant_idle_s",
    },
    "screening": {
        "hold_at_or_above": "screening_hold_at_or_above",
        "watchlisted": "screening_watchlisted",
    },
}
BOOLEANS = {"screening_watchlisted"}
FRACTIONS = {"structuring_lower_fraction", "pass_through_fraction"}


def parse_rules(text: str, origin: str = "rules config") -> RulesConfig:
    try:
        document = tomllib.loads(text)
    except tomllib.TOMLDecodeError as error:
        raise ConfigurationError(f"{origin}: not valid TOML: {error}") from error
    values: dict[str, Any] = {}
    for section, content in document.items():
        if section == "currency_factors":
            values["currency_factors"] = {
                str(currency): _fraction(origin, f"currency_factors.{currency}", factor)
                for currency, factor in _table(origin, section, content).items()
            }
            continue
        known = SECTIONS.get(section)
        if known is None:
            raise ConfigurationError(f"{origin}: unknown section [{section}]")
        for key, value in _table(origin, section, content).items():
            if key not in known:
                raise ConfigurationError(f"{origin}: unknown key {section}.{key}")
            name = known[key]
            if name in FRACTIONS:
                values[name] = _fraction(origin, f"{section}.{key}", value)
            elif name in BOOLEANS:
                values[name] = _boolean(origin, f"{section}.{key}", value)
            else:
                values[name] = _integer(origin, f"{section}.{key}", value)
    try:
        return RulesConfig(**values)
    except (ValueError, TypeError, DomainError) as error:
        raise ConfigurationError(f"{origin}: {error}") from error


def load_rules(path: Path | None) -> tuple[RulesConfig, str]:
    """The configuration and its source text ("" for the built-in defaults)."""
    if path is None:
        return RulesConfig(), ""
    try:
        text = path.read_text()
    except OSError as error:
        raise ConfigurationError(f"cannot read VIGIL_RULES_CONFIG {path}: {error}") from error
    return parse_rules(text, str(path)), text


def screening_of(settings: Settings) -> Screening:
    """The rules file's `[screening]` (the defaults without a file), named by the sha256
    of the whole configuration, as the alerts name theirs."""
    config, _ = load_rules(settings.rules_config)
    return Screening(config, config_hash(config), settings.screening_review_timeout_s)


def config_hash(config: RulesConfig) -> str:
    canonical = json.dumps(config.describe(), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


def config_from_parameters(parameters: dict[str, Any]) -> RulesConfig:
    """Rebuild a stored configuration from its `describe()` form (one stored before a
    parameter existed has that parameter's default)."""
    values: dict[str, Any] = {}
    for spec in fields(RulesConfig):
        if spec.name not in parameters:
            continue
        raw = parameters[spec.name]
        if spec.name in BOOLEANS:
            values[spec.name] = bool(raw)
        elif spec.name == "currency_factors":
            values[spec.name] = {c: Fraction(f) for c, f in raw.items()}
        elif spec.name in FRACTIONS:
            values[spec.name] = Fraction(raw)
        else:
            values[spec.name] = int(raw)
    return RulesConfig(**values)


def _table(origin: str, section: str, content: object) -> dict[str, Any]:
    if not isinstance(content, dict):
        raise ConfigurationError(f"{origin}: [{section}] must be a table")
    return content


def _integer(origin: str, key: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigurationError(f"{origin}: {key} must be an integer, not {value!r}")
    return value


def _boolean(origin: str, key: str, value: object) -> bool:
    if not isinstance(value, bool):
        raise ConfigurationError(f"{origin}: {key} must be true or false, not {value!r}")
    return value


def _fraction(origin: str, key: str, value: object) -> Fraction:
    # Strings like "0.9" or "3/10": exact, never a binary float.
    if isinstance(value, bool) or not isinstance(value, str | int):
        raise ConfigurationError(f'{origin}: {key} must be a string such as "0.9" or an integer')
    try:
        return Fraction(value)
    except (ValueError, ZeroDivisionError) as error:
        raise ConfigurationError(f"{origin}: {key}: {error}") from error
