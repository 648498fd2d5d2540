"""`vigil up` calls the workers ready only once their consumer holds partitions."""

from __future__ import annotations

from interfaces.cli.supervise import gauge_above_zero

METRICS = """# HELP vigil_projection_partitions_assigned Partitions of the ledger topic.
# TYPE vigil_projection_partitions_assigned gauge
vigil_projection_partitions_assigned {value}
vigil_projection_position{{projection="balances"}} 12.0
"""


def test_a_consumer_holding_partitions_is_ready() -> None:
    assert gauge_above_zero(METRICS.format(value="12.0"), "vigil_projection_partitions_assigned")


def test_a_consumer_still_joining_its_group_is_not() -> None:
    assert not gauge_above_zero(METRICS.format(value="0.0"), "vigil_projection_partitions_assigned")


def test_a_gauge_missing_or_unreadable_is_not_ready() -> None:
    assert not gauge_above_zero(
        METRICS.format(value="NaNx"), "vigil_projection_partitions_assigned"
    )
    assert not gauge_above_zero("vigil_other 3.0\n", "vigil_projection_partitions_assigned")
    # A labelled series of another gauge that starts with the same name does not count.
    assert not gauge_above_zero(
        'vigil_projection_partitions_assigned_total{x="1"} 5.0\n',
        "vigil_projection_partitions_assigned",
    )
