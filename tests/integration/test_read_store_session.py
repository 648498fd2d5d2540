"""The query API's read store sessions: read only, and no JIT compiling its small queries."""

from __future__ import annotations

import asyncio

import pytest

from infrastructure.readmodels.readstore import ReadStore
from infrastructure.settings import Settings

pytestmark = pytest.mark.integration


def test_read_store_sessions_are_read_only_without_jit(settings: Settings) -> None:
    async def show() -> tuple[str, str]:
        store = await ReadStore.open(settings)
        try:
            async with store.connection() as conn:
                jit = await (await conn.execute("SHOW jit")).fetchone()
                read_only = await (
                    await conn.execute("SHOW default_transaction_read_only")
                ).fetchone()
        finally:
            await store.close()
        assert jit is not None
        assert read_only is not None
        return jit["jit"], read_only["default_transaction_read_only"]

    assert asyncio.run(show()) == ("off", "on")
