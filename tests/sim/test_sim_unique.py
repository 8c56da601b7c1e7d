"""Unique fields are unique (Invoice__c.External_Id__c, describe `unique: true`): POST /__sim/changes refuses a
duplicate with Salesforce's DUPLICATE_VALUE error, judges a request by its end state (swaps and chains pass), and
the traffic generator never makes a duplicate. An External ID that is not Unique (Invoice__c.Legacy_Code__c)
repeats freely."""

from __future__ import annotations

import orjson
import pytest

from replicator.sim.ids import parse_counter

from .conftest import V, wait_for
from .pubsub_client import Org, events_of, running_org

OBJ = "Invoice__c"


@pytest.fixture(scope="module")
def org():
    with running_org(records=50, seed=29) as o:
        yield o


def _truth(org: Org) -> dict[str, dict]:
    lines = org.http.get(f"/__sim/objects/{OBJ}/records").content.splitlines()
    return {rec["Id"]: rec for rec in map(orjson.loads, filter(None, lines))}


def _live(org: Org, n: int) -> list[dict]:
    truth = _truth(org)
    return [truth[i] for i in org.first_ids(OBJ, n)]


def _refused(org: Org, items: list[dict], holder: str) -> None:
    """The request is refused as Salesforce refuses a duplicate, naming `holder`, and nothing of it applies."""
    before, stats = _truth(org), org.http.get("/__sim/stats").json()
    r = org.http.post("/__sim/changes", json=items)
    assert r.status_code == 400, r.text
    assert r.json() == [{"message": f"duplicate value found: External_Id__c duplicates value on record with id: "
                                    f"{holder[:15]}", "errorCode": "DUPLICATE_VALUE", "fields": []}]
    assert _truth(org) == before
    assert org.http.get("/__sim/stats").json()["events_published"] == stats["events_published"]


def _update(record: dict, value: str | None) -> dict:
    if value is None:
        return {"object": OBJ, "type": "UPDATE", "ids": [record["Id"]], "nulled": ["External_Id__c"]}
    return {"object": OBJ, "type": "UPDATE", "ids": [record["Id"]], "fields": {"External_Id__c": value}}


def _create(value: str, count: int = 1) -> dict:
    return {"object": OBJ, "type": "CREATE", "fields": {"Name": "new", "External_Id__c": value}, "count": count}


def _next_counter(org: Org) -> int:
    """The Id counter the next new invoice gets (a record created now takes the one after it)."""
    probe = org.changes([{"object": OBJ, "type": "CREATE", "fields": {"Name": "probe"}}])["ids"][0][0]
    return parse_counter(probe, "a0X") + 1


def _assert_live_values_unique(org: Org) -> None:
    values = [r["External_Id__c"].lower() for r in _truth(org).values()
              if not r["IsDeleted"] and r["External_Id__c"] is not None]
    assert len(values) == len(set(values))


def test_describe_says_the_key_is_unique(org):
    auth = {"Authorization": f"Bearer {org.token}"}
    fields = {f["name"]: f for f in org.http.get(f"/services/data/{V}/sobjects/{OBJ}/describe",
                                                 headers=auth).json()["fields"]}
    key = fields["External_Id__c"]
    assert (key["unique"], key["externalId"], key["caseSensitive"]) == (True, True, False)


def test_an_update_or_create_taking_a_held_value_is_refused_as_duplicate_value(org):
    a, b = _live(org, 2)
    _refused(org, [_update(a, b["External_Id__c"])], holder=b["Id"])
    _refused(org, [_update(a, b["External_Id__c"].lower())], holder=b["Id"])  # not case-sensitive
    _refused(org, [_create(b["External_Id__c"])], holder=b["Id"])
    # an earlier item of the same request may be applied in Salesforce's order, but nothing applies here
    _refused(org, [_update(a, "FINE-1"), _create(b["External_Id__c"])], holder=b["Id"])


def test_one_request_may_not_give_two_records_one_value(org):
    a, b = _live(org, 2)
    r = org.http.post("/__sim/changes", json=[_create("TWIN", count=2)])
    assert r.status_code == 400 and r.json()[0]["errorCode"] == "DUPLICATE_VALUE"
    _refused(org, [_update(a, "TWIN-2"), _update(b, "twin-2")], holder=a["Id"])
    assert "TWIN" not in {r["External_Id__c"] for r in _truth(org).values()}


def test_swaps_chains_and_a_freed_value_pass_when_the_end_state_is_unique(org):
    a, b, c, d, e = _live(org, 5)
    org.changes([_update(a, b["External_Id__c"]), _update(b, a["External_Id__c"]),  # a swap
                 _update(c, d["External_Id__c"]), _update(d, e["External_Id__c"]), _update(e, "CHAIN-END"),
                 _create(c["External_Id__c"])])  # a new record takes the value c let go of
    truth = _truth(org)
    assert truth[a["Id"]]["External_Id__c"] == b["External_Id__c"]
    assert truth[b["Id"]]["External_Id__c"] == a["External_Id__c"]
    assert [truth[x["Id"]]["External_Id__c"] for x in (c, d, e)] == [d["External_Id__c"], e["External_Id__c"],
                                                                      "CHAIN-END"]
    assert [r for r in truth.values() if r["External_Id__c"] == c["External_Id__c"]][0]["Name"] == "new"
    org.changes([_update(a, None), _update(b, None)])  # any number of records may have no value
    _assert_live_values_unique(org)


