"""Handoffs of an object's lifecycle that must leave no hole (issue 18 §1, defects 2, 3, 4, 8, 9; docs/design.md
contract 5): an object removed from the configuration and added back beside a channel; a mode changed across a
restart beside a channel; a channel member deselected from Change Data Capture; a configuration error meeting a
channel member at run time; several `mode = "cdc"` objects after the event allocation recovers.

Each test makes a few named changes in the org at the handoff and asserts they end in the copy (then `verify`
equal). The service runs in this process (app/service.py `Service`), against the simulator and a real Postgres.
"""

from __future__ import annotations

import asyncio
import contextlib
import time

import httpx
import pytest

from replicator.app.service import Service
from replicator.model import ConfigError
from replicator.salesforce.pubsub import PubSubClient
from replicator.sim.server import SimulatorThread

from .helpers import (
    all_equal,
    give_back,
    ground_truth,
    pg_value,
    running_service,
    settings_for,
    sim_admin,
    streaming,
    streaming_in,
    wait_for,
)

pytestmark = pytest.mark.slow  # the service, restarted

CHANNEL = "/data/ChangeEvents"
NOT_CHANNEL = ""


@pytest.fixture(scope="module")
def sim():
    with SimulatorThread(records=60, seed=18, keepalive_seconds=0.2) as thread:
        yield thread.info


def _settings(sim, pg_url, schema, objects, channel: str = NOT_CHANNEL, lookback_s: float = 1):
    return settings_for(sim, pg_url, schema,
                        salesforce={"pubsub_endpoint": sim["pubsub_endpoint"], "limits_interval_s": 0.3},
                        stream={"batch_max_wait_s": 0.05, "topic_check_s": 0.3, "position_timeout_s": 10,
                                "channel": channel},
                        service={"control_poll_s": 0.2}, poll={"page_size": 100, "lookback_s": lookback_s},
                        objects=objects)


async def _live_ids(sim, name: str, start: int, count: int) -> list[str]:
    live = [r["Id"] for r in await ground_truth(sim, name) if not r["IsDeleted"]]
    assert len(live) >= start + count
    return live[start:start + count]


async def _update(sim, name: str, ids: list[str], phone: str) -> int:
    """One transaction updating `ids`' Phone; its commit time (epoch ms)."""
    r = await sim_admin(sim, "POST", "/__sim/changes",
                        [{"object": name, "type": "UPDATE", "ids": ids, "fields": {"Phone": phone}}])
    assert r.status_code == 200, r.text
    return r.json()["commit_timestamp"]


async def _arrived(pg_url, schema: str, name: str, ids: list[str], phone: str) -> int:
    """How many of `ids` have that Phone in the copy."""
    listed = ", ".join(f"'{i}'" for i in ids)
    return await pg_value(pg_url, f"SELECT count(*) FROM {schema}.{name.lower()}"
                                  f" WHERE id IN ({listed}) AND phone = '{phone}'")


async def _marker(sim, pg_url, schema: str, name: str, record: str, phone: str) -> None:
    """A change made now, waited for in the copy: whatever the object runs on has read past every earlier change."""
    await _update(sim, name, [record], phone)
    await wait_for(lambda: _arrived(pg_url, schema, name, [record], phone), timeout=30)


async def _after(ms: int) -> None:
    """Wait until the org's clock (this host's: the simulator runs here) has passed `ms`."""
    async def passed():
        return time.time() * 1000 >= ms
    await wait_for(passed, timeout=10)


async def _channel_commit_ms(pg_url) -> int | None:
    return await pg_value(pg_url, "SELECT (extract(epoch FROM commit_timestamp) * 1000)::bigint"
                                  f" FROM replicator.checkpoints WHERE topic = '{CHANNEL}'")


# -- defect 2: removed from the configuration, then added back -------------------------------------------------

