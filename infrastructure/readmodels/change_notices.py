"""What the balances and statements projections NOTIFY after a commit, for the query API's
read-your-writes waits: the accounts a batch changed, each as `<account_id>:<version>`,
joined by commas into as few payloads as PostgreSQL takes (one per batch, most often).
One notification per account cost PostgreSQL and the listening API a notification each,
thousands a second, heard whether or not a request was waiting."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Final
from uuid import UUID

# PostgreSQL refuses a payload of 8000 bytes or more.
PAYLOAD_BYTES_MAX: Final = 7_900
SEPARATOR: Final = ","


def notice_payloads(touched: Mapping[UUID, int]) -> list[str]:
    """The payloads of a batch's changed accounts (ASCII: a UUID, a colon, a version)."""
    payloads: list[str] = []
    entries: list[str] = []
    size = 0
    for account_id, version in touched.items():
        entry = f"{account_id}:{version}"
        if entries and size + len(SEPARATOR) + len(entry) > PAYLOAD_BYTES_MAX:
            payloads.append(SEPARATOR.join(entries))
            entries, size = [], 0
        size += len(entry) + (len(SEPARATOR) if entries else 0)
        entries.append(entry)
    if entries:
        payloads.append(SEPARATOR.join(entries))
    return payloads


def noticed_accounts(payload: str) -> list[str]:
    """The account ids a payload names, as they were written (`str(UUID)`). Anything else
    a NOTIFY carries names no account, so it wakes no one."""
    return [entry.partition(":")[0] for entry in payload.split(SEPARATOR)]
