"""Mode switches without a hole and without a new extract (app/handoffs.py; issue 12 §1, §4): an entity removed from
and added back to the Change Data Capture selection while traffic flows; the event delivery allocation used up
(Subscribe ends with subscription.limit.exceeded) and restored; the API budget pausing poll rounds while streams
go on. Each ends with `verify` equal."""

from __future__ import annotations

import pytest
from prometheus_client import generate_latest

from replicator.sim.server import SimulatorThread

from .helpers import (
    all_equal,
    give_back,
    pg_value,
    running_service,
    settings_for,
    sim_admin,
    streaming,
    wait_for,
)

pytestmark = pytest.mark.slow  # the service under traffic


@pytest.fixture(scope="module")
def sim():
    with SimulatorThread(records=200, seed=21, keepalive_seconds=0.2) as thread:
        yield thread.info


def _settings(sim, pg_url, schema, objects, **stream):
    return settings_for(sim, pg_url, schema,
                        salesforce={"pubsub_endpoint": sim["pubsub_endpoint"], "limits_interval_s": 0.3},
                        stream={"batch_max_wait_s": 0.05, "topic_check_s": 0.3, "position_timeout_s": 10, **stream},
                        service={"control_poll_s": 0.2}, poll={"page_size": 100, "lookback_s": 2},
                        objects=objects)




async def _traffic(sim, **settings) -> None:
    r = await sim_admin(sim, "PUT", "/__sim/traffic", settings)
    assert r.status_code == 200, r.text


def _running(sim, settings, until, **restore):
    """`running_service`; on the way out, whatever happened, before the service stops: the traffic paused, the
    simulator's settings named in `restore` (admin path → body: cdc, limits) given back."""
    return running_service(settings, until=until, before_stop=give_back(sim, traffic={"running": False}, **restore))


async def test_an_entity_deselected_and_selected_again_under_traffic_switches_without_a_hole(sim, pg_url):
    settings = _settings(sim, pg_url, "switch", {"Account": {"poll_interval_s": 0.3}})
    selection = (await sim_admin(sim, "GET", "/__sim/cdc")).json()["objects"]
    job = "SELECT job_id FROM replicator.objects WHERE object = 'Account'"
    async with _running(sim, settings, streaming(pg_url, "Account", mode="cdc"), cdc={"objects": selection}) as svc:
        first_job = await pg_value(pg_url, job)
        await _traffic(sim, running=True, rate=40, objects=["Account"], purge_rate=0.2, changes=None)
        await wait_for(lambda: pg_value(pg_url, "SELECT events_applied > 20 FROM replicator.checkpoints"
                                                " WHERE topic = '/data/AccountChangeEvent'"), timeout=60)
        await sim_admin(sim, "PUT", "/__sim/cdc", {"objects": [o for o in selection if o != "Account"]})
        await wait_for(streaming(pg_url, "Account", mode="poll"), timeout=60)
        polled = await pg_value(pg_url, "SELECT events_applied FROM replicator.checkpoints WHERE topic = 'poll:Account'")
        await wait_for(lambda: pg_value(pg_url, "SELECT events_applied > "
                                                f"{polled or 0} + 20 FROM replicator.checkpoints"
                                                " WHERE topic = 'poll:Account'"), timeout=60)
        await sim_admin(sim, "PUT", "/__sim/cdc", {"objects": selection})
        await wait_for(streaming(pg_url, "Account", mode="cdc"), timeout=60)
        streamed = await pg_value(pg_url, "SELECT events_applied FROM replicator.checkpoints"
                                          " WHERE topic = '/data/AccountChangeEvent'")
        await wait_for(lambda: pg_value(pg_url, f"SELECT events_applied > {streamed} + 20 FROM replicator.checkpoints"
                                                " WHERE topic = '/data/AccountChangeEvent'"), timeout=60)
        await _traffic(sim, running=False)
        await wait_for(lambda: all_equal(settings, refresh=True), timeout=90, interval=0.5)
        assert await pg_value(pg_url, job) == first_job  # no new extract either way
        assert await pg_value(pg_url, "SELECT resyncs FROM replicator.objects WHERE object = 'Account'") == 0
        metrics = generate_latest(svc.metrics.registry).decode()
        assert 'replicator_mode_switches_total{cause="topic",mode="poll",object="Account"} 1.0' in metrics
        assert 'replicator_mode_switches_total{cause="topic",mode="cdc",object="Account"} 1.0' in metrics


