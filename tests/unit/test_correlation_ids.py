"""Correlation ids the command and query APIs make for requests that bring none."""

from __future__ import annotations

import uuid

from interfaces.api.http.middleware import CORRELATION_ID_PATTERN, new_correlation_id


def test_a_made_correlation_id_is_a_random_uuids_canonical_text() -> None:
    made = [new_correlation_id() for _ in range(2_000)]
    assert len(set(made)) == len(made)
    for text in made:
        parsed = uuid.UUID(text)
        assert parsed.version == 4
        assert parsed.variant == uuid.RFC_4122
        assert str(parsed) == text
        assert CORRELATION_ID_PATTERN.fullmatch(text)
