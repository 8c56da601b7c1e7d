"""app/runtime.py `in_order`: the one-shot `verify` and `refresh` work on several objects at once, and print each
object's lines in the configured order, as if they had run in turn."""

from __future__ import annotations

import asyncio

import pytest

from replicator.app.runtime import in_order, objects_at_once
from replicator.config import load_settings


async def test_results_come_in_the_names_order_with_at_most_at_once_running():
    running, most = 0, 0
    finish = {"a": asyncio.Event(), "b": asyncio.Event(), "c": asyncio.Event(), "d": asyncio.Event()}

    async def work(name: str) -> str:
        nonlocal running, most
        running += 1
        most = max(most, running)
        try:
            await finish[name].wait()
            return name.upper()
        finally:
            running -= 1

    got = []

    async def consume() -> None:
        async for name, value in in_order(list(finish), work, at_once=2):
            got.append((name, value))

    consumer = asyncio.create_task(consume())
    finish["b"].set()  # the second ends first: nothing is yielded before the first
    await asyncio.wait_for(_until(lambda: running == 2 and most == 2), 5)
    assert got == []
    for name in "acd":
        finish[name].set()
    await asyncio.wait_for(consumer, 5)
    assert got == [("a", "A"), ("b", "B"), ("c", "C"), ("d", "D")] and most == 2


async def test_an_error_is_raised_at_its_turn_and_the_work_still_running_is_cancelled():
    cancelled = []

    async def work(name: str) -> str:
        if name == "b":
            raise ValueError("b failed")
        try:
            await asyncio.Event().wait() if name == "c" else None
        except asyncio.CancelledError:
            cancelled.append(name)
            raise
        return name

    got = []
    with pytest.raises(ValueError, match="b failed"):
        async for name, _ in in_order(["a", "b", "c"], work, at_once=3):
            got.append(name)
    assert got == ["a"] and cancelled == ["c"]


def test_objects_at_once_stays_within_the_pool():
    assert objects_at_once(load_settings(overrides={"postgres": {"pool_size": 8}})) == 4
    assert objects_at_once(load_settings(overrides={"postgres": {"pool_size": 5}})) == 2
    assert objects_at_once(load_settings(overrides={"postgres": {"pool_size": 2}})) == 1


async def _until(predicate) -> None:
    while not predicate():
        await asyncio.sleep(0)
