"""A projection's lane takes the batches queued while it was busy together, within its
bound; the commit ledger gives the consumer's positions of the newest batch every lane
has applied, once."""

from __future__ import annotations

import asyncio
from typing import Any, cast

from aiokafka import TopicPartition

from infrastructure.workers.projections import CommitLedger, Lane, Projection
from projections.envelope import Envelope


def _lane(events_max: int) -> Lane:
    # _take never touches the connection or the cache.
    projection = Projection("kpis", cast(Any, None))
    return Lane(projection, cast(Any, None), cast(Any, None), events_max, asyncio.Event())


def _events(n: int) -> list[Envelope]:
    return [cast(Envelope, object()) for _ in range(n)]


def test_a_lane_takes_what_queued_in_order_up_to_its_bound() -> None:
    lane = _lane(events_max=8)
    batches = [_events(3), _events(4), _events(5), _events(20), _events(1)]
    for sequence, events in enumerate(batches, start=1):
        lane.put(sequence, events)
    assert lane.pending_events == 33

    sequence, taken = lane._take()
    assert sequence == 2
    assert taken == [*batches[0], *batches[1]]  # in order, 7 of at most 8
    assert lane.pending_events == 26

    sequence, taken = lane._take()
    assert (sequence, taken) == (3, batches[2])  # 5 + 20 would pass the bound

    sequence, taken = lane._take()
    assert (sequence, taken) == (4, batches[3])  # a batch over the bound goes alone

    sequence, taken = lane._take()
    assert (sequence, taken) == (5, batches[4])
    assert lane.pending_events == 0


def test_a_lane_takes_an_empty_batch_to_move_past_it() -> None:
    lane = _lane(events_max=8)
    lane.put(1, [])
    lane.put(2, _events(2))
    sequence, taken = lane._take()
    assert sequence == 2
    assert len(taken) == 2


def test_the_ledger_gives_the_newest_positions_every_lane_has_applied_once() -> None:
    ledger = CommitLedger()
    first, second = TopicPartition("t", 0), TopicPartition("t", 1)
    assert ledger.add({first: 10}) == 1
    assert ledger.add({first: 10, second: 4}) == 2
    assert ledger.add({first: 12, second: 4}) == 3
    assert ledger.ready(0) is None
    assert ledger.ready(2) == {first: 10, second: 4}
    assert ledger.ready(2) is None
    assert ledger.ready(3) == {first: 12, second: 4}
    assert ledger.ready(5) is None
