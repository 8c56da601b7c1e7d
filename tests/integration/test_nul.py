"""A NUL byte in a text value (it occurs in real Salesforce data, docs/bulk-rest-oauth.md §1.8) reaches
Postgres without the NUL by every path (backfill page, change event, gap-healed record, dead-letter retry, platform
event, dead letter), and the stream goes on behind it."""

from __future__ import annotations

import asyncio
import ssl

import asyncpg
import grpc
import httpx
import orjson
import pytest

from replicator.app.commands import run_backfills
from replicator.app.runtime import open_store, salesforce_client
from replicator.model import DeadLetter
from replicator.pipeline.dead_letters import retry
from replicator.postgres.state import add_dead_letters
from replicator.protocol import pubsub_api_pb2 as pb
from replicator.protocol import pubsub_api_pb2_grpc as pb_grpc
from replicator.sim.avro import PlatformEventSchema
from replicator.sim.server import SimulatorThread

from .helpers import ground_truth, pg_value, running_service, settings_for, sim_admin, wait_for

# The test's own sessions see the default org's state unqualified, as the Store's do (postgres/store.py).
DEFAULT_STATE = {"search_path": "replicator"}


@pytest.fixture(scope="module")
def sim():
    with SimulatorThread(records=80, seed=5, keepalive_seconds=0.2) as thread:
        yield thread.info


async def _change(sim, **item) -> None:
    r = await sim_admin(sim, "POST", "/__sim/changes", [{"object": "Account", "type": "UPDATE", **item}])
    assert r.status_code == 200, r.text


async def _names(pg_url: str, schema: str, ids: list[str]) -> dict[str, str]:
    conn = await asyncpg.connect(pg_url, server_settings=DEFAULT_STATE)
    try:
        rows = await conn.fetch(f"SELECT id, name FROM {schema}.account WHERE id = ANY($1::text[])", ids)
    finally:
        await conn.close()
    return {r["id"]: r["name"] for r in rows}


async def test_nul_in_a_backfill_page_a_change_event_and_a_gap_healed_record_is_stripped(sim, pg_url):
    page, event, gap, later = [r["Id"] for r in await ground_truth(sim, "Account") if not r["IsDeleted"]][:4]
    await _change(sim, ids=[page], fields={"Name": "Page\x00 Corp"})  # before the backfill: in its CSV page
    settings = settings_for(sim, pg_url, "nul", salesforce={"pubsub_endpoint": sim["pubsub_endpoint"]},
                            stream={"batch_max_wait_s": 0.05}, objects={"Account": {}})
    async with running_service(settings):
        await _change(sim, ids=[event], fields={"Name": "Event\x00 Corp"})  # an Avro string with NUL
        await _change(sim, ids=[gap], fields={"Name": "Gap\x00 Corp"}, force_gap=True)  # fetched by REST
        await _change(sim, ids=[later], fields={"Phone": "+1 555 0100"})  # the stream must go on to this one
        try:
            await wait_for(lambda: pg_value(pg_url, f"SELECT phone = '+1 555 0100' FROM nul.account "
                                                    f"WHERE id = '{later}'"), timeout=30)
        except TimeoutError:
            error = await pg_value(pg_url, "SELECT last_error FROM replicator.objects")
            raise AssertionError(f"the stream stopped before the later change: {error}") from None
    assert await _names(pg_url, "nul", [page, event, gap]) == {
        page: "Page Corp", event: "Event Corp", gap: "Gap Corp"}
    assert await pg_value(pg_url, "SELECT count(*) FROM replicator.dead_letters") == 0