async def test_the_event_allocation_used_up_polls_loudly_then_streams_again(sim, pg_url):
    settings = _settings(sim, pg_url, "alloc", {"Contact": {"poll_interval_s": 0.3}})
    async with _running(sim, settings, streaming(pg_url, "Contact", mode="cdc"),
                        limits={"event_allocation": 10_000_000, "reset": True}) as svc:
        used = (await sim_admin(sim, "GET", "/__sim/limits")).json()["events_delivered"]
        await sim_admin(sim, "PUT", "/__sim/limits", {"event_allocation": used + 5})
        await _traffic(sim, running=True, rate=40, objects=["Contact"], changes=None)
        await wait_for(streaming(pg_url, "Contact", mode="poll"), timeout=60)
        reason = await pg_value(pg_url, "SELECT mode_reason FROM replicator.objects WHERE object = 'Contact'")
        assert "event delivery allocation" in reason
        metrics = generate_latest(svc.metrics.registry).decode()
        assert "replicator_event_allocation_exhausted 1.0" in metrics
        assert 'replicator_mode_switches_total{cause="allocation",mode="poll",object="Contact"} 1.0' in metrics
        assert 'replicator_salesforce_limit_used{limit="DailyDeliveredPlatformEvents"}' in metrics
        polled = await pg_value(pg_url, "SELECT events_applied FROM replicator.checkpoints WHERE topic = 'poll:Contact'")
        await wait_for(lambda: pg_value(pg_url, f"SELECT events_applied > {polled or 0} + 20"
                                                " FROM replicator.checkpoints WHERE topic = 'poll:Contact'"), timeout=60)
        await sim_admin(sim, "PUT", "/__sim/limits", {"event_allocation": 10_000_000, "reset": True})
        await wait_for(streaming(pg_url, "Contact", mode="cdc"), timeout=60)
        await _traffic(sim, running=False)
        await wait_for(lambda: all_equal(settings, refresh=True), timeout=90, interval=0.5)
        metrics = generate_latest(svc.metrics.registry).decode()
        assert "replicator_event_allocation_exhausted 0.0" in metrics
        assert 'replicator_mode_switches_total{cause="allocation",mode="cdc",object="Contact"} 1.0' in metrics
        assert await pg_value(pg_url, "SELECT resyncs FROM replicator.objects WHERE object = 'Contact'") == 0


