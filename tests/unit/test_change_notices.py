"""The projections' change notices: a batch's accounts in as few NOTIFY payloads as fit,
and the waiters they wake (no I/O: asyncio events only)."""

from __future__ import annotations

import asyncio
import itertools
import uuid

from hypothesis import given
from hypothesis import strategies as st

from infrastructure.readmodels.change_notices import (
    PAYLOAD_BYTES_MAX,
    notice_payloads,
    noticed_accounts,
)
from infrastructure.readmodels.freshness import ChangeWaiters

CHANNEL = "readmodel_accounts"


@given(
    st.dictionaries(
        st.uuids(), st.integers(min_value=1, max_value=2**63 - 1), min_size=0, max_size=600
    )
)
def test_every_account_is_in_exactly_one_payload_under_postgres_limit(
    touched: dict[uuid.UUID, int],
) -> None:
    payloads = notice_payloads(touched)
    assert all(len(p.encode()) <= PAYLOAD_BYTES_MAX for p in payloads)
    named = [entry for payload in payloads for entry in payload.split(",")]
    assert named == [f"{a}:{v}" for a, v in touched.items()]
    assert [a for p in payloads for a in noticed_accounts(p)] == [str(a) for a in touched]
    # As few as fit: each payload but the last would overflow with the next entry.
    for payload, following in itertools.pairwise(payloads):
        assert len(payload) + 1 + len(following.split(",")[0]) > PAYLOAD_BYTES_MAX


def test_a_notice_wakes_only_the_requests_waiting_on_the_accounts_it_names() -> None:
    async def scenario() -> tuple[bool, bool, bool]:
        waiters = ChangeWaiters()
        named, other, elsewhere = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
        with (
            waiters.watch(CHANNEL, named) as woken,
            waiters.watch(CHANNEL, other) as not_named,
            waiters.watch("readmodel_transactions", named) as other_channel,
        ):
            [payload] = notice_payloads({elsewhere: 3, named: 7})
            waiters.notify(CHANNEL, payload)
            waiters.notify(CHANNEL, "not a notice, , :")
            return woken.is_set(), not_named.is_set(), other_channel.is_set()

    assert asyncio.run(scenario()) == (True, False, False)