@pytest.mark.parametrize("channel", [CHANNEL, NOT_CHANNEL], ids=["channel", "own_subscriptions"])
async def test_an_object_removed_from_the_configuration_and_added_back_keeps_the_changes_made_meanwhile(
        sim, pg_url, channel):
    """Contact out of the configuration for one run, 4 of its records changed meanwhile (their events are skipped
    by a channel, which moves past them), then Contact back: the 4 changes must be in the copy. Without a channel
    (the control) its own topic's checkpoint replays them."""
    schema = "readd"
    both = _settings(sim, pg_url, schema, {"Account": {}, "Contact": {}}, channel)
    without = _settings(sim, pg_url, schema, {"Account": {}}, channel)
    changed, marker = await _live_ids(sim, "Contact", 0, 4), (await _live_ids(sim, "Contact", 4, 1))[0]
    account = (await _live_ids(sim, "Account", 0, 1))[0]
    async with running_service(both, until=streaming(pg_url, "Account", "Contact", mode="cdc")):
        pass
    async with running_service(without, until=streaming(pg_url, "Account", mode="cdc")):
        await _update(sim, "Contact", changed, f"out {channel}")
        await _marker(sim, pg_url, schema, "Account", account, f"out {channel}")  # the stream read past them
    async with running_service(both, until=streaming(pg_url, "Contact", mode="cdc")):
        await _marker(sim, pg_url, schema, "Contact", marker, f"back {channel}")
        assert await _arrived(pg_url, schema, "Contact", changed, f"out {channel}") == len(changed)
        assert await all_equal(both)


# -- defect 3: a mode changed across a restart, beside a channel -------------------------------------------------

async def test_a_polled_object_configured_auto_after_a_restart_joins_the_stream_without_a_hole(sim, pg_url):
    """Account polled (mode = "poll") beside a channel member; 4 Accounts changed after its last poll round (the
    channel skips their events and moves past them), 4 more while the service is down; restarted with
    mode = "auto", Account streams: all 8 changes must be in the copy (the poll → cdc handoff: capture, one more
    poll round, then the stream)."""
    schema = "polltoauto"
    polled = _settings(sim, pg_url, schema, {"Account": {"mode": "poll", "poll_interval_s": 3600}, "Contact": {}},
                       CHANNEL)
    auto = _settings(sim, pg_url, schema, {"Account": {}, "Contact": {}}, CHANNEL)
    while_polled, while_down = await _live_ids(sim, "Account", 10, 4), await _live_ids(sim, "Account", 14, 4)
    marker, contact = (await _live_ids(sim, "Account", 18, 1))[0], (await _live_ids(sim, "Contact", 10, 1))[0]
    async with running_service(polled) as svc:
        await wait_for(streaming(pg_url, "Contact", mode="cdc"), timeout=60)
        await wait_for(streaming(pg_url, "Account", mode="poll"), timeout=60)

        async def polled_once():
            return svc.metrics.object("Account").caught_up_at is not None
        await wait_for(polled_once, timeout=30)  # its first round is done; the next is an hour away
        await _update(sim, "Account", while_polled, "while polled")
        await _marker(sim, pg_url, schema, "Contact", contact, "polled")  # the channel is past Account's events
    await _update(sim, "Account", while_down, "while down")
    async with running_service(auto, until=streaming(pg_url, "Account", mode="cdc")):
        await _marker(sim, pg_url, schema, "Account", marker, "streamed")
        assert await _arrived(pg_url, schema, "Account", while_down, "while down") == len(while_down)
        assert await _arrived(pg_url, schema, "Account", while_polled, "while polled") == len(while_polled)
        assert await all_equal(auto)


async def test_a_channel_member_configured_poll_after_a_restart_polls_without_a_new_extract(sim, pg_url):
    """Account streamed on the channel, 4 Accounts changed while the service is down, restarted with
    mode = "poll": it must poll from where the channel left it (the cdc → poll handoff), not extract again."""
    schema = "autotopoll"
    auto = _settings(sim, pg_url, schema, {"Account": {}, "Contact": {}}, CHANNEL)
    polled = _settings(sim, pg_url, schema, {"Account": {"mode": "poll", "poll_interval_s": 0.3}, "Contact": {}},
                       CHANNEL)
    while_down = await _live_ids(sim, "Account", 20, 4)
    job = "SELECT job_id FROM replicator.objects WHERE object = 'Account'"
    async with running_service(auto, until=streaming(pg_url, "Account", "Contact", mode="cdc")):
        pass
    first_job = await pg_value(pg_url, job)
    await _update(sim, "Account", while_down, "down, then polled")
    async with running_service(polled, until=streaming(pg_url, "Account", mode="poll")):
        await wait_for(lambda: _arrived(pg_url, schema, "Account", while_down, "down, then polled"), timeout=30)
        resyncs = await pg_value(pg_url, "SELECT resyncs FROM replicator.objects WHERE object = 'Account'")
        reason = await pg_value(pg_url, "SELECT last_resync_reason FROM replicator.objects WHERE object = 'Account'")
        assert (resyncs, reason) == (0, None)
        assert await pg_value(pg_url, job) == first_job  # no new Bulk extract
        assert await _arrived(pg_url, schema, "Account", while_down, "down, then polled") == len(while_down)
        assert await all_equal(polled)


