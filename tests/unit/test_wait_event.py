"""retry.wait_event: a cancellation that arrives in the step its event is set is never lost (Python 3.11's
asyncio.wait_for loses it: https://github.com/python/cpython/issues/86296), so a task waiting on a stop or a lease's
wake-up ends when cancelled."""

import asyncio

import pytest

from replicator.pipeline.stopping import sleep_or_stop
from replicator.retry import wait_event


async def _cancel_as_set(waiting) -> asyncio.Task:
    event = asyncio.Event()
    task = asyncio.create_task(waiting(event))
    await asyncio.sleep(0)  # one step of the loop: the task runs up to its wait (a yield, not a timed wait)
    assert not task.done()
    event.set()
    assert task.cancel()
    return task


@pytest.mark.parametrize("waiting", [lambda e: wait_event(e, 30), lambda e: sleep_or_stop(e, 30)],
                         ids=["wait_event", "sleep_or_stop"])
async def test_a_cancel_in_the_step_the_event_is_set_cancels_the_task(waiting):
    task = await _cancel_as_set(waiting)
    with pytest.raises(asyncio.CancelledError):
        await task
    assert task.cancelled()


async def test_wait_event_tells_set_from_timed_out():
    event = asyncio.Event()
    assert await wait_event(event, 0.01) is False
    event.set()
    assert await wait_event(event, 30) is True
    assert await wait_event(asyncio.Event(), 0) is False
