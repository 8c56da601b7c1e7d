"""An error no retry fixes stops the unit it concerns only (issue 21 defect 3; issue 18 defect 8), as for an object
on a subscription of its own (tests/integration/test_permanent_errors.py):
- a channel member's configuration error: that member FAILED with its error (stored, `/readyz` 503 naming it), every
  other member goes on streaming on the channel (before: the whole service ended with exit code 2);
- a platform event topic the org does not have: that topic FAILED in `/readyz`, the objects go on (before: its
  Subscribe was retried every minute for ever, and nothing said so but a log line)."""

from __future__ import annotations

import asyncio

import httpx
import pytest

from replicator.app.service import Service
from replicator.sim.server import SimulatorThread

from .helpers import pg_value, settings_for, sim_admin, wait_for

CHANNEL = "/data/ChangeEvents"
pytestmark = pytest.mark.slow  # the service, until a unit stops


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


async def test_a_platform_event_topic_the_org_lacks_stops_that_topic_and_the_objects_go_on(sim, pg_url):
    settings = settings_for(sim, pg_url, "pefail", salesforce={"pubsub_endpoint": sim["pubsub_endpoint"]},
                            stream={"batch_max_wait_s": 0.05, "platform_events": ["No_Such_Event__e"]},
                            service={"control_poll_s": 0.2}, objects={"Account": {}})
    svc = Service(settings)
    task = asyncio.create_task(svc.run())
    try:
        async def failed_and_streaming():
            if task.done():
                return True
            if svc.endpoints is None or not svc.endpoints.port:  # not listening yet
                return False
            async with httpx.AsyncClient() as http:
                body = (await http.get(f"http://127.0.0.1:{svc.endpoints.port}/readyz")).json()
            event = body["objects"].get("/event/No_Such_Event__e", {})
            return event.get("phase") == "FAILED" and await _phase(pg_url, "Account") == "STREAMING"
        await wait_for(failed_and_streaming, timeout=120)
        assert not task.done(), f"the service ended: {task.exception() if not task.cancelled() else 'cancelled'}"
        async with httpx.AsyncClient() as http:
            ready = await http.get(f"http://127.0.0.1:{svc.endpoints.port}/readyz")
        assert ready.status_code == 503
        assert "stream.platform_events" in ready.json()["objects"]["/event/No_Such_Event__e"]["reason"]
    finally:
        svc.stop.set()
        result = await asyncio.wait_for(task, 60)
    assert result == 0