# -- defect 4: a channel member deselected from Change Data Capture ------------------------------------------------

class _TopicGate:
    """Holds the service's GetTopic calls for one topic while armed, until released: the service has not looked
    the topic up again yet (it does every `stream.topic_check_s`), so the test decides what happens in the org
    between a deselection and the moment the service notices it."""

    def __init__(self) -> None:
        self.topic: str | None = None
        self.held = asyncio.Event()  # a call is waiting at the gate
        self.release = asyncio.Event()

    def arm(self, topic: str) -> None:
        self.topic = topic


@pytest.fixture
def topic_gate(monkeypatch):
    gate = _TopicGate()
    original = PubSubClient.get_topic

    async def get_topic(client, topic):
        if topic == gate.topic and not gate.release.is_set():
            gate.held.set()
            await gate.release.wait()
        return await original(client, topic)

    monkeypatch.setattr(PubSubClient, "get_topic", get_topic)
    yield gate
    gate.release.set()


@pytest.mark.parametrize("moved_by", ["other_objects_events", "keepalives"])
async def test_changes_between_a_deselection_and_the_switch_to_polling_are_read(sim, pg_url, topic_gate, moved_by):
    """Contact (auto) and Account (cdc) on one channel. Contact is deselected from Change Data Capture, 3 Contacts
    change (no events now), and before the service looks Contact's topic up again the channel's checkpoint moves
    on: by an Account event committed 3 s later (`other_objects_events`), or, with no event at all on the channel,
    by keepalives saved 3 s later (`keepalives`). Contact then polls: the 3 changes must be read (lookback 1 s)."""
    schema = f"desel_{moved_by}"
    settings = _settings(sim, pg_url, schema, {"Account": {"mode": "cdc"}, "Contact": {"poll_interval_s": 0.3}},
                         CHANNEL, lookback_s=1)
    selected = (await sim_admin(sim, "GET", "/__sim/cdc")).json()["objects"]
    changed, marker = await _live_ids(sim, "Contact", 20, 3), (await _live_ids(sim, "Contact", 23, 1))[0]
    account = (await _live_ids(sim, "Account", 30, 1))[0]
    async with running_service(settings, until=streaming(pg_url, "Account", "Contact", mode="cdc"),
                               before_stop=give_back(sim, cdc={"objects": selected})) as svc:
        await wait_for(lambda: pg_value(pg_url, "SELECT count(*) = 1 FROM replicator.checkpoints"
                                                f" WHERE topic = '{CHANNEL}'"), timeout=30)
        # the channel streams (its members' schemas warmed, a GetTopic each): only then may the gate hold the next
        # look-up, the topic check's; the stored way is stored before the channel's first extracts (fc2b646)
        await wait_for(streaming_in(svc, "Account", "Contact"), timeout=60)
        try:
            topic_gate.arm("/data/ContactChangeEvent")
            await wait_for(lambda: _is_set(topic_gate.held), timeout=30)  # the next look-up waits at the gate
            await sim_admin(sim, "PUT", "/__sim/cdc", {"objects": [o for o in selected if o != "Contact"]})
            stamp = await _update(sim, "Contact", changed, f"deselected {moved_by}")
            later = stamp + MOVED_MS
            await _after(later)
            if moved_by == "other_objects_events":
                await _marker(sim, pg_url, schema, "Account", account, "moves the channel")
                assert await _channel_commit_ms(pg_url) >= later
            else:
                assert await _channel_commit_ms(pg_url) is None  # no event on the channel since its capture
                await wait_for(lambda: pg_value(pg_url, "SELECT updated_at >= to_timestamp("
                                                        f"{later / 1000}) FROM replicator.checkpoints"
                                                        f" WHERE topic = '{CHANNEL}'"), timeout=10)
        finally:
            topic_gate.release.set()
        await wait_for(streaming(pg_url, "Contact", mode="poll"), timeout=30)
        await _marker(sim, pg_url, schema, "Contact", marker, f"polled {moved_by}")
        assert await _arrived(pg_url, schema, "Contact", changed, f"deselected {moved_by}") == len(changed)
        assert await all_equal(settings)


