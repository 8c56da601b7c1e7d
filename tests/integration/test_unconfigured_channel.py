"""A channel no longer configured (app/service.py `_leave_unconfigured`): its members out of the configuration
leave it under its lease (lifecycle HANDOFFS CHANNEL -> NONE), then the process lets the lease go: released at
once, not renewed for the life of the process, and out of the units its `replicas` row says it runs (a unit it
runs counts in every replica's fair share: app/fleet.py)."""

from __future__ import annotations

import pytest

from replicator.sim.server import SimulatorThread

from .helpers import pg_value, running_service, settings_for, streaming, wait_for

CHANNEL = "/data/ChangeEvents"


@pytest.fixture(scope="module")
def sim():
    with SimulatorThread(records=40, seed=23, keepalive_seconds=0.2) as thread:
        yield thread.info


def _settings(sim, pg_url, objects, channel: str):
    return settings_for(sim, pg_url, "unconf", salesforce={"pubsub_endpoint": sim["pubsub_endpoint"]},
                        stream={"batch_max_wait_s": 0.05, "channel": channel},
                        service={"control_poll_s": 0.2, "lease_s": 30, "replica_id": "solo"}, objects=objects)


async def test_a_channel_no_longer_configured_is_released_once_its_members_left_it(sim, pg_url):
    unit = f"channel:{CHANNEL}"
    async with running_service(_settings(sim, pg_url, {"Account": {}, "Contact": {}}, CHANNEL),
                               until=streaming(pg_url, "Account", "Contact", mode="cdc")):
        pass
    async with running_service(_settings(sim, pg_url, {"Account": {}}, ""), until=streaming(pg_url, "Account")):
        async def left() -> bool:  # Contact's position is a time position of its own now: no channel
            return await pg_value(pg_url, "SELECT channel IS NULL FROM replicator.objects WHERE object = 'Contact'")

        await wait_for(left, timeout=30)

        async def let_go() -> bool:
            live = await pg_value(pg_url, f"SELECT expires_at > now() FROM replicator.leases WHERE unit = '{unit}'")
            runs = await pg_value(pg_url, f"SELECT '{unit}' = ANY(units) FROM replicator.replicas"
                                          " WHERE replica = 'solo'")
            return live is False and runs is False

        await wait_for(let_go, timeout=10)  # a renewal is every 10 s (lease_s / 3): released, not left to lapse
