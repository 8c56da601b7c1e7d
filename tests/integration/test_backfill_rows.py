"""Rows Postgres refuses in a result page become dead letters (raw row and Postgres's reason) and the backfill goes
on: a value no Python check catches (an impossible datetime), and a key the extract holds twice (an org
inconsistency: the first row is kept, every later one is a dead letter, in `copy` and in `upsert` mode)."""

from __future__ import annotations

import re
import ssl

import asyncpg
import httpx
import orjson
import pytest

from replicator.app.commands import run_backfills
from replicator.app.runtime import credentials, open_store
from replicator.pipeline.backfill import Backfill
from replicator.salesforce.client import SalesforceClient
from replicator.sim.server import SimulatorThread

from .helpers import compare_with_truth, ground_truth, settings_for, sim_admin

IMPOSSIBLE = "2024-13-45T25:61"  # month 13, day 45, hour 25: the shape of a datetime, no date at all
_DATETIME = re.compile(rb'"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{3}Z"')


@pytest.fixture
def sim():
    with SimulatorThread(records=300, seed=13) as thread:
        yield thread.info


class CorruptingTransport(httpx.AsyncBaseTransport):
    """Forwards to the simulator; in Bulk result pages, the first datetime of the row of `record_id` becomes
    IMPOSSIBLE (a page as a broken org could serve it; the simulator only serves datetimes it can parse)."""

    def __init__(self, ca_file: str, record_id: str):
        self.inner = httpx.AsyncHTTPTransport(verify=ssl.create_default_context(cafile=ca_file))
        self.record_id = record_id
        self.corrupted = 0

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        response = await self.inner.handle_async_request(request)
        if not (request.url.path.startswith("/services/data/") and request.url.path.endswith("/results")):
            return response
        body = await response.aread()  # decoded (gzip) by httpx
        await response.aclose()
        at = body.find(f'\n"{self.record_id}",'.encode())
        if at >= 0:  # the record's first datetime (a value before it may hold line breaks)
            stamp = _DATETIME.search(body, at)
            body = body[:stamp.start()] + f'"{IMPOSSIBLE}"'.encode() + body[stamp.end():]
            self.corrupted += 1
        headers = [(k, v) for k, v in response.headers.raw
                   if k.lower() not in (b"content-encoding", b"content-length", b"transfer-encoding")]
        return httpx.Response(response.status_code, headers=headers, stream=_Body(body))

    async def aclose(self) -> None:
        await self.inner.aclose()


class _Body(httpx.AsyncByteStream):
    """A body streamed like the network's (the Bulk client reads pages with `aiter_raw`)."""

    def __init__(self, data: bytes):
        self.data = data

    async def __aiter__(self):
        yield self.data


async def _dead_letters(pg_url: str) -> list[dict]:
    conn = await asyncpg.connect(pg_url)
    try:
        rows = await conn.fetch("SELECT object, record_key, reason, payload FROM replicator.dead_letters ORDER BY id")
    finally:
        await conn.close()
    return [{**dict(r), "payload": orjson.loads(r["payload"])} for r in rows]


async def _fetch(pg_url: str, sql: str, *args) -> list[asyncpg.Record]:
    conn = await asyncpg.connect(pg_url)
    try:
        return await conn.fetch(sql, *args)
    finally:
        await conn.close()


