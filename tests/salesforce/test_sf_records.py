"""records.py against the simulator over HTTPS: records by id (query and queryAll), id refusal, SOQL quoting."""

from __future__ import annotations

import pytest

from replicator.salesforce.records import IDS_PER_QUERY, records_by_id, soql_string
from replicator.sim.admin_client import sim_admin
from replicator.sim.server import SimulatorThread

RECORDS = 260  # more live Accounts than one query takes, so records_by_id needs two
FIELDS = ["Id", "Name", "IsDeleted"]


@pytest.fixture(scope="module")
def sim():
    with SimulatorThread(records=RECORDS, seed=23, page_size=100) as running:
        yield running.info


async def live_ids(sf) -> list[str]:
    return [r["Id"] async for r in sf.query("SELECT Id FROM Account")]


async def create_account(sim, name: str) -> str:
    response = await sim_admin(sim, "POST", "/__sim/changes", [{"object": "Account", "type": "CREATE",
                                                                 "fields": {"Name": name}}])
    return response.json()["ids"][0][0]


async def test_live_records_come_back_by_id_in_batches(sf):
    ids = await live_ids(sf)
    assert len(ids) > IDS_PER_QUERY
    calls = sf.call_count
    found = await records_by_id(sf, "Account", FIELDS, ids, include_deleted=False)
    assert set(found) == set(ids)
    assert all(found[i]["Id"] == i and found[i]["IsDeleted"] is False for i in ids)
    assert sf.call_count - calls == -(-len(ids) // IDS_PER_QUERY)  # one query per batch of ids


async def test_deleted_record_comes_back_only_with_include_deleted(sf, sim):
    gone = await create_account(sim, "Deleted Ltd")
    kept = await create_account(sim, "Kept Ltd")
    await sim_admin(sim, "POST", "/__sim/changes", [{"object": "Account", "type": "DELETE", "ids": [gone]}])

    live = await records_by_id(sf, "Account", FIELDS, [gone, kept], include_deleted=False)
    assert set(live) == {kept}

    everything = await records_by_id(sf, "Account", FIELDS, [gone, kept], include_deleted=True)
    assert set(everything) == {gone, kept}
    assert everything[gone]["IsDeleted"] is True and everything[gone]["Name"] == "Deleted Ltd"
    assert everything[kept]["IsDeleted"] is False


async def test_id_is_selected_even_when_not_asked_for(sf, sim):
    new = await create_account(sim, "No Id Asked")
    found = await records_by_id(sf, "Account", ["Name"], [new], include_deleted=False)
    assert found[new]["Name"] == "No Id Asked"


async def test_ids_that_are_not_record_ids_are_refused_not_spliced(sf, sim):
    good = await create_account(sim, "Good Id")
    hostile = ["x') OR (Name != 'y", "001*", "", good + "' OR Name != '", "0011234567890123456"]
    calls = sf.call_count
    assert await records_by_id(sf, "Account", FIELDS, hostile, include_deleted=True) == {}
    assert sf.call_count == calls  # nothing was sent: no id left to ask for

    found = await records_by_id(sf, "Account", FIELDS, [*hostile, good], include_deleted=True)
    assert set(found) == {good}  # spliced, the first would have selected every other Account


async def test_quoted_string_finds_a_name_with_quote_backslash_and_newline(sf, sim):
    name = "O'Brien \\ Sons\nLtd"
    new = await create_account(sim, name)
    rows = [r async for r in sf.query(f"SELECT Id, Name FROM Account WHERE Name = {soql_string(name)}")]
    assert [(r["Id"], r["Name"]) for r in rows] == [(new, name)]


def test_soql_string_escapes_what_soql_reserves():
    assert soql_string("Bob's \\ BBQ\r\n") == "'Bob\\'s \\\\ BBQ\\r\\n'"


async def test_records_come_back_by_an_external_id_field(sf):
    invoices = [r async for r in sf.query("SELECT Id, External_Id__c FROM Invoice__c WHERE IsDeleted = false")][:3]
    keys = [r["External_Id__c"] for r in invoices]
    found = await records_by_id(sf, "Invoice__c", ["Id", "Name"], [*keys, "no-such-key", "it's"],
                                include_deleted=True, key_field="External_Id__c")
    assert set(found) == set(keys)  # keyed by the field's value; unknown values (quoted, not refused) are absent
    assert {found[k]["Id"] for k in keys} == {r["Id"] for r in invoices}
