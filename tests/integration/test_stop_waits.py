"""A stop ends retry waits at once (issue 21, defect 4): a call retried with backoff does not hold up a stop for
the rest of its wait (API-limit errors wait 15 s and more)."""

from __future__ import annotations

import asyncio
import time

import pytest
from structlog.testing import capture_logs

from replicator.app.runtime import open_store, salesforce_client
from replicator.model import Stopped
from replicator.pipeline.poll import ObjectPoller
from replicator.sim.server import SimulatorThread

from .helpers import settings_for, sim_put, wait_for


@pytest.fixture(scope="module")
def sim():
    with SimulatorThread(records=50, seed=3) as thread:
        yield thread.info


async def test_a_stop_during_a_retry_wait_of_a_poll_ends_it_at_once(sim, pg_url):
    settings = settings_for(sim, pg_url, "waits", objects={"Task": {"mode": "poll"}})
    async with salesforce_client(settings) as client, open_store(settings) as store:
        poller = ObjectPoller(client, store, settings, "Task", settings.objects["Task"])
        stop = asyncio.Event()
        await sim_put(sim, "/__sim/faults", {"limit_exceeded_rate": 1.0})  # every REST call: 403, then a long wait
        try:
            with capture_logs() as logs:
                run = asyncio.ensure_future(poller.run(stop))

                async def waiting() -> bool:
                    return any(e["event"] == "retry" for e in logs) or run.done()

                await wait_for(waiting, timeout=30)
                assert not run.done(), run.exception()
                stopped_at = time.monotonic()
                stop.set()
                with pytest.raises(Stopped):
                    await asyncio.wait_for(run, 10)
            assert time.monotonic() - stopped_at < 1.0
        finally:
            await sim_put(sim, "/__sim/faults", {"limit_exceeded_rate": 0.0})
