"""Operator-tuned bounds and connection options: read from the settings, validated at
start, and handed to the parts that use them unchanged."""

from __future__ import annotations

import pytest

from infrastructure.postgres.connect import connection_kwargs, session_options
from infrastructure.relay.events import RelayLimits
from infrastructure.settings import ConfigurationError, load_settings


def test_a_relay_backoff_whose_minimum_exceeds_its_maximum_refuses_to_start() -> None:
    with pytest.raises(ConfigurationError, match="VIGIL_RELAY_BACKOFF_S_MIN"):
        load_settings(relay_backoff_s_min=3.0, relay_backoff_s_max=2.0)


@pytest.mark.parametrize(
    "overrides",
    [
        {"relay_batch_events_max": 0},
        {"outbox_batch_events_max": 100_001},
        {"projections_fetch_records_max": 0},
        {"read_models_apply_interval_s": -0.1},
        {"read_models_apply_interval_s": 11},
        {"query_pool_wait_s": 0},
        {"relay_poll_interval_s": -1.0},
    ],
)
def test_a_bound_out_of_its_range_refuses_to_start(overrides: dict[str, float]) -> None:
    with pytest.raises(ConfigurationError):
        load_settings(**overrides)


def test_the_relay_limits_are_the_settings_with_only_the_overrides_changed() -> None:
    settings = load_settings(relay_batch_events_max=250, relay_lock_retry_s=0.5)
    limits = RelayLimits.from_settings(settings, poll_interval_s=30.0)
    assert limits.batch_events_max == 250
    assert limits.lock_retry_s == 0.5
    assert limits.poll_interval_s == 30.0
    assert limits.health_interval_s == settings.relay_health_interval_s
    assert (limits.backoff_s_min, limits.backoff_s_max) == (0.1, 2.0)


def test_every_connection_is_named_for_its_purpose_and_gives_up_connecting_in_time() -> None:
    settings = load_settings(db_connect_timeout_s=7)
    kwargs = connection_kwargs(settings, "relay-listen", autocommit=True)
    assert kwargs == {
        "connect_timeout": 7,
        "application_name": "vigil-relay-listen",
        "autocommit": True,
    }


def test_a_connection_carries_only_the_session_options_its_site_asks_for() -> None:
    settings = load_settings()
    assert "options" not in connection_kwargs(settings, "cli")
    options = session_options({"default_transaction_read_only": "on", "statement_timeout": 5_000})
    assert options == "-c default_transaction_read_only=on -c statement_timeout=5000"
    assert connection_kwargs(settings, "query", options=options)["options"] == options
