"""Stopping a resumable step when the service stops."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import TypeVar

from ..model import Stopped
from ..retry import wait_event

T = TypeVar("T")


async def until_stopped(stop: asyncio.Event, coro: Awaitable[T]) -> T:
    """Await `coro` unless `stop` is set first; then cancel it and raise Stopped. For resumable steps (a
    backfill commits page by page, a position capture stores nothing until it has one) that must not hold up
    a shutdown."""
    task = asyncio.ensure_future(coro)
    waiter = asyncio.ensure_future(stop.wait())
    try:
        await asyncio.wait({task, waiter}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        waiter.cancel()
        if not task.done():
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
    if task.cancelled():
        raise Stopped()
    return task.result()


async def sleep_or_stop(stop: asyncio.Event, seconds: float) -> None:
    """Wait `seconds`, or less when `stop` is set first."""
    await wait_event(stop, seconds)
