"""Instants that clients give (query filters, an export's range, a suppression's end, the
CLI's `--from` and `--to`): ISO 8601 with a zone, and inside the years the interpreter
holds once moved to UTC. A time with a zone can sit past either end of that range once
converted (0001-01-01T00:00+14:00 is in year 0 in UTC, 9999-12-31T23:59-14:00 in year
10000), and turning it into UTC text, or stepping from it, would fail with an error
instead of a 422 naming the field."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Annotated, Final

from pydantic import AfterValidator, AwareDatetime

# A day in from each end of the interpreter's range, so that whatever serves a request
# may step a day from the instant it was given.
EARLIEST: Final = datetime.min.replace(tzinfo=UTC) + timedelta(days=1)
LATEST: Final = datetime.max.replace(tzinfo=UTC) - timedelta(days=1)
RANGE_RULE: Final = (
    f"must lie between {EARLIEST.date().isoformat()} and {LATEST.date().isoformat()} in UTC"
)


def within_range(moment: datetime) -> bool:
    """Whether an aware instant lies between EARLIEST and LATEST once in UTC."""
    try:
        return EARLIEST <= moment.astimezone(UTC) <= LATEST
    except OverflowError:
        return False


def _within_range(moment: datetime) -> datetime:
    if not within_range(moment):
        raise ValueError(RANGE_RULE)
    return moment


Instant = Annotated[AwareDatetime, AfterValidator(_within_range)]