@pytest.mark.parametrize("room", [5, 0], ids=["after_events", "before_any_event"])
async def test_a_channel_whose_event_allocation_is_used_up_polls_its_objects_then_streams_them_again(sim, pg_url, room):
    """One channel for both objects: Subscribe ends with the limit error; each member polls from the channel's
    checkpoint (no extract), loudly, then streams on its own topic once /limits shows room; verify equal. With no
    room at all the channel has applied no event yet (no floor): the switch is still the allocation's, counted and
    logged as such."""
    settings = _settings(sim, pg_url, f"challoc{room}", {"Account": {"poll_interval_s": 0.3},
                                                  "Contact": {"poll_interval_s": 0.3}}, channel="/data/ChangeEvents")
    names = ("Account", "Contact")
    async with _running(sim, settings, streaming(pg_url, *names, mode="cdc"),
                        limits={"event_allocation": 10_000_000, "reset": True}) as svc:
        await wait_for(lambda: pg_value(pg_url, "SELECT count(*) = 1 FROM replicator.checkpoints"
                                                " WHERE topic = '/data/ChangeEvents'"), timeout=60)
        used = (await sim_admin(sim, "GET", "/__sim/limits")).json()["events_delivered"]
        await sim_admin(sim, "PUT", "/__sim/limits", {"event_allocation": used + room})
        await _traffic(sim, running=True, rate=40, objects=list(names), changes=None)
        for name in names:
            await wait_for(streaming(pg_url, name, mode="poll"), timeout=60)
            reason = await pg_value(pg_url, f"SELECT mode_reason FROM replicator.objects WHERE object = '{name}'")
            assert "event delivery allocation" in reason
        metrics = generate_latest(svc.metrics.registry).decode()
        assert "replicator_event_allocation_exhausted 1.0" in metrics
        for name in names:
            assert f'replicator_mode_switches_total{{cause="allocation",mode="poll",object="{name}"}} 1.0' in metrics
            await wait_for(lambda n=name: pg_value(pg_url, "SELECT events_applied > 10 FROM replicator.checkpoints"
                                                           f" WHERE topic = 'poll:{n}'"), timeout=60)
        await sim_admin(sim, "PUT", "/__sim/limits", {"event_allocation": 10_000_000, "reset": True})
        for name in names:  # back to the stream, each on its own topic
            await wait_for(streaming(pg_url, name, mode="cdc"), timeout=60)
            await wait_for(lambda n=name: pg_value(pg_url, "SELECT count(*) = 1 FROM replicator.checkpoints"
                                                           f" WHERE topic = '/data/{n}ChangeEvent'"), timeout=60)
        await _traffic(sim, running=False)
        await wait_for(lambda: all_equal(settings, refresh=True), timeout=90, interval=0.5)
        assert await pg_value(pg_url, "SELECT sum(resyncs) FROM replicator.objects") == 0


async def test_a_channel_member_deselected_from_cdc_polls_then_streams_on_its_own_topic(sim, pg_url):
    """Its events stop coming on the channel: without a switch the copy would go stale silently. It polls from the
    channel's checkpoint under traffic, streams on its own topic once selected again; verify equal, no extract."""
    settings = _settings(sim, pg_url, "chtopic", {"Account": {}, "Contact": {"poll_interval_s": 0.3}},
                         channel="/data/ChangeEvents")
    selected = (await sim_admin(sim, "GET", "/__sim/cdc")).json()["objects"]
    async with _running(sim, settings, streaming(pg_url, "Account", "Contact", mode="cdc"),
                        cdc={"objects": selected}) as svc:
        await _traffic(sim, running=True, rate=40, objects=["Account", "Contact"], changes=None)
        await sim_admin(sim, "PUT", "/__sim/cdc", {"objects": [n for n in selected if n != "Contact"]})
        await wait_for(streaming(pg_url, "Contact", mode="poll"), timeout=60)
        reason = await pg_value(pg_url, "SELECT mode_reason FROM replicator.objects WHERE object = 'Contact'")
        assert "no change-event topic" in reason
        assert 'replicator_mode_switches_total{cause="topic",mode="poll",object="Contact"} 1.0' in \
            generate_latest(svc.metrics.registry).decode()
        await wait_for(lambda: pg_value(pg_url, "SELECT events_applied > 10 FROM replicator.checkpoints"
                                                " WHERE topic = 'poll:Contact'"), timeout=60)
        await sim_admin(sim, "PUT", "/__sim/cdc", {"objects": selected})
        await wait_for(streaming(pg_url, "Contact", mode="cdc"), timeout=60)
        await wait_for(lambda: pg_value(pg_url, "SELECT count(*) = 1 FROM replicator.checkpoints"
                                                " WHERE topic = '/data/ContactChangeEvent'"), timeout=60)
        assert await pg_value(pg_url, "SELECT mode FROM replicator.objects WHERE object = 'Account'") == "cdc"
        # Account stayed on the channel: its batches' stages are timed there too (the commit shared by rows)
        assert all(svc.metrics.stage_seconds.labels(object="Account", stage=stage)._value.get() > 0
                   for stage in ("fold", "reconcile", "commit"))
        await _traffic(sim, running=False)
        await wait_for(lambda: all_equal(settings, refresh=True), timeout=90, interval=0.5)
        assert await pg_value(pg_url, "SELECT sum(resyncs) FROM replicator.objects") == 0


