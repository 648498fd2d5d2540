"""A projection's lane takes the batches queued while it was busy together, within its
bound; the commit ledger gives the consumer's positions of the newest batch every lane
has applied, once."""

from __future__ import annotations

import asyncio
from typing import Any, cast

from aiokafka import TopicPartition

from infrastructure.workers.lanes import PACED_AFTER_EVENTS, CommitLedger, Lane
from infrastructure.workers.projections import Projection
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


class _Recording(Projection):
    """A projection that only records the batches it is given, and when."""

    def __init__(self) -> None:
        super().__init__("kpis", cast(Any, None))
        self.applied: list[tuple[float, int]] = []

    async def apply(self, conn: Any, cache: Any, events: list[Envelope]) -> None:
        self.applied.append((asyncio.get_running_loop().time(), len(events)))


def test_a_paced_lane_after_a_large_batch_applies_what_queued_within_its_interval_together() -> (
    None
):
    async def scenario() -> list[tuple[float, int]]:
        projection = _Recording()
        lane = Lane(projection, cast(Any, None), cast(Any, None), 1_000, asyncio.Event(), 0.3)
        running = asyncio.create_task(lane.run())
        lane.put(1, _events(PACED_AFTER_EVENTS))
        await asyncio.sleep(0.05)
        assert len(projection.applied) == 1  # nothing before it: applied at once
        for sequence in range(2, 6):  # four batches within the interval
            lane.put(sequence, _events(2))
            await asyncio.sleep(0.02)
        assert len(projection.applied) == 1
        await asyncio.sleep(0.4)
        lane.close()
        await asyncio.wait_for(running, 1)
        assert lane.done == 5
        return projection.applied

    (first_s, first), (second_s, second) = asyncio.run(scenario())
    assert (first, second) == (PACED_AFTER_EVENTS, 8)  # the four that queued, in one batch
    assert second_s - first_s >= 0.3 - 0.01


def test_a_paced_lane_after_a_small_batch_applies_the_next_at_once() -> None:
    async def scenario() -> list[tuple[float, int]]:
        projection = _Recording()
        lane = Lane(projection, cast(Any, None), cast(Any, None), 1_000, asyncio.Event(), 60)
        running = asyncio.create_task(lane.run())
        for sequence in range(1, 4):  # a quiet hour: each batch applied as it comes
            lane.put(sequence, _events(PACED_AFTER_EVENTS - 1))
            await asyncio.sleep(0.05)
        lane.close()
        await asyncio.wait_for(running, 1)
        return projection.applied

    assert [n for _, n in asyncio.run(scenario())] == [PACED_AFTER_EVENTS - 1] * 3


def test_a_paced_lane_does_not_wait_once_closing_or_a_whole_batch_behind() -> None:
    async def scenario(close: bool) -> float:
        projection = _Recording()
        events_max = PACED_AFTER_EVENTS + 4
        lane = Lane(projection, cast(Any, None), cast(Any, None), events_max, asyncio.Event(), 60)
        running = asyncio.create_task(lane.run())
        lane.put(1, _events(PACED_AFTER_EVENTS))
        await asyncio.sleep(0.05)
        lane.put(2, _events(2))  # less than a whole batch: it waits for the interval
        await asyncio.sleep(0.05)
        assert len(projection.applied) == 1
        started = asyncio.get_running_loop().time()
        if close:
            lane.close()
        else:
            lane.put(3, _events(events_max - 2))  # now a whole batch behind
        while len(projection.applied) < 2:
            await asyncio.sleep(0.01)
            assert asyncio.get_running_loop().time() - started < 5, "waited out the interval"
        waited = projection.applied[1][0] - started
        lane.close()
        await asyncio.wait_for(running, 1)
        assert lane.done == (2 if close else 3)
        return waited

    assert asyncio.run(scenario(close=True)) < 1
    assert asyncio.run(scenario(close=False)) < 1
