"""Correlation ids the command and query APIs make for requests that bring none."""

from __future__ import annotations

import os
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


def test_a_forked_child_makes_ids_of_its_own() -> None:
    new_correlation_id()  # the parent has read entropy ahead
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: one id to the parent, then out without cleanup
        os.write(write, new_correlation_id().encode())
        os._exit(0)
    os.close(write)
    os.waitpid(pid, 0)
    with os.fdopen(read) as pipe:
        child = pipe.read()
    assert uuid.UUID(child).version == 4
    assert child != new_correlation_id()