# How much later than the changes the channel's checkpoint is moved: past the poll lookback (1 s) even where it is
# taken twice (the poll position, then a round's start at the getDeleted window less the lookback), to a later
# whole second.
MOVED_MS = 3000


async def _is_set(event: asyncio.Event) -> bool:
    return event.is_set()


# -- defect 8: a configuration error meets a channel member at run time ------------------------------------------

async def _exhaust_events(sim, pg_url, names: list[str]) -> None:
    """Use up the event delivery allocation: each object gets an event it cannot be sent, its stream ends with
    subscription.limit.exceeded, and it polls."""
    used = (await sim_admin(sim, "GET", "/__sim/limits")).json()["events_delivered"]
    await sim_admin(sim, "PUT", "/__sim/limits", {"event_allocation": used})
    for k, name in enumerate(names):
        await _update(sim, name, await _live_ids(sim, name, 40 + k, 1), "exhausting")
    await wait_for(streaming(pg_url, *names, mode="poll"), timeout=60)


@pytest.mark.parametrize("channel", [NOT_CHANNEL, CHANNEL], ids=["own_subscription", "channel"])
async def test_a_cdc_object_whose_topic_went_away_stops_the_service_with_a_configuration_error(sim, pg_url, channel):
    """Contact in mode = "cdc" polls while the event allocation is used up; meanwhile it is deselected from Change
    Data Capture. When the allocation recovers it cannot stream (no topic): a configuration error no retry fixes,
    which stops Contact (FAILED); the only object, so the service ends with the error (exit code 2 from `replicator
    run`; beside other objects it goes on with them: tests/integration/test_permanent_errors.py). On a channel it
    must do the same, not lose the object silently (no log line, /readyz 200, no more rounds)."""
    settings = _settings(sim, pg_url, "cfgerr", {"Contact": {"mode": "cdc", "poll_interval_s": 0.3}}, channel)
    selected = (await sim_admin(sim, "GET", "/__sim/cdc")).json()["objects"]
    svc = Service(settings)
    task = asyncio.create_task(svc.run())
    try:
        await wait_for(streaming(pg_url, "Contact", mode="cdc"), timeout=120)
        await _exhaust_events(sim, pg_url, ["Contact"])
        await sim_admin(sim, "PUT", "/__sim/cdc", {"objects": [o for o in selected if o != "Contact"]})
        await sim_admin(sim, "PUT", "/__sim/limits", {"event_allocation": 10_000_000, "reset": True})
        done, _ = await asyncio.wait({task}, timeout=10)  # without a channel: within a second
        if not done:
            async with httpx.AsyncClient() as http:
                ready = (await http.get(f"http://127.0.0.1:{svc.endpoints.port}/readyz")).status_code
            error = await pg_value(pg_url, "SELECT last_error FROM replicator.objects WHERE object = 'Contact'")
            idle = await pg_value(pg_url, "SELECT round(extract(epoch FROM now() - updated_at)) FROM"
                                          " replicator.checkpoints WHERE topic = 'poll:Contact'")
            pytest.fail(f"the service still runs 10 s after the allocation came back: /readyz {ready},"
                        f" Contact's last_error {error!r}, its last poll round {idle} s ago")
        with pytest.raises(ConfigError, match=r"objects\.Contact: .*no change-event topic"):
            task.result()
    finally:
        await sim_admin(sim, "PUT", "/__sim/cdc", {"objects": selected})
        await sim_admin(sim, "PUT", "/__sim/limits", {"event_allocation": 10_000_000, "reset": True})
        if not task.done():
            svc.stop.set()
            await asyncio.wait_for(task, 60)


# -- defect 9: several cdc objects after the event allocation recovers --------------------------------------------

