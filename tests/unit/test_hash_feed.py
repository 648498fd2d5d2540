"""The relay's hand-over of event hashes to the checkpointer: what it holds, what it lets
go, and that a range it does not cover is never filled by a guess."""

from __future__ import annotations

import pytest

from infrastructure.audit.checkpoints import HashFeed, HashSpan


def span(after: int, *ids: int) -> HashSpan:
    return HashSpan(after, list(ids), [f"h{i}" for i in ids])


def test_the_events_right_after_the_position_come_in_order_up_to_the_limit() -> None:
    feed = HashFeed()
    feed.offer(span(0, 1, 2, 3, 5))  # 4 rolled back: never stored
    feed.offer(span(5, 6, 7))
    assert feed.take(0, 10) == [(1, "h1"), (2, "h2"), (3, "h3"), (5, "h5")]
    assert feed.take(2, 2) == [(3, "h3"), (5, "h5")]
    assert feed.take(5, 10) == [(6, "h6"), (7, "h7")]
    assert feed.take(7, 10) == []
    assert feed.events == 0  # every span at or below the position was let go


def test_a_position_no_span_covers_gets_nothing() -> None:
    feed = HashFeed()
    feed.offer(span(10, 11, 12))
    assert feed.take(3, 10) == []  # 4 to 10 were never offered: the store has them
    assert feed.events == 2
    assert feed.take(10, 10) == [(11, "h11"), (12, "h12")]


def test_a_rewound_relays_spans_overlap_and_any_that_covers_the_position_serves() -> None:
    feed = HashFeed()
    feed.offer(span(20, 21, 22, 23))
    feed.offer(span(0, 1, 2))  # the relay rewound to 0 and reads again
    feed.offer(span(2, 3, 4))
    assert feed.take(3, 10) == [(4, "h4")]
    assert feed.take(21, 10) == [(22, "h22"), (23, "h23")]
    assert feed.events == 3  # the spans below 21 were let go


def test_past_its_bound_the_feed_lets_the_oldest_spans_go() -> None:
    feed = HashFeed(events_max=4)
    feed.offer(span(0, 1, 2))
    feed.offer(span(2, 3, 4))
    feed.offer(span(4, 5, 6))
    assert feed.events == 4
    assert feed.take(0, 10) == []  # the store is read for 1 and 2
    assert feed.take(2, 10) == [(3, "h3"), (4, "h4")]


@pytest.mark.parametrize(
    ("after", "ids", "hashes"),
    [(0, [], []), (3, [3, 4], ["a", "b"]), (0, [1, 2], ["a"])],
)
def test_a_malformed_span_is_refused(after: int, ids: list[int], hashes: list[str]) -> None:
    with pytest.raises(AssertionError):
        HashFeed().offer(HashSpan(after, ids, hashes))
