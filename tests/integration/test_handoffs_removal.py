"""An object that leaves the configuration while it had a topic of its own (lifecycle HANDOFFS TOPIC -> NONE): its
own position is kept as a time position, so adding it back polls past it before it streams, and what changed while
it was out without any event (its entity out of Change Data Capture meanwhile) is read too. The handoff never stops
the service, and a process that only stands by to make it shows nothing of the object."""

from __future__ import annotations

import pytest

from replicator.sim.server import SimulatorThread

from .helpers import all_equal, endpoint_get, pg_value, running_service, sim_admin, streaming, wait_for
from .test_handoffs import _arrived, _live_ids, _marker, _settings, _update

pytestmark = pytest.mark.slow  # the service, restarted


async def _async(value):
    return value


@pytest.fixture(scope="module")
def sim():
    with SimulatorThread(records=60, seed=18, keepalive_seconds=0.2) as thread:
        yield thread.info


async def test_an_object_out_of_the_configuration_while_its_entity_left_cdc_keeps_the_changes_made_meanwhile(
        sim, pg_url):
    """Contact (its own subscription) out of the configuration for one run; meanwhile the org's admin deselects it
    from Change Data Capture, 4 Contacts change (no events: the entity is not selected), and it is selected again;
    then Contact back in the configuration: the 4 changes must be in the copy. Its topic's checkpoint cannot replay
    events that were never published: leaving the configuration keeps its own position as a time position (TOPIC
    -> NONE, as CHANNEL -> NONE), so adding it back polls past it before streaming (POLL -> TOPIC). Found by the
    transitions bench (seed 14020: a late commit that became visible while the entity was deselected)."""
    schema = "readdcdc"
    both = _settings(sim, pg_url, schema, {"Account": {}, "Contact": {}})
    without = _settings(sim, pg_url, schema, {"Account": {}})
    changed, marker = await _live_ids(sim, "Contact", 20, 4), (await _live_ids(sim, "Contact", 24, 1))[0]
    selected = (await sim_admin(sim, "GET", "/__sim/cdc")).json()["objects"]
    async with running_service(both, until=streaming(pg_url, "Account", "Contact", mode="cdc")):
        pass
    try:
        # another replica, its configuration not changed yet, still holds Contact (a rolling update)
        await pg_value(pg_url, "UPDATE replicator.leases SET owner = 'elsewhere', fence = fence + 1,"
                               " expires_at = now() + interval '60 s' WHERE unit = 'object:Contact' RETURNING true")
        async with running_service(without, until=streaming(pg_url, "Account", mode="cdc")) as svc:
            await wait_for(lambda: _async("object:Contact" in getattr(getattr(svc, "units", None), "standby", list)()),
                           timeout=30)
            # standing by for an object only to hand it off is none of this process's readiness (seed 17009: /readyz
            # answered 503, Contact STARTING, for good)
            ready = await endpoint_get(svc.endpoints.port, "/readyz")
            assert ready is not None and ready.status_code == 200 and "Contact" not in ready.json()["objects"], \
                ready and ready.text
            await pg_value(pg_url, "UPDATE replicator.leases SET expires_at = now() WHERE unit = 'object:Contact'"
                                   " RETURNING true")  # that replica is gone
            # out of the configuration, its own position is kept as a time position (its mode then `poll`)
            await wait_for(lambda: pg_value(pg_url, "SELECT mode = 'poll' FROM replicator.objects"
                                                    " WHERE object = 'Contact'"), timeout=30)
            ready = await endpoint_get(svc.endpoints.port, "/readyz")
            assert ready is not None and ready.status_code == 200 and "Contact" not in ready.json()["objects"], \
                ready and ready.text
            await sim_admin(sim, "PUT", "/__sim/cdc", {"objects": [o for o in selected if o != "Contact"]})
            await _update(sim, "Contact", changed, "while deselected")
            await sim_admin(sim, "PUT", "/__sim/cdc", {"objects": selected})
    finally:
        await sim_admin(sim, "PUT", "/__sim/cdc", {"objects": selected})
    async with running_service(both, until=streaming(pg_url, "Contact", mode="cdc")):
        await _marker(sim, pg_url, schema, "Contact", marker, "back after deselection")
        assert await _arrived(pg_url, schema, "Contact", changed, "while deselected") == len(changed)
        assert await all_equal(both)


async def test_the_handoff_is_tried_again_when_the_org_cannot_answer_and_the_service_goes_on(sim, pg_url):
    """The handoff asks Salesforce for its held-back time (getDeleted, else getUpdated); both refusing the window
    (EXCEEDED_ID_LIMIT: the simulator's limit lowered to 0) is a transient error. It is tried again with backoff, as
    a unit's failure is, and never stops the service (an error escaping it ended the whole service's task group)."""
    from replicator.sim.limits import REPLICATION_ID_LIMIT

    schema = "readdretry"
    both = _settings(sim, pg_url, schema, {"Account": {}, "Contact": {}})
    without = _settings(sim, pg_url, schema, {"Account": {}})
    async with running_service(both, until=streaming(pg_url, "Account", "Contact", mode="cdc")):
        pass
    updated, deleted = await _live_ids(sim, "Contact", 30, 2)
    await sim_admin(sim, "POST", "/__sim/changes", [
        {"object": "Contact", "type": "UPDATE", "ids": [updated], "fields": {"Phone": "in the window"}},
        {"object": "Contact", "type": "DELETE", "ids": [deleted]}])
    await sim_admin(sim, "PUT", "/__sim/limits", {"replication_id_limit": 0})
    try:
        async with running_service(without, until=streaming(pg_url, "Account", mode="cdc")) as svc:
            await wait_for(lambda: _async(_failures(svc) >= 1), timeout=30)
            await sim_admin(sim, "PUT", "/__sim/limits", {"replication_id_limit": REPLICATION_ID_LIMIT})
            await wait_for(lambda: pg_value(pg_url, "SELECT mode = 'poll' FROM replicator.objects"
                                                    " WHERE object = 'Contact'"), timeout=90)
            assert not svc.stop.is_set()
            await _marker(sim, pg_url, schema, "Account", (await _live_ids(sim, "Account", 30, 1))[0], "goes on")
    finally:
        await sim_admin(sim, "PUT", "/__sim/limits", {"replication_id_limit": REPLICATION_ID_LIMIT})


def _failures(svc) -> float:
    return sum(s.value for m in svc.metrics.registry.collect() if m.name == "replicator_errors"
               for s in m.samples if s.name == "replicator_errors_total" and s.labels.get("object") == "unconfigured")