async def test_every_cdc_object_streams_again_once_the_event_allocation_recovers(sim, pg_url):
    """Account and Contact (mode = "cdc", subscriptions of their own) poll while the allocation is used up; once
    /limits shows room, both must stream again, and a change made after that arrives by each one's stream."""
    names = ["Account", "Contact"]
    settings = _settings(sim, pg_url, "recover", {n: {"mode": "cdc", "poll_interval_s": 0.3} for n in names})
    async with running_service(settings, until=streaming(pg_url, *names, mode="cdc"),
                               before_stop=give_back(sim, limits={"event_allocation": 10_000_000, "reset": True})):
        await _exhaust_events(sim, pg_url, names)
        await sim_admin(sim, "PUT", "/__sim/limits", {"event_allocation": 10_000_000, "reset": True})

        async def modes():
            return {n: await pg_value(pg_url, f"SELECT mode FROM replicator.objects WHERE object = '{n}'")
                    for n in names}

        async def one_back():
            return "cdc" in (await modes()).values()
        await wait_for(one_back, timeout=30)
        with contextlib.suppress(TimeoutError):  # the others follow within a few /limits reads
            await wait_for(lambda: _all_cdc(modes), timeout=8)
        assert await modes() == {n: "cdc" for n in names}, "still polling 8 s after the first streamed again"
        for name in names:
            await wait_for(streaming(pg_url, name, mode="cdc"), timeout=30)
            topic = f"/data/{name}ChangeEvent"
            before = await pg_value(pg_url, f"SELECT events_applied FROM replicator.checkpoints WHERE topic = '{topic}'")
            await _marker(sim, pg_url, "recover", name, (await _live_ids(sim, name, 50, 1))[0], "after recovery")
            await wait_for(lambda t=topic, b=before: pg_value(pg_url, f"SELECT events_applied > {b}"
                                                                      f" FROM replicator.checkpoints WHERE topic = '{t}'"),
                           timeout=10)
        assert await all_equal(settings)


async def _all_cdc(modes) -> bool:
    return set((await modes()).values()) == {"cdc"}


# -- bench transitions S2: a mode = "cdc" object started while the event allocation is used up -------------------

async def test_a_cdc_object_started_while_the_event_allocation_is_used_up_streams_once_it_recovers(sim, pg_url):
    """Account and Contact (auto) poll for want of event allocation; the service restarts with Contact in
    mode = "cdc" while the allocation is still used up (a new process knows nothing of the exhaustion: its first
    Subscribes are refused). Both poll meanwhile, then stream again once /limits shows room (bench transitions S2:
    `alloc:off; mode:Contact:cdc; alloc:on`), a change made after that arriving by each one's stream. A guard: the
    bench's sequence left Contact polled on e2a7874 and streams on the lifecycle's units, but this test passes on
    e2a7874 too (what else the bench's restart did there, four objects and changes while down, is not in it)."""
    names = ["Account", "Contact"]
    auto = _settings(sim, pg_url, "cdcstart", {n: {"mode": "auto", "poll_interval_s": 0.3} for n in names})
    try:
        async with running_service(auto, until=streaming(pg_url, *names, mode="cdc")):
            await _exhaust_events(sim, pg_url, names)
        cdc = _settings(sim, pg_url, "cdcstart", {n: {"mode": "cdc" if n == "Contact" else "auto", "poll_interval_s": 0.3}
                                                  for n in names})
        async with running_service(cdc, until=None):
            records = {n: (await _live_ids(sim, n, 45, 1))[0] for n in names}
            for name in names:  # polled meanwhile
                await _marker(sim, pg_url, "cdcstart", name, records[name], "while used up")
                await wait_for(streaming(pg_url, name, mode="poll"), timeout=10)
            await sim_admin(sim, "PUT", "/__sim/limits", {"event_allocation": 10_000_000, "reset": True})
            for name in names:
                await wait_for(streaming(pg_url, name, mode="cdc"), timeout=30)
                topic = f"/data/{name}ChangeEvent"
                before = await pg_value(pg_url, "SELECT events_applied FROM replicator.checkpoints"
                                                f" WHERE topic = '{topic}'")
                await _marker(sim, pg_url, "cdcstart", name, records[name], "after recovery")
                await wait_for(lambda t=topic, b=before: pg_value(
                    pg_url, f"SELECT events_applied > {b} FROM replicator.checkpoints WHERE topic = '{t}'"), timeout=10)
            assert await all_equal(cdc)
    finally:
        await sim_admin(sim, "PUT", "/__sim/limits", {"event_allocation": 10_000_000, "reset": True})