def test_a_soft_deleted_holder_frees_its_value_and_its_undelete_is_then_refused(org):
    x, y = _live(org, 7)[5:]
    org.changes([{"object": OBJ, "type": "DELETE", "ids": [x["Id"]]}])
    taken = org.changes([_create(x["External_Id__c"])])["ids"][0][0]
    _refused(org, [{"object": OBJ, "type": "UNDELETE", "ids": [x["Id"]]}], holder=taken)
    # after the new holder lets go of the value, the undelete goes through
    org.changes([_update({"Id": taken}, "LET-GO"), {"object": OBJ, "type": "UNDELETE", "ids": [x["Id"]]}])
    assert _truth(org)[x["Id"]]["IsDeleted"] is False
    org.changes([{"object": OBJ, "type": "HARD_DELETE", "ids": [y["Id"]]}])
    org.changes([_create(y["External_Id__c"])])  # a removed record holds nothing
    _assert_live_values_unique(org)


def test_a_create_given_no_value_never_takes_a_held_one(org):
    counter = _next_counter(org)
    [a] = _live(org, 1)
    upcoming = f"EXT-{counter:08d}"  # the generator's value for the next record
    org.changes([_update(a, upcoming.lower())])
    created = org.changes([{"object": OBJ, "type": "CREATE", "fields": {"Name": "auto"}, "count": 2}])["ids"][0]
    truth = _truth(org)
    assert [truth[i]["External_Id__c"] for i in created] == [f"{upcoming}-2", f"EXT-{counter + 1:08d}"]
    _assert_live_values_unique(org)


def test_the_traffic_generator_never_makes_a_duplicate(org):
    counter = _next_counter(org)
    live = _live(org, 6)
    # the values the next records would be generated with are held already, by live and soft-deleted records
    org.changes([_update(r, f"EXT-{counter + k:08d}") for k, r in enumerate(live)])
    org.changes([{"object": OBJ, "type": "DELETE", "ids": [live[0]["Id"], live[1]["Id"]]}])
    before = org.http.get("/__sim/stats").json()["changes"]["by_type"].get("CREATE", 0)
    r = org.http.put("/__sim/traffic", json={"running": True, "rate": 500, "objects": [OBJ], "changes": None,
                                              "mix": {"CREATE": 3, "UPDATE": 3, "DELETE": 1, "UNDELETE": 2},
                                              "transaction_size": 3, "fields_per_update": 6})
    assert r.status_code == 200, r.text
    wait_for(lambda: org.http.get("/__sim/stats").json()["changes"]["by_type"].get("CREATE", 0) >= before + 60)
    org.http.put("/__sim/traffic", json={"running": False})
    truth = _truth(org)
    values = [r["External_Id__c"].lower() for r in truth.values() if r["External_Id__c"] is not None]
    assert len(values) == len(set(values))  # not even a soft-deleted record shares a value
    assert sum(1 for r in truth.values() if (r["External_Id__c"] or "").endswith("-2")) >= len(live)


def test_an_external_id_that_is_not_unique_says_so_in_describe_and_repeats(org):
    auth = {"Authorization": f"Bearer {org.token}"}
    fields = {f["name"]: f for f in org.http.get(f"/services/data/{V}/sobjects/{OBJ}/describe",
                                                 headers=auth).json()["fields"]}
    legacy = fields["Legacy_Code__c"]
    assert (legacy["externalId"], legacy["unique"], legacy["idLookup"], legacy["type"]) == (True, False, True, "string")
    codes = [r["Legacy_Code__c"] for r in _truth(org).values() if r["Legacy_Code__c"] is not None]
    assert len(set(codes)) < len(codes)  # the generated data repeats codes already
    a, b = _live(org, 2)
    result = org.changes([{"object": OBJ, "type": "UPDATE", "ids": [a["Id"], b["Id"]],
                           "fields": {"Legacy_Code__c": "LEG-SHARED"}},
                          {"object": OBJ, "type": "CREATE", "fields": {"Name": "legacy", "Legacy_Code__c": "leg-shared"}}])
    truth = _truth(org)
    assert [truth[i]["Legacy_Code__c"] for i in (a["Id"], b["Id"], result["ids"][1][0])] == \
        ["LEG-SHARED", "LEG-SHARED", "leg-shared"]
    update, create = events_of(org, result["replay_ids"], "/data/Invoice__ChangeEvent")
    assert update["Legacy_Code__c"] == "LEG-SHARED" and create["Legacy_Code__c"] == "leg-shared"
    q = org.http.get(f"/services/data/{V}/query", headers=auth,
                     params={"q": f"SELECT Id FROM {OBJ} WHERE Legacy_Code__c = 'LEG-SHARED'"}).json()
    assert {r["Id"] for r in q["records"]} == {a["Id"], b["Id"], result["ids"][1][0]}  # SOQL text = ignores case