async def test_an_impossible_datetime_is_a_dead_letter_and_the_rest_of_the_page_loads(sim, pg_url):
    truth = await ground_truth(sim, "Account")
    bad, nul = truth[140]["Id"], truth[141]["Id"]
    # a NUL in the same page: the careful path checks and loads it as COPY receives it, without the NUL
    r = await sim_admin(sim, "POST", "/__sim/changes", [{"object": "Account", "type": "UPDATE", "ids": [nul],
                                                        "fields": {"Name": "Nul\x00 Corp"}}])
    assert r.status_code == 200, r.text
    truth = await ground_truth(sim, "Account")
    settings = settings_for(sim, pg_url, "baddate", objects={"Account": {}}, backfill={"page_size": 100})
    transport = CorruptingTransport(sim["ca_file"], bad)
    sf = settings.salesforce
    async with SalesforceClient(credentials(settings), api_version=sf.api_version, transport=transport) as client, \
            open_store(settings) as store:
        progress = await Backfill(client, store, settings, "Account", settings.objects["Account"]).run()
    assert transport.corrupted >= 1
    assert progress.dead_letters == 1 and progress.rows_done == len(truth) - 1
    [dead] = await _dead_letters(pg_url)
    assert dead["record_key"] == bad and "out of range" in dead["reason"] and "postgres" in dead["reason"]
    assert IMPOSSIBLE in dead["payload"]["row"] and dead["payload"]["header"][0] == "Id"
    pages = await _fetch(pg_url, "SELECT rows, dead_letters FROM replicator.backfill_pages ORDER BY locator")
    assert sum(p["rows"] for p in pages) == len(truth) - 1 and sum(p["dead_letters"] for p in pages) == 1
    expected = [{**t, "Name": t["Name"].replace("\x00", "")} for t in truth if t["Id"] != bad]
    assert await compare_with_truth(pg_url, "baddate", "Account", "Id", expected) == []


class RekeyingTransport(CorruptingTransport):
    """Forwards to the simulator; in Bulk result pages, each key value in `keys` is replaced by its mapped value:
    a page holding a key twice, as a broken org could serve it (the simulator, like Salesforce, keeps unique
    fields unique: DUPLICATE_VALUE)."""

    def __init__(self, ca_file: str, keys: dict[str, str]):
        super().__init__(ca_file, "")
        self.keys = keys

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        response = await self.inner.handle_async_request(request)
        if not (request.url.path.startswith("/services/data/") and request.url.path.endswith("/results")):
            return response
        body = await response.aread()
        await response.aclose()
        for old, new in self.keys.items():
            if f'"{old}"'.encode() in body:
                body = body.replace(f'"{old}"'.encode(), f'"{new}"'.encode())
                self.corrupted += 1
        headers = [(k, v) for k, v in response.headers.raw
                   if k.lower() not in (b"content-encoding", b"content-length", b"transfer-encoding")]
        return httpx.Response(response.status_code, headers=headers, stream=_Body(body))


async def _backfill_rekeyed(sim, settings, keys: dict[str, str]):
    transport = RekeyingTransport(sim["ca_file"], keys)
    sf = settings.salesforce
    async with SalesforceClient(credentials(settings), api_version=sf.api_version, transport=transport) as client, \
            open_store(settings) as store:
        progress = await Backfill(client, store, settings, "Invoice__c", settings.objects["Invoice__c"]).run()
    assert transport.corrupted >= 1
    return progress


async def _duplicate_external_id(sim) -> tuple[dict, dict]:
    """Two invoices; the second one's External_Id__c is served as the first's (see RekeyingTransport)."""
    invoices = await ground_truth(sim, "Invoice__c")
    return invoices[5], invoices[6]


async def test_a_duplicate_key_in_a_copy_page_keeps_the_first_row_and_dead_letters_the_other(sim, pg_url):
    first, duplicate = await _duplicate_external_id(sim)
    objects = {"Invoice__c": {"key": "External_Id__c"}}
    settings = settings_for(sim, pg_url, "dupcopy", objects=objects, backfill={"page_size": 5000})
    progress = await _backfill_rekeyed(sim, settings, {duplicate["External_Id__c"]: first["External_Id__c"]})
    await _assert_first_kept(sim, pg_url, "dupcopy", first, duplicate["Id"])
    assert progress.dead_letters == 1


async def test_a_duplicate_key_in_an_upsert_page_is_a_dead_letter_not_dropped(sim, pg_url):
    objects = {"Invoice__c": {"key": "External_Id__c"}}
    settings = settings_for(sim, pg_url, "dupupsert", objects=objects, backfill={"page_size": 5000})
    first, duplicate = await _duplicate_external_id(sim)
    assert not isinstance((await run_backfills(settings, ["Invoice__c"]))["Invoice__c"], BaseException)
    await _fetch(pg_url, f"DELETE FROM dupupsert.invoice__c WHERE id = '{duplicate['Id']}'")  # as if it were new
    # a second backfill finds the table full: each page goes through staging and the keyed upsert
    await _backfill_rekeyed(sim, settings, {duplicate["External_Id__c"]: first["External_Id__c"]})
    assert (await _fetch(pg_url, "SELECT load_mode FROM replicator.objects"))[0]["load_mode"] == "upsert"
    await _assert_first_kept(sim, pg_url, "dupupsert", first, duplicate["Id"])


