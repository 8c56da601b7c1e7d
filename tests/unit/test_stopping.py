"""Stopping a resumable step: the step ends with `Stopped` (what the supervisor treats as a clean stop), and an
operator's resync request ends a stream with `ResyncRequested`, both without a message of their own."""

from __future__ import annotations

import asyncio

import pytest

from replicator.model import ResyncRequested, Stopped, TerminalError
from replicator.pipeline.stopping import until_stopped


async def test_a_stop_ends_a_resumable_step_with_stopped_and_cancels_it():
    stop, started, cancelled = asyncio.Event(), asyncio.Event(), asyncio.Event()

    async def forever() -> None:
        started.set()
        try:
            await asyncio.Event().wait()
        finally:
            cancelled.set()

    step = asyncio.ensure_future(until_stopped(stop, forever()))
    await started.wait()
    stop.set()
    with pytest.raises(Stopped):
        await step
    assert cancelled.is_set()


def test_a_resync_request_is_raised_without_a_message():
    with pytest.raises(ResyncRequested) as raised:
        raise ResyncRequested()
    assert isinstance(raised.value, TerminalError) and str(raised.value)