async def test_dead_letter_retry_applies_a_record_whose_value_holds_nul(sim, pg_url):
    settings = settings_for(sim, pg_url, "nulretry", objects={"Account": {}})
    target = [r["Id"] for r in await ground_truth(sim, "Account") if not r["IsDeleted"]][10]
    await run_backfills(settings, ["Account"])
    async with salesforce_client(settings) as client, open_store(settings) as store:
        await _change(sim, ids=[target], fields={"Name": "Retry\x00 Corp"})
        await pg_value(pg_url, "INSERT INTO replicator.dead_letters (object, record_key, source, reason, payload)"
                               f" VALUES ('Account', '{target}', 'stream', 'test', '{{}}'::jsonb)")
        result = await retry(client, store, settings, force=True)
    assert (result.applied, result.failed) == (1, 0)
    assert await _names(pg_url, "nulretry", [target]) == {target: "Retry Corp"}


async def test_a_dead_letter_whose_payload_and_reason_hold_nul_is_stored(sim, pg_url):
    settings = settings_for(sim, pg_url, "nuldead", objects={"Account": {}})
    async with open_store(settings):  # migrated: replicator.dead_letters exists
        pass
    letter = DeadLetter("Account", "bad value: 'a\x00b'", key="001\x00", source="stream",
                        payload={"values": {"name": "a\x00b", "n\x00": ["x\x00", {"y": "\x00"}]}})
    conn = await asyncpg.connect(pg_url, server_settings=DEFAULT_STATE)
    try:
        await add_dead_letters(conn, [letter])
        row = await conn.fetchrow("SELECT record_key, reason, payload FROM replicator.dead_letters")
    finally:
        await conn.close()
    assert (row["record_key"], row["reason"]) == ("001", "bad value: 'ab'")
    assert orjson.loads(row["payload"]) == {"values": {"name": "ab", "n": ["x", {"y": ""}]}}


def _publish(sim: dict, order_ids: list[str]) -> None:
    """Publish Order_Ready__e events through the Pub/Sub API (gRPC Publish), as an org's Apex or flow would."""
    token = httpx.post(f"{sim['instance_url']}/services/oauth2/token",
                       data={"grant_type": "client_credentials", "client_id": sim["client_id"],
                             "client_secret": sim["client_secret"]},
                       verify=ssl.create_default_context(cafile=sim["ca_file"])).json()["access_token"]
    with open(sim["ca_file"], "rb") as f:
        channel = grpc.secure_channel(sim["pubsub_endpoint"], grpc.ssl_channel_credentials(f.read()))
    try:
        stub = pb_grpc.PubSubStub(channel)
        metadata = (("accesstoken", token), ("instanceurl", sim["instance_url"]), ("tenantid", sim["tenant_id"]))
        schema = PlatformEventSchema()
        events = [pb.ProducerEvent(id=f"e{n}", schema_id=schema.id, payload=schema.encode(
            {"CreatedDate": 1714172795000, "CreatedById": "005000000000001AAA", "Order_Id__c": order_id,
             "Amount__c": 1.0, "Ready_At__c": None})) for n, order_id in enumerate(order_ids)]
        response = stub.Publish(pb.PublishRequest(topic_name="/event/Order_Ready__e", events=events),
                                metadata=metadata)
        assert all(not r.HasField("error") for r in response.results), response
    finally:
        channel.close()


async def test_nul_in_a_platform_event_is_stripped_and_later_events_follow(sim, pg_url):
    await sim_admin(sim, "PUT", "/__sim/faults", {"purge_before_now": True})  # only this test's events
    await asyncio.to_thread(_publish, sim, ["ORD\x00-1", "ORD-2"])
    settings = settings_for(sim, pg_url, "nulevents", salesforce={"pubsub_endpoint": sim["pubsub_endpoint"]},
                            stream={"batch_max_wait_s": 0.05, "platform_events": ["Order_Ready__e"]},
                            objects={"Account": {}})
    async with running_service(settings, until=lambda: pg_value(pg_url, "SELECT count(*) = 2 FROM"
                                                                       " nulevents.order_ready__e"), timeout=30):
        pass
    ids = await pg_value(pg_url, "SELECT string_agg(fields->>'Order_Id__c', ',' ORDER BY replay_id)"
                                 " FROM nulevents.order_ready__e")
    assert ids == "ORD-1,ORD-2"
