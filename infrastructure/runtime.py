"""What every long-running Vigil process sets up in the interpreter before it serves.

The garbage collector: by default CPython collects its youngest generation every 700
allocations, and the older ones every 10 collections of the one below. A Vigil process
allocates thousands of short-lived objects per request or batch (events, rows, dicts),
most freed at once by reference counting, while it holds large long-lived structures
(accounts in memory, rule windows, caches) that every older collection walks again. The
command API spent 10-25 % of its CPU per batch item on collections that found little.
So: what start-up built is frozen out of collection, and collections run less often.
Reference cycles are still collected, later (the oldest generation at most every few
minutes under load).
"""

from __future__ import annotations

import asyncio
import gc
from collections.abc import Coroutine
from typing import Any, Final, TypeVar

T = TypeVar("T")

# Allocations (less frees) between young collections; young collections between middle
# ones; middle ones between full ones (CPython also waits for the long-lived objects to
# have grown by a quarter before a full collection).
GC_THRESHOLDS: Final = (50_000, 50, 100)


def tune_gc() -> None:
    """Freeze what exists now (modules, the app, settings) and collect less often. Call
    once the process has built what it keeps, just before it starts serving."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLDS)


def run_async(main: Coroutine[Any, Any, T]) -> T:
    """`asyncio.run` on uvloop's event loop where it is installed (uvicorn's standard
    extra brings it, on Linux): the relay, the workers and the case opener spent a tenth
    of their time in the standard loop's own work (selectors, handles, futures)."""
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is there wherever uvicorn's extra is
        return asyncio.run(main)
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(main)