async def _assert_first_kept(sim, pg_url: str, schema: str, first: dict, duplicate: str) -> None:
    [dead] = await _dead_letters(pg_url)
    assert dead["object"] == "Invoice__c" and dead["record_key"] == first["External_Id__c"]
    assert dead["payload"]["row"][0] == duplicate  # the raw row of the later record
    assert "duplicate" in dead["reason"] and first["External_Id__c"] in dead["reason"]
    assert "the first row with it loads" in dead["reason"], dead["reason"]
    rows = await _fetch(pg_url, f"SELECT id FROM {schema}.invoice__c WHERE external_id__c = $1",
                        first["External_Id__c"])
    assert [r["id"] for r in rows] == [first["Id"]]
    truth = [t for t in await ground_truth(sim, "Invoice__c") if t["Id"] != duplicate]
    assert await compare_with_truth(pg_url, schema, "Invoice__c", "External_Id__c", truth) == []


async def test_a_key_the_pages_repeat_loads_once_and_dead_letters_the_rest(sim, pg_url):
    # Many records served with one key: pages repeat it within themselves and across each other. One row per
    # key loads; every other is a dead letter.
    invoices = await ground_truth(sim, "Invoice__c")
    shared = [r for r in invoices if not r["IsDeleted"]][::2]
    settings = settings_for(sim, pg_url, "notunique", objects={"Invoice__c": {"key": "External_Id__c"}},
                            backfill={"page_size": 100})
    progress = await _backfill_rekeyed(sim, settings, {r["External_Id__c"]: "EXT-SHARED" for r in shared})
    assert (progress.rows_done, progress.dead_letters) == (len(invoices) - len(shared) + 1, len(shared) - 1)
    dead = await _dead_letters(pg_url)
    assert {d["record_key"] for d in dead} == {"EXT-SHARED"} and all("duplicate key" in d["reason"] for d in dead)
    [kept] = await _fetch(pg_url, "SELECT id FROM notunique.invoice__c WHERE external_id__c = 'EXT-SHARED'")
    ids = {r["Id"] for r in shared}
    assert kept["id"] in ids and kept["id"] not in {d["payload"]["row"][0] for d in dead}


async def test_a_row_the_table_refuses_in_upsert_mode_is_a_dead_letter_and_the_rest_loads(sim, pg_url):
    settings = settings_for(sim, pg_url, "refuses", objects={"Account": {}}, backfill={"page_size": 100})
    assert not isinstance((await run_backfills(settings, ["Account"]))["Account"], BaseException)
    truth = await ground_truth(sim, "Account")
    refused = truth[150]["Id"]
    conn = await asyncpg.connect(pg_url)
    try:  # the table's own rule, which staging does not have: only the upsert into the table refuses the row
        await conn.execute(f"DELETE FROM refuses.account WHERE id = '{refused}'")
        await conn.execute(f"ALTER TABLE refuses.account ADD CONSTRAINT not_this CHECK (id <> '{refused}')")
        await conn.execute("UPDATE refuses.account SET name = 'stale'")
    finally:
        await conn.close()
    progress = (await run_backfills(settings, ["Account"]))["Account"]  # the table is not empty: upsert mode
    assert not isinstance(progress, BaseException), progress
    assert progress.dead_letters == 1
    [dead] = await _dead_letters(pg_url)
    assert dead["record_key"] == refused and "not_this" in dead["reason"] and "postgres" in dead["reason"]
    expected = [t for t in truth if t["Id"] != refused]
    assert await compare_with_truth(pg_url, "refuses", "Account", "Id", expected) == []
