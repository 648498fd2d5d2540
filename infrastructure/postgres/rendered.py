"""Composed statements rendered to bytes once, where they are built.

psycopg renders a `psycopg.sql.Composed` statement again at every execute, quoting each
identifier through libpq; bytes go straight to its statement cache. For statements run
for every command group or projection batch, that rendering cost more than some of the
work around it.
"""

from __future__ import annotations

from psycopg.abc import Query
from psycopg.sql import Composable


def rendered(statement: Query) -> bytes:
    """The statement's bytes, quoted as psycopg quotes without a connection (identifiers
    in double quotes, inner quotes doubled): for ASCII names, what any connection gives."""
    if isinstance(statement, bytes):
        return statement
    if isinstance(statement, str):
        text = statement.encode()
    else:
        assert isinstance(statement, Composable), f"no template here: {statement!r}"
        text = statement.as_bytes(None)
    assert text.isascii(), f"a statement of ASCII names and literals only: {text!r}"
    return text
