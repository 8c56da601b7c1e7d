"""A configuration error of one channel member stops that member only (issue 21 defect 3; issue 18 defect 8): as
for an object on a subscription of its own (tests/integration/test_permanent_errors.py), the member is FAILED with
its error (stored, `/readyz` 503 naming it) and every other member goes on streaming on the channel. Before, the
channel's unit took the error as its own and the whole service ended with exit code 2."""

from __future__ import annotations

import asyncio

import httpx
import pytest

from replicator.app.service import Service
from replicator.sim.server import SimulatorThread

from .helpers import pg_value, settings_for, sim_admin, wait_for

CHANNEL = "/data/ChangeEvents"


@pytest.fixture(scope="module")
def sim():
    with SimulatorThread(records=40, seed=21, keepalive_seconds=0.2) as thread:
        yield thread.info


def _settings(sim, pg_url, schema, objects):
    return settings_for(sim, pg_url, schema, salesforce={"pubsub_endpoint": sim["pubsub_endpoint"]},
                        stream={"batch_max_wait_s": 0.05, "topic_check_s": 0.3, "channel": CHANNEL},
                        service={"control_poll_s": 0.2}, objects=objects)


async def _phase(pg_url, name: str) -> str | None:
    return await pg_value(pg_url, f"SELECT phase FROM replicator.objects WHERE object = '{name}'")


@pytest.mark.parametrize("case", ["cdc_without_topic", "key_field_unknown"])
async def test_a_members_configuration_error_stops_that_member_and_the_channel_goes_on(sim, pg_url, case):
    contact = {"mode": "cdc"} if case == "cdc_without_topic" else {"key": "No_Such_Key__c"}
    settings = _settings(sim, pg_url, f"chfail_{case}", {"Account": {}, "Contact": contact})
    selected = (await sim_admin(sim, "GET", "/__sim/cdc")).json()["objects"]
    if case == "cdc_without_topic":  # Contact not selected for Change Data Capture, yet configured mode = "cdc"
        await sim_admin(sim, "PUT", "/__sim/cdc", {"objects": [o for o in selected if o != "Contact"]})
    svc = Service(settings)
    task = asyncio.create_task(svc.run())
    try:
        async def settled():
            if task.done():
                return True
            return await _phase(pg_url, "Contact") == "FAILED" and await pg_value(
                pg_url, "SELECT phase = 'STREAMING' AND channel IS NOT NULL FROM replicator.objects"
                        " WHERE object = 'Account'")
        await wait_for(settled, timeout=120)
        assert not task.done(), f"the service ended: {task.exception() if not task.cancelled() else 'cancelled'}"
        error = await pg_value(pg_url, "SELECT last_error FROM replicator.objects WHERE object = 'Contact'")
        assert ("no change-event topic" if case == "cdc_without_topic" else "No_Such_Key__c") in error
        async with httpx.AsyncClient() as http:
            ready = await http.get(f"http://127.0.0.1:{svc.endpoints.port}/readyz")
        assert ready.status_code == 503 and "Contact" in ready.text, ready.text
        # Account still streams on the channel: a change made now arrives by its events
        account = await pg_value(pg_url, f"SELECT id FROM chfail_{case}.account ORDER BY id LIMIT 1")
        r = await sim_admin(sim, "POST", "/__sim/changes",
                            [{"object": "Account", "type": "UPDATE", "ids": [account], "fields": {"Phone": "channel-on"}}])
        assert r.status_code == 200, r.text
        await wait_for(lambda: pg_value(pg_url, f"SELECT phone = 'channel-on' FROM chfail_{case}.account"
                                                f" WHERE id = '{account}'"), timeout=60)
    finally:
        await sim_admin(sim, "PUT", "/__sim/cdc", {"objects": selected})
        svc.stop.set()
        result = await asyncio.wait_for(task, 60)
    assert result == 0