# -- bench transitions seed 1017: a channel that starts while the event allocation is used up ---------------------

async def test_a_channel_started_while_the_event_allocation_is_used_up_polls_its_objects(sim, pg_url):
    """The channel's first start subscribes to capture its position, and the org refuses (the allocation is used
    up): its objects must poll on units of their own, not wait for the channel; changes made meanwhile arrive."""
    names = ["Account", "Contact"]
    settings = _settings(sim, pg_url, "chstart", {n: {"poll_interval_s": 0.3} for n in names}, channel=CHANNEL)
    used = (await sim_admin(sim, "GET", "/__sim/limits")).json()["events_delivered"]
    await sim_admin(sim, "PUT", "/__sim/limits", {"event_allocation": used})
    async with running_service(settings, until=streaming(pg_url, *names, mode="poll"),
                               before_stop=give_back(sim, limits={"event_allocation": 10_000_000, "reset": True})):
        ids = await _live_ids(sim, "Contact", 10, 3)
        await _update(sim, "Contact", ids, "while the channel cannot start")

        async def all_arrived() -> bool:
            return await _arrived(pg_url, "chstart", "Contact", ids, "while the channel cannot start") == len(ids)

        await wait_for(all_arrived, timeout=30)
        assert await all_equal(settings)


# -- bench transitions L7: a late commit in flight when the object leaves events ---------------------------------

LATE_S = 12  # how long the late transaction stays in flight: past a stop and a restart of the service


async def _late_change(sim, name: str, kind: str, ids: list[str], after_s: float, **fields) -> int:
    """A transaction of `kind` (UPDATE setting `fields`, DELETE) on `ids`, stamped now and committed `after_s`
    seconds later (a long transaction: its records' SystemModstamp is older than its commit); its SystemModstamp
    (epoch ms)."""
    change = {"object": name, "type": kind, "ids": ids, **({"fields": fields} if fields else {})}
    r = await sim_admin(sim, "POST", "/__sim/changes", {"changes": [change], "visible_after_seconds": after_s})
    assert r.status_code == 200, r.text
    return r.json()["system_modstamp"]


async def _committed(sim, name: str, ids: list[str], phone: str) -> bool:
    rows = {r["Id"]: r for r in await ground_truth(sim, name)}
    return all(rows[i].get("Phone") == phone for i in ids)


@pytest.mark.parametrize("leaves_by", ["restart_into_poll", "allocation_used_up"])
async def test_a_late_commit_whose_events_are_never_read_is_read_by_the_poll(sim, pg_url, leaves_by):
    """Account streams; a transaction stamped now updates 4 Accounts and commits 12 s later (bench transitions
    L7); meanwhile another Account change streams, so the stream's position passes the late records' stamp. The late
    commit's events are never read: the service is down when it commits and restarts with mode = "poll", or the
    event allocation is used up and its event is the one refused. Account polls then, from a position that must
    reach back over the longest transaction Salesforce lets run, since Salesforce's own hold-back has ended
    (lookback 0 here, so no steady-state margin hides it)."""
    schema = f"late_{leaves_by}"
    auto = _settings(sim, pg_url, schema, {"Account": {"poll_interval_s": 0.3}}, lookback_s=0)
    polled = _settings(sim, pg_url, schema, {"Account": {"mode": "poll", "poll_interval_s": 0.3}}, lookback_s=0)
    late, marker = await _live_ids(sim, "Account", 30, 4), (await _live_ids(sim, "Account", 34, 1))[0]
    phone = f"late {leaves_by}"
    async with running_service(auto, until=streaming(pg_url, "Account", mode="cdc"),
                               before_stop=give_back(sim, limits={"event_allocation": 10_000_000, "reset": True})):
        stamp = await _late_change(sim, "Account", "UPDATE", late, LATE_S, Phone=phone)
        await _after(stamp + 1000)  # the next change is stamped a later second
        await _marker(sim, pg_url, schema, "Account", marker, f"past the late stamp {leaves_by}")
        if leaves_by == "allocation_used_up":
            used = (await sim_admin(sim, "GET", "/__sim/limits")).json()["events_delivered"]
            await sim_admin(sim, "PUT", "/__sim/limits", {"event_allocation": used})  # the late event is refused
            assert not await _committed(sim, "Account", late, phone), "the late commit came before the switch"
            await wait_for(lambda: _committed(sim, "Account", late, phone), timeout=LATE_S + 10)
            await wait_for(streaming(pg_url, "Account", mode="poll"), timeout=30)
            await _marker(sim, pg_url, schema, "Account", marker, "polled past the late commit")
            assert await _arrived(pg_url, schema, "Account", late, phone) == len(late)
            assert await all_equal(auto)
    if leaves_by == "restart_into_poll":
        assert not await _committed(sim, "Account", late, phone), "the late commit came before the stop"
        await wait_for(lambda: _committed(sim, "Account", late, phone), timeout=LATE_S + 10)
        async with running_service(polled, until=streaming(pg_url, "Account", mode="poll")):
            await _marker(sim, pg_url, schema, "Account", marker, "polled past the late commit")
            assert await _arrived(pg_url, schema, "Account", late, phone) == len(late)
            assert await all_equal(polled)


