"""Projection lag in seconds and the readiness reasons it gives: caught up is no lag,
behind is how long the projection has not moved; past the threshold, a named reason."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from prometheus_client import REGISTRY
from pydantic import ValidationError

from infrastructure.readmodels.readers.projections import lag_seconds
from infrastructure.settings import Settings
from interfaces.api.query.lag import lagging_reasons, publish_lags

NOW = datetime(2026, 3, 1, 9, 30, tzinfo=UTC)


def test_caught_up_is_no_lag_however_old_the_last_move() -> None:
    assert lag_seconds(False, NOW - timedelta(hours=5), NOW) == 0.0


def test_behind_is_how_long_the_projection_has_not_moved() -> None:
    assert lag_seconds(True, NOW - timedelta(seconds=42.5), NOW) == 42.5


def test_a_clock_ahead_of_the_database_never_gives_a_negative_lag() -> None:
    assert lag_seconds(True, NOW + timedelta(seconds=1), NOW) == 0.0


def test_only_projections_past_the_threshold_are_reasons_named_in_order() -> None:
    lags = {"statements": 31.25, "alerts": 120.0, "balances": 30.0, "cases": 0.0}
    assert lagging_reasons(lags, 30.0) == [
        "projection alerts is 120.0 s behind (over 30 s)",
        "projection statements is 31.2 s behind (over 30 s)",
    ]


def test_no_lag_gives_no_reason() -> None:
    assert lagging_reasons({}, 30.0) == []
    assert lagging_reasons({"alerts": 0.0}, 0.5) == []


def test_published_lags_set_the_gauge_by_projection() -> None:
    publish_lags({"unit-test-projection": 7.5})
    sample = REGISTRY.get_sample_value(
        "vigil_projection_lag_seconds", {"projection": "unit-test-projection"}
    )
    assert sample == 7.5


def test_the_threshold_defaults_to_30_s_and_must_be_positive() -> None:
    assert Settings().projection_lag_degraded_s == 30.0
    assert Settings(projection_lag_degraded_s=0.5).projection_lag_degraded_s == 0.5
    for bad in (0, -1, 86_401):
        with pytest.raises(ValidationError):
            Settings(projection_lag_degraded_s=bad)
