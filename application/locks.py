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

    def stripes(self, groups: Iterable[Iterable[UUID]]) -> list[int]:
        """The stripes of these accounts, in the one order every taker follows."""
        return sorted({account_id.int % len(self._locks) for ids in groups for account_id in ids})

    @contextmanager
    def holding(self, groups: Iterable[Iterable[UUID]]) -> Iterator[None]:
        # Always in ascending stripe order: two groups never wait for each other in a cycle.
        stripes = self.stripes(groups)
        self.acquire(stripes)
        try:
            yield
        finally:
            self.release(stripes)

    def acquire(self, stripes: list[int]) -> None:
        """Wait for each, in ascending order. Only for a caller holding no other stripe."""
        acquired: list[int] = []
        try:
            for index in stripes:
                self._locks[index].acquire()
                acquired.append(index)
        except BaseException:
            self.release(acquired)
            raise

    def try_acquire(self, stripes: list[int]) -> bool:
        """All of them at once without waiting, or none (a caller that already holds some
        stripes must never wait for another: that is how two takers deadlock)."""
        acquired: list[int] = []
        for index in stripes:
            if not self._locks[index].acquire(blocking=False):
                self.release(acquired)
                return False
            acquired.append(index)
        return True

    def release(self, stripes: Iterable[int]) -> None:
        # Any thread may release: the commit pipeline takes a group's stripes in the
        # thread that judges it and gives them back in the one that writes it.
        for index in sorted(stripes, reverse=True):
            self._locks[index].release()
