"""Counts on the command line agree with their nouns."""

from __future__ import annotations

from interfaces.cli.wording import plural


def test_one_of_a_thing_is_singular_and_any_other_count_plural() -> None:
    assert plural(1, "alert") == "1 alert"
    assert plural(0, "alert") == "0 alerts"
    assert plural(12_345, "difference") == "12,345 differences"
    assert plural(2, "quarantined event") == "2 quarantined events"
