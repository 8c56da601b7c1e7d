"""The Pub/Sub subscriber against the simulator over TLS (ca_file): OAuth token, tenant id from the identity URL,
GetTopic, and an UPDATE made through `POST /__sim/changes` decoded into a Change."""

from __future__ import annotations

import asyncio
import json
import ssl

import httpx
import pytest

from replicator.model import ReplayIdInvalidError
from replicator.salesforce.auth import Credentials, TokenProvider
from replicator.salesforce.pubsub import PubSubClient
from replicator.sim.server import SimulatorThread

TOPIC = "/data/AccountChangeEvent"


@pytest.fixture(scope="module")
def sim():
    with SimulatorThread(records=20, seed=5) as running:
        yield running.info


@pytest.fixture
async def http(sim):
    async with httpx.AsyncClient(verify=ssl.create_default_context(cafile=sim["ca_file"]), base_url=sim["instance_url"],
                                 timeout=30) as client:
        yield client


@pytest.fixture
async def pubsub(sim, http):
    creds = Credentials(flow="client_credentials", token_url=sim["token_url"], client_id=sim["client_id"],
                        client_secret=sim["client_secret"])
    async with PubSubClient(sim["pubsub_endpoint"], TokenProvider(creds, http), ca_file=sim["ca_file"],
                            backoff_base=0.01) as client:
        yield client


async def change(http, items) -> dict:
    response = await http.post("/__sim/changes", json=items)
    assert response.status_code == 200, response.text
    return response.json()


async def account_ids(http, n: int) -> list[str]:
    lines = (await http.get("/__sim/objects/Account/records")).content.splitlines()
    return [r["Id"] for r in map(json.loads, lines) if not r["IsDeleted"]][:n]


async def test_update_made_in_the_org_arrives_decoded(sim, http, pubsub):
    topic = await pubsub.get_topic(TOPIC)
    assert topic["can_subscribe"] and topic["schema_id"]
    token = await pubsub.token()
    assert token.org_id == sim["tenant_id"]

    ids = await account_ids(http, 2)
    before = await change(http, [{"object": "Account", "type": "UPDATE", "ids": [ids[0]], "fields": {"Phone": "1"}}])
    after = await change(http, [{"object": "Account", "type": "UPDATE", "ids": [ids[1]],
                                 "fields": {"Phone": "555-0100", "BillingState": "CA"}, "nulled": ["Website"]}])

    sub = pubsub.subscribe(TOPIC, replay_id=bytes.fromhex(before["replay_ids"][-1]), max_pending=10)
    try:
        event = await asyncio.wait_for(sub.__anext__(), 10)
    finally:
        await sub.close()
    assert event.error is None, event.error
    assert event.replay_id == bytes.fromhex(after["replay_ids"][-1])
    (ch,) = event.changes
    assert (ch.object, ch.record_id, ch.change_type) == ("Account", ids[1], "UPDATE")
    assert ch.transaction_key == after["transaction_key"]
    assert ch.version.commit_timestamp == after["commit_timestamp"] == event.commit_timestamp
    assert ch.fields["Phone"] == "555-0100" and ch.fields["BillingAddress.State"] == "CA"
    assert "Website" in ch.nulled
    assert "LastModifiedDate" in ch.fields


async def test_unknown_replay_id_is_refused_not_skipped(pubsub):
    sub = pubsub.subscribe(TOPIC, replay_id=b"\xff" * 10, max_pending=5)
    try:
        with pytest.raises(ReplayIdInvalidError):
            await asyncio.wait_for(sub.__anext__(), 10)
    finally:
        await sub.close()


async def test_subscriptions_take_a_new_channel_per_hundred_streams(sim, http, pubsub):
    """Salesforce allows 100 concurrent streams per HTTP/2 connection (docs/pubsub-cdc.md §9), as the simulator's
    server does: 150 subscriptions hold two stream channels (100 + 50), each its own connection, and all 150 are
    served at once."""
    await http.put("/__sim/faults", json={"keepalive_seconds": 0.2})
    subs = [pubsub.subscribe(TOPIC, replay_id=None, max_pending=1) for _ in range(150)]
    try:
        for sub in subs:
            sub.take_ready(1)  # starts the Subscribe call
        deadline = asyncio.get_running_loop().time() + 60
        while not all(sub.connected for sub in subs):
            assert asyncio.get_running_loop().time() < deadline, sum(sub.connected for sub in subs)
            await asyncio.sleep(0.05)
        assert pubsub.stream_channels == [100, 50]
        stats = (await http.get("/__sim/stats")).json()
        assert stats["subscribers"] >= 150 and stats["peak_streams_per_connection"] == 100
    finally:
        for sub in subs:
            await sub.close()
        await http.put("/__sim/faults", json={"keepalive_seconds": 270.0})
    assert pubsub.stream_channels == [0, 0]
