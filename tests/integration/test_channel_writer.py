"""One writer per object with a channel and two replicas (docs/replicas.md, docs/channels.md): an object that one
replica runs as a unit of its own (it holds `object:Account`, handed off the channel while it held it) is never
taken by the channel when the other replica takes the channel over: that one stands by for `object:Account`.

Found by the transitions bench (seed 9066): the replica that took the channel over planned Account, stored
polled, as a joiner (one poll round, then a member) while the first kept it on its own unit; both wrote it."""

from __future__ import annotations

import asyncio

import httpx
import pytest

from replicator.app.service import Service
from replicator.sim.server import SimulatorThread

from .helpers import pg_value, settings_for, sim_admin, wait_for

pytestmark = pytest.mark.slow  # two services

CHANNEL = "/data/ChangeEvents"
LEASE_S = 300  # units move by release (fair share), never by expiry


@pytest.fixture(scope="module")
def sim():
    with SimulatorThread(records=100, seed=83, keepalive_seconds=0.2) as thread:
        yield thread.info


def _settings(sim, pg_url: str, replica: str):
    return settings_for(sim, pg_url, "writer", salesforce={"pubsub_endpoint": sim["pubsub_endpoint"]},
                        service={"lease_s": LEASE_S, "lease_poll_s": 0.2, "replica_id": replica,
                                 "control_poll_s": 0.2, "shutdown_timeout_s": 15},
                        # the unit of its own looks for Account's topic again only after the test: it stays polled
                        stream={"batch_max_wait_s": 0.05, "channel": CHANNEL, "topic_check_s": 3600},
                        objects={"Account": {"poll_interval_s": 0.3}, "Contact": {}})


class _Replica:
    def __init__(self, settings):
        self.svc = Service(settings)
        self.task = asyncio.create_task(self.svc.run())

    def held(self) -> set[str]:
        units = getattr(self.svc, "units", None)
        return set(units.held()) if units is not None else set()

    async def objects(self) -> dict:
        """/readyz's objects ({} while nothing answers)."""
        if self.svc.endpoints is None or not self.svc.endpoints.port:
            return {}
        try:
            async with httpx.AsyncClient(timeout=5) as http:
                r = await http.get(f"http://127.0.0.1:{self.svc.endpoints.port}/readyz")
        except httpx.HTTPError:
            return {}
        return r.json().get("objects", {})

    async def stop(self) -> None:
        self.svc.stop.set()
        await asyncio.wait_for(self.task, 60)


async def test_the_channel_taken_over_leaves_an_object_another_replica_runs_on_its_own_unit(sim, pg_url):
    selected = (await sim_admin(sim, "GET", "/__sim/cdc")).json()["objects"]
    await sim_admin(sim, "PUT", "/__sim/cdc", {"objects": [n for n in selected if n != "Account"]})
    a = _Replica(_settings(sim, pg_url, "a"))
    replicas = [a]
    try:
        # `a` alone: Contact a member of the channel, Account (no topic) polled on a unit of its own
        await wait_for(lambda: pg_value(pg_url, "SELECT count(*) = 2 FROM replicator.objects WHERE phase ="
                                                " 'STREAMING' AND (object, mode) IN (('Account', 'poll'),"
                                                " ('Contact', 'cdc'))"), timeout=90)
        assert a.held() == {f"channel:{CHANNEL}", "object:Account"}
        await sim_admin(sim, "PUT", "/__sim/cdc", {"objects": selected})  # Account's topic exists again

        # a second replica: `a` hands the channel over (fair share 1 of 2 units) and keeps object:Account
        b = _Replica(_settings(sim, pg_url, "b"))
        replicas.append(b)
        await wait_for(lambda: _async(b.held() == {f"channel:{CHANNEL}"}), timeout=60)

        async def b_planned_account() -> bool:
            phase = (await b.objects()).get("Account", {}).get("phase")
            joined = await pg_value(pg_url, "SELECT channel IS NOT NULL FROM replicator.objects"
                                            " WHERE object = 'Account'")
            return phase == "STANDBY" or phase == "STREAMING" or bool(joined)

        await wait_for(b_planned_account, timeout=60)
        assert "object:Account" in a.held()
        # one writer: Account stays on `a`'s unit (polled, on no channel); `b` stands by for it
        row = await pg_value(pg_url, "SELECT jsonb_build_object('mode', mode, 'channel', channel)::text"
                                     " FROM replicator.objects WHERE object = 'Account'")
        assert row == '{"mode": "poll", "channel": null}', row
        assert (await b.objects())["Account"]["phase"] == "STANDBY"
        assert (await a.objects())["Account"]["phase"] == "STREAMING"
        assert "object:Account" in b.svc.units.standby()
    finally:
        await sim_admin(sim, "PUT", "/__sim/cdc", {"objects": selected})
        for r in reversed(replicas):
            await r.stop()


async def _async(value):
    return value
