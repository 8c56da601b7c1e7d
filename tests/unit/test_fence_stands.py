"""postgres/leases.py `Fence.stands`: whether the lease still carries a fence whose transaction's session ended.
Only a clear "no" refuses the write (counted); when the database cannot tell, the write's own error goes on."""

from __future__ import annotations

import asyncio

from replicator.postgres import leases
from replicator.postgres.leases import Fence


async def _answer(value):
    return value


async def test_a_fence_stands_unless_the_database_says_otherwise(monkeypatch):
    monkeypatch.setattr(leases, "ASK_TIMEOUT_S", 0.05)

    async def never(unit: str, number: int) -> bool:
        await asyncio.Event().wait()
        return False

    async def fails(unit: str, number: int) -> bool:
        raise ConnectionRefusedError("the database is down")

    assert await Fence("object:Account", "r1", 3, ask=lambda u, n: _answer(False)).stands() is False
    assert await Fence("object:Account", "r1", 3, ask=lambda u, n: _answer(True)).stands() is True
    assert await Fence("object:Account", "r1", 3, ask=fails).stands() is True
    assert await Fence("object:Account", "r1", 3, ask=never).stands() is True  # no answer within the bound
    assert await Fence("object:Account", "r1", 3).stands() is True  # no way to ask
    assert await Fence("object:Account", "r1", 3, lost=True, ask=lambda u, n: _answer(True)).stands() is False
