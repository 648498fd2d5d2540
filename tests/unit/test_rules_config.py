"""The rule configuration file: defaults, validation, and the hash that names a version."""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import pytest

from domain.rules.config import RulesConfig
from infrastructure.monitoring.rules_config import config_from_parameters, config_hash, parse_rules
from infrastructure.settings import ConfigurationError

EXAMPLE = Path(__file__).resolve().parents[2] / "deploy" / "rules.example.toml"


def test_the_documented_example_is_exactly_the_built_in_defaults() -> None:
    assert parse_rules(EXAMPLE.read_text()) == RulesConfig()


def test_an_empty_file_keeps_every_default() -> None:
    assert parse_rules("") == RulesConfig()


def test_a_changed_threshold_is_a_different_configuration_hash() -> None:
    lower = parse_rules("[thresholds]\nlarge_transaction = 40000\n")
    assert lower.large_transaction == 40_000
    assert config_hash(lower) != config_hash(RulesConfig())
    assert config_hash(parse_rules("")) == config_hash(RulesConfig())


def test_a_stored_configuration_rebuilds_to_the_same_one() -> None:
    config = parse_rules('[pass_through]\nfraction = "3/4"\n[currency_factors]\nJPY = "150"\n')
    assert config.pass_through_fraction == Fraction(3, 4)
    assert config_from_parameters(config.describe()) == config


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[thresholds]\nlarge = 1\n", "unknown key thresholds.large"),
        ("[fraud]\nx = 1\n", "unknown section"),
        ("[velocity]\ncount_max = 0\n", "must be positive"),
        ("[velocity]\ncount_max = 2.5\n", "must be an integer"),
        ("[structuring]\nlower_fraction = 0.9\n", "must be a string"),
        ('[structuring]\nlower_fraction = "1.5"\n', "between 0 and 1"),
        ('[currency_factors]\nXYZ = "1"\n', "unknown currency"),
        ("not toml =", "not valid TOML"),
    ],
)
def test_a_bad_configuration_is_refused_with_a_clear_reason(text: str, message: str) -> None:
    with pytest.raises(ConfigurationError, match=message):
        parse_rules(text)
