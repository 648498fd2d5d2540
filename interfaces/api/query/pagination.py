"""Keyset pagination shared by every list: `{"items": [...], "next_cursor": str | null}`.

A cursor is the base64url of the last row's sort key, tagged with the list it belongs to,
so a cursor from one list handed to another is a 422, not a wrong page.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Callable, Sequence
from typing import Annotated, Any, Final, TypeVar

import orjson
from fastapi import Query

from domain.errors import ValidationFailed

# The API contract: default 50, at most 500, more is 422.
PAGE_SIZE_DEFAULT: Final = 50
PAGE_SIZE_MAX: Final = 500
# Our cursors are a few dozen characters; anything far longer is not one of ours.
CURSOR_CHARS_MAX: Final = 512

# A record of a page: a reader's row or record, or an item already decoded.
Row = TypeVar("Row")

Limit = Annotated[
    int,
    Query(ge=1, le=PAGE_SIZE_MAX, description=f"Page size, at most {PAGE_SIZE_MAX}."),
]
Cursor = Annotated[
    str | None,
    Query(
        max_length=CURSOR_CHARS_MAX,
        pattern=r"^[A-Za-z0-9_-]+$",
        description="`next_cursor` of the previous page.",
    ),
]


class QueryInvalid(ValidationFailed):
    """A query parameter that passed its type but not its meaning: 422 with the field."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"invalid query parameter {field}: {message}")
        # Same `field` form as FastAPI's own validation errors (`query.limit`).
        self.errors = [{"field": f"query.{field}", "message": message}]


def encode_cursor(kind: str, key: Sequence[str | int]) -> str:
    raw = orjson.dumps([kind, *key])
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


def decode_cursor(cursor: str, kind: str, arity: int) -> list[Any]:
    """The sort key a cursor carries; 422 `validation_error` for anything else."""
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        data = orjson.loads(raw)
    except (binascii.Error, ValueError):
        raise QueryInvalid("cursor", "not a cursor this API issued") from None
    if not isinstance(data, list) or len(data) != arity + 1 or data[0] != kind:
        raise QueryInvalid("cursor", "not a cursor of this list")
    return data[1:]


def page_reply(
    rows: Sequence[Row],
    limit: int,
    view: Callable[[Row], dict[str, Any]],
    cursor_of: Callable[[Row], str],
) -> dict[str, Any]:
    """A page from up to `limit + 1` rows: the extra row only says another page exists."""
    assert len(rows) <= limit + 1, "fetch at most one row beyond the page"
    shown = rows[:limit]
    more = len(rows) > limit
    return {
        "items": [view(row) for row in shown],
        "next_cursor": cursor_of(shown[-1]) if more else None,
    }