async def test_poll_rounds_wait_while_the_api_budget_is_spent_and_streams_go_on(sim, pg_url):
    settings = _settings(sim, pg_url, "budget", {"Account": {}, "Task": {"poll_interval_s": 0.2}})
    async with _running(sim, settings, "streaming", limits={"api_allocation": 5_000_000}) as svc:
        await wait_for(streaming(pg_url, "Task", mode="poll"), timeout=60)
        await wait_for(streaming(pg_url, "Account", mode="cdc"), timeout=60)
        used = (await sim_admin(sim, "GET", "/__sim/limits")).json()["api_used"]
        await sim_admin(sim, "PUT", "/__sim/limits", {"api_allocation": int(used / 0.85)})  # ~15% left < 20%
        await wait_for(lambda: _async(svc.limits.api_paused), timeout=30)
        queries = svc.metrics.client.calls_by_kind.get("queryAll", 0)
        ids = (await sim_admin(sim, "POST", "/__sim/changes", [
            {"object": "Task", "type": "CREATE", "fields": {"Subject": "while paused"}},
            {"object": "Account", "type": "CREATE", "fields": {"Name": "streamed while paused"}}])).json()
        await wait_for(lambda: pg_value(pg_url, "SELECT count(*) = 1 FROM budget.account"
                                                " WHERE name = 'streamed while paused'"), timeout=30)
        rounds = svc.metrics.object("Task").caught_up_at
        await wait_for(lambda: _async(svc.metrics.object("Account").idle), timeout=10)
        assert svc.metrics.client.calls_by_kind.get("queryAll", 0) == queries  # no poll round started
        assert svc.metrics.object("Task").caught_up_at == rounds
        assert await pg_value(pg_url, "SELECT count(*) FROM budget.task WHERE subject = 'while paused'") == 0
        assert "replicator_api_budget_paused 1.0" in generate_latest(svc.metrics.registry).decode()
        await sim_admin(sim, "PUT", "/__sim/limits", {"api_allocation": 5_000_000})
        await wait_for(lambda: pg_value(pg_url, "SELECT count(*) = 1 FROM budget.task WHERE subject = 'while paused'"),
                       timeout=30)
        assert not svc.limits.api_paused and ids


async def _async(value):
    return value


async def test_a_polled_object_selected_while_the_service_was_down_streams_after_a_restart(sim, pg_url):
    settings = _settings(sim, pg_url, "restart", {"Opportunity": {"poll_interval_s": 0.3}})
    selection = (await sim_admin(sim, "GET", "/__sim/cdc")).json()["objects"]
    job = "SELECT job_id FROM replicator.objects WHERE object = 'Opportunity'"
    await sim_admin(sim, "PUT", "/__sim/cdc", {"objects": [o for o in selection if o != "Opportunity"]})
    try:
        async with _running(sim, settings, streaming(pg_url, "Opportunity", mode="poll")):
            pass
        first_job = await pg_value(pg_url, job)
        ids = (await sim_admin(sim, "POST", "/__sim/changes", [
            {"object": "Opportunity", "type": "CREATE", "fields": {"Name": "while down"}, "count": 5}])).json()
        await sim_admin(sim, "PUT", "/__sim/cdc", {"objects": selection})
        async with _running(sim, settings, streaming(pg_url, "Opportunity", mode="cdc")):
            await sim_admin(sim, "POST", "/__sim/changes", [
                {"object": "Opportunity", "type": "CREATE", "fields": {"Name": "streamed"}, "count": 5}])
            await wait_for(lambda: pg_value(pg_url, "SELECT count(*) = 5 FROM restart.opportunity"
                                                    " WHERE name = 'streamed'"), timeout=30)
            await wait_for(lambda: all_equal(settings, refresh=True), timeout=60, interval=0.5)
            assert await pg_value(pg_url, "SELECT count(*) FROM restart.opportunity WHERE name = 'while down'") == 5
            assert await pg_value(pg_url, job) == first_job and ids
    finally:
        await sim_admin(sim, "PUT", "/__sim/cdc", {"objects": selection})
