"""The request bodies' text fields, each bounded, all checked by one rule
(`domain.text.acceptable_text`): normalised to NFC and trimmed before anything stores,
hashes or fingerprints them; refused with a 422 naming the field otherwise."""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated

from pydantic import AfterValidator, StringConstraints

from domain.account import OWNER_CHARS_MAX
from domain.case import ASSIGNEE_CHARS_MAX, NOTE_CHARS_MAX
from domain.text import BRANCH_PATTERN, acceptable_text
from domain.watchlist import REASON_CHARS_MAX

REFERENCE_CHARS_MAX = 140
STATUS_REASON_CHARS_MAX = 500
# Checked before the rule runs, so a body cannot have it normalise megabytes (room for
# what trimming and NFC take away).
RAW_CHARS_FACTOR = 4


def _rule(chars_max: int, *, multiline: bool = False) -> Callable[[str], str]:
    def check(value: str) -> str:
        return acceptable_text(value, chars_max=chars_max, multiline=multiline)

    return check


def _raw(chars_max: int) -> StringConstraints:
    return StringConstraints(max_length=chars_max * RAW_CHARS_FACTOR)


Owner = Annotated[str, _raw(OWNER_CHARS_MAX), AfterValidator(_rule(OWNER_CHARS_MAX))]
Reference = Annotated[str, _raw(REFERENCE_CHARS_MAX), AfterValidator(_rule(REFERENCE_CHARS_MAX))]
StatusReason = Annotated[
    str, _raw(STATUS_REASON_CHARS_MAX), AfterValidator(_rule(STATUS_REASON_CHARS_MAX))
]
WatchlistReason = Annotated[str, _raw(REASON_CHARS_MAX), AfterValidator(_rule(REASON_CHARS_MAX))]
# Notes and comments are the only text that may run over several lines.
Note = Annotated[str, _raw(NOTE_CHARS_MAX), AfterValidator(_rule(NOTE_CHARS_MAX, multiline=True))]
Assignee = Annotated[str, _raw(ASSIGNEE_CHARS_MAX), AfterValidator(_rule(ASSIGNEE_CHARS_MAX))]
# Query filters compared with stored text (an actor, an assignee): a NUL byte in one would
# reach PostgreSQL, which refuses it with an error instead of finding nothing.
FILTER_CHARS_MAX = 256
FilterText = Annotated[str, _raw(FILTER_CHARS_MAX), AfterValidator(_rule(FILTER_CHARS_MAX))]
Branch = Annotated[str, StringConstraints(pattern=f"^{BRANCH_PATTERN.pattern}$")]
