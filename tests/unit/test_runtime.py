"""The interpreter settings every long-running process applies before serving."""

from __future__ import annotations

import asyncio
import gc
from collections.abc import Iterator

import pytest

from infrastructure.runtime import GC_THRESHOLDS, run_async, tune_gc


@pytest.fixture
def restored_gc() -> Iterator[None]:
    thresholds = gc.get_threshold()
    yield
    gc.unfreeze()
    gc.set_threshold(*thresholds)


def test_tune_gc_freezes_what_exists_and_collects_less_often(restored_gc: None) -> None:
    kept = [object() for _ in range(10)]
    tune_gc()
    assert gc.get_threshold() == GC_THRESHOLDS
    assert gc.get_freeze_count() > len(kept)
    assert GC_THRESHOLDS[0] > 700  # fewer young collections than CPython's default


def test_the_long_running_processes_serve_on_uvloop() -> None:
    async def loop_module() -> str:
        await asyncio.sleep(0)
        return type(asyncio.get_running_loop()).__module__

    assert run_async(loop_module()).startswith("uvloop")
