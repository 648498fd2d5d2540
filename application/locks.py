"""In-process locks per account, striped so their number stays bounded."""

from __future__ import annotations

import threading
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from uuid import UUID


class StripedLocks:
    def __init__(self, stripes: int) -> None:
        assert stripes > 0
        self._locks = [threading.Lock() for _ in range(stripes)]

    @contextmanager
    def holding(self, groups: Iterable[Iterable[UUID]]) -> Iterator[None]:
        # Always in ascending stripe order: two groups never wait for each other in a cycle.
        indexes = sorted(
            {account_id.int % len(self._locks) for ids in groups for account_id in ids}
        )
        acquired: list[threading.Lock] = []
        try:
            for index in indexes:
                lock = self._locks[index]
                lock.acquire()
                acquired.append(lock)
            yield
        finally:
            for lock in reversed(acquired):
                lock.release()