# -- bench transitions seed 6010: a soft delete whose transaction commits in a later second than its stamp -------

async def test_a_late_delete_streamed_keeps_the_records_systemmodstamp(sim, pg_url):
    """2 Accounts deleted (to the Recycle Bin) in a transaction stamped now that commits 2 s later: a DELETE event
    carries no LastModifiedDate, so its commit time is not the record's SystemModstamp; the soft-deleted rows must
    hold the org's SystemModstamp (verify compares it), not the commit time."""
    schema = "latedelete"
    settings = _settings(sim, pg_url, schema, {"Account": {}})
    ids = await _live_ids(sim, "Account", 40, 2)
    async with running_service(settings, until=streaming(pg_url, "Account", mode="cdc")):
        await _late_change(sim, "Account", "DELETE", ids, 2)
        listed = ", ".join(f"'{i}'" for i in ids)
        await wait_for(lambda: pg_value(pg_url, f"SELECT count(*) = 2 FROM {schema}.account WHERE id IN ({listed})"
                                                " AND isdeleted"), timeout=30)
        assert await all_equal(settings)


# -- a channel's first start stopped before its members stream ---------------------------------------------------

async def test_a_channels_first_start_stopped_during_its_extracts_keeps_its_members_on_the_channel(sim, pg_url):
    """The service stops while the channel's first start extracts its members (their Bulk jobs held). docs/channels.md:
    "A crash during the extracts resumes them before the channel streams": at the next start both are still the
    channel's members (NONE -> CHANNEL, lifecycle HANDOFFS), their extracts resume, and their changes come through the
    channel, not through subscriptions of their own."""
    schema = "firststop"
    settings = _settings(sim, pg_url, schema, {"Account": {}, "Contact": {}}, CHANNEL)

    async def extracting() -> bool:
        return await pg_value(pg_url, "SELECT count(*) = 2 FROM replicator.objects"
                                      " WHERE phase = 'BACKFILLING' AND job_id IS NOT NULL")

    await sim_admin(sim, "PUT", "/__sim/faults", {"hold_jobs": True})
    async with running_service(settings, until=extracting, before_stop=give_back(sim, faults={"hold_jobs": False})):
        assert await pg_value(pg_url, f"SELECT count(*) FROM replicator.checkpoints WHERE topic = '{CHANNEL}'") == 1
    ways = "SELECT array_agg(object || ' ' || coalesce(mode, '-') || ' ' || coalesce(channel, '-') ORDER BY object)" \
           " FROM replicator.objects"
    assert await pg_value(pg_url, ways) == [f"Account cdc {CHANNEL}", f"Contact cdc {CHANNEL}"]
    ids = await _live_ids(sim, "Contact", 34, 2)
    async with running_service(settings):
        await _marker(sim, pg_url, schema, "Contact", ids[0], "after a first start cut short")
        await _marker(sim, pg_url, schema, "Contact", ids[1], "after a first start cut short")
        assert await pg_value(pg_url, ways) == [f"Account cdc {CHANNEL}", f"Contact cdc {CHANNEL}"]
        topics = await pg_value(pg_url, "SELECT array_agg(topic ORDER BY topic) FROM replicator.checkpoints")
        assert topics == [CHANNEL]  # no subscription of their own
        assert await all_equal(settings)
