"""Fields that change without a change event (docs/salesforce-coverage.md §2, "What change events never carry";
docs/pubsub-cdc.md §5): LastActivityDate and LastViewedDate, and the formula Opportunity
Expected_Revenue__c, which follows its inputs in the org but never appears in an event."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import pytest

from replicator.protocol import pubsub_api_pb2 as pb
from replicator.sim.faults import Faults

from .conftest import V, wait_for, wait_job
from .pubsub_client import Org, decode_bitmap, events_of, running_org

CAPTURED = Path(__file__).parents[1] / "salesforce" / "data"
SILENT = {"LastActivityDate", "LastViewedDate"}
GENERATED_UNTIL = "2026"  # every generated timestamp is before 2026 (generator.END); a live change is later


@pytest.fixture(scope="module")
def org():
    with running_org(records=40, seed=21) as o:
        yield o


@pytest.fixture(autouse=True)
def reset(org):
    yield
    org.faults(**Faults().to_dict())


def auth(org: Org) -> dict:
    return {"Authorization": f"Bearer {org.token}"}


def truth(org: Org, obj: str) -> dict[str, dict]:
    lines = org.http.get(f"/__sim/objects/{obj}/records").content.splitlines()
    return {r["Id"]: r for r in map(json.loads, lines)}


def bulk_rows(org: Org, query: str) -> list[dict]:
    r = org.http.post(f"/services/data/{V}/jobs/query", headers=auth(org), json={"operation": "query", "query": query})
    assert r.status_code == 200, r.text
    wait_job(org.http, auth(org), r.json()["id"])
    page = org.http.get(f"/services/data/{V}/jobs/query/{r.json()['id']}/results", headers=auth(org))
    return list(csv.DictReader(io.StringIO(page.content.decode(), newline="")))


def expected(rec: dict) -> float | None:
    """Amount x Probability / 100 to the cent, null when an input is null: written here from the docs."""
    if rec["Amount"] is None or rec["Probability"] is None:
        return None
    return round(rec["Amount"] * rec["Probability"] / 100, 2)


def test_change_event_schemas_carry_none_of_them(org):
    for path in CAPTURED.glob("AccountChangeEvent.v*.avsc"):  # the premise: a live org's schema lacks them
        assert not SILENT & {f["name"] for f in json.loads(path.read_text())["fields"]}
    for topic in ("/data/AccountChangeEvent", "/data/ContactChangeEvent", "/data/OpportunityChangeEvent"):
        info = org.stub.GetTopic(pb.TopicRequest(topic_name=topic), metadata=org.metadata)
        names = {f["name"] for f in org.schema(info.schema_id)["fields"]}
        assert not (SILENT | {"Expected_Revenue__c"}) & names and "LastModifiedDate" in names


def test_describe_marks_them_read_only_and_the_formula_calculated(org):
    def describe(obj: str) -> dict:
        doc = org.http.get(f"/services/data/{V}/sobjects/{obj}/describe", headers=auth(org)).json()
        return {f["name"]: f for f in doc["fields"]}
    for obj in ("Account", "Contact", "Opportunity"):
        fields = describe(obj)
        assert (fields["LastActivityDate"]["type"], fields["LastViewedDate"]["type"]) == ("date", "datetime")
        assert not any(fields[n]["createable"] or fields[n]["updateable"] for n in SILENT)
    assert not SILENT & set(describe("Invoice__c"))
    formula = describe("Opportunity")["Expected_Revenue__c"]
    assert (formula["type"], formula["calculated"], formula["createable"], formula["updateable"]) == \
        ("currency", True, False, False)
    assert formula["calculatedFormula"] == "Amount * Probability" and formula["scale"] == 2


def test_the_formula_follows_its_inputs_but_is_never_in_an_event(org):
    assert all(r["Expected_Revenue__c"] == expected(r) for r in truth(org, "Opportunity").values())
    opp = org.first_ids("Opportunity", 1)[0]
    first = org.changes([{"object": "Opportunity", "type": "UPDATE", "ids": [opp],
                          "fields": {"Amount": 1234.5, "Probability": 25}}])
    second = org.changes([{"object": "Opportunity", "type": "UPDATE", "ids": [opp], "nulled": ["Probability"]}])
    one, two = events_of(org, first["replay_ids"] + second["replay_ids"])
    assert decode_bitmap(one["_schema"], one["ChangeEventHeader"]["changedFields"]) == \
        {"Amount", "Probability", "LastModifiedDate"}
    assert decode_bitmap(two["_schema"], two["ChangeEventHeader"]["changedFields"]) == {"Probability", "LastModifiedDate"}
    assert "Expected_Revenue__c" not in one and "Expected_Revenue__c" not in two
    assert truth(org, "Opportunity")[opp]["Expected_Revenue__c"] is None
    org.changes([{"object": "Opportunity", "type": "UPDATE", "ids": [opp], "fields": {"Probability": 40}}])
    assert truth(org, "Opportunity")[opp]["Expected_Revenue__c"] == 493.8
    assert bulk_rows(org, f"SELECT Id, Expected_Revenue__c FROM Opportunity WHERE Id = '{opp}'") == \
        [{"Id": opp, "Expected_Revenue__c": "493.8"}]
    rest = org.http.get(f"/services/data/{V}/query", headers=auth(org),
                        params={"q": f"SELECT Expected_Revenue__c FROM Opportunity WHERE Id = '{opp}'"}).json()
    assert rest["records"][0]["Expected_Revenue__c"] == 493.8
    r = org.http.post("/__sim/changes", json=[{"object": "Opportunity", "type": "UPDATE", "ids": [opp],
                                                "fields": {"Expected_Revenue__c": 1.0}}])
    assert r.status_code == 400


def test_a_silent_change_shows_in_every_read_and_publishes_nothing(org):
    account = org.first_ids("Account", 2)[1]
    before, stats = truth(org, "Account")[account], org.http.get("/__sim/stats").json()
    r = org.http.post("/__sim/silent-changes", json={
        "object": "Account", "ids": [account],
        "fields": {"LastViewedDate": "2026-03-04T05:06:07Z", "LastActivityDate": "2026-03-01"}})
    assert r.status_code == 200 and r.json() == {"ids": [account]}
    after, now = truth(org, "Account")[account], org.http.get("/__sim/stats").json()
    assert (after["LastViewedDate"], after["LastActivityDate"]) == ("2026-03-04T05:06:07.000Z", "2026-03-01")
    assert {k: v for k, v in after.items() if k not in SILENT} == {k: v for k, v in before.items() if k not in SILENT}
    assert (now["events_published"], now["last_replay_id"]) == (stats["events_published"], stats["last_replay_id"])
    assert now["silent_changes"] == stats["silent_changes"] + 1
    rows = bulk_rows(org, f"SELECT Id, LastViewedDate, LastActivityDate, SystemModstamp FROM Account "
                          f"WHERE Id = '{account}'")
    assert rows[0]["LastViewedDate"] == "2026-03-04T05:06:07.000Z" and rows[0]["LastActivityDate"] == "2026-03-01"
    assert rows[0]["SystemModstamp"] == before["SystemModstamp"]
    rest = org.http.get(f"/services/data/{V}/sobjects/Account/{account}", headers=auth(org)).json()
    assert rest["LastViewedDate"] == "2026-03-04T05:06:07.000+0000"
    for bad in ({"Phone": "1"}, {"Nope": "1"}):
        r = org.http.post("/__sim/silent-changes", json={"object": "Account", "ids": [account], "fields": bad})
        assert r.status_code == 400
    r = org.http.post("/__sim/changes", json=[{"object": "Account", "type": "UPDATE", "ids": [account],
                                                "fields": {"LastViewedDate": "2026-03-04T05:06:07Z"}}])
    assert r.status_code == 400  # read-only through the API: only the org changes it


def _run_creates(org: Org, n: int) -> None:
    made = org.http.get("/__sim/traffic").json()["made"]
    r = org.http.put("/__sim/traffic", json={"running": True, "rate": 2000, "mix": {"CREATE": 1},
                                              "objects": ["Account"], "transaction_size": 1, "changes": made + n})
    assert r.status_code == 200, r.text
    wait_for(lambda: org.http.get("/__sim/traffic").json()["running"] is False)


def test_traffic_touches_records_silently_only_with_the_knob_on(org):
    """The traffic only creates Accounts here, so any change to an existing record is a silent one."""
    org.faults(silent_changes="off")  # on by default, as in a real org
    before, stats = truth(org, "Account"), org.http.get("/__sim/stats").json()
    _run_creates(org, 100)
    assert {i: r for i, r in truth(org, "Account").items() if i in before} == before  # knob off: untouched
    org.faults(silent_changes="on")
    before, stats = truth(org, "Account"), org.http.get("/__sim/stats").json()
    _run_creates(org, 300)
    after, now = truth(org, "Account"), org.http.get("/__sim/stats").json()
    touched = [i for i in before if after[i] != before[i]]
    assert touched and now["silent_changes"] - stats["silent_changes"] >= len(touched)
    for i in touched:
        changed = {k for k in after[i] if after[i][k] != before[i][k]}
        assert changed and changed <= SILENT  # SystemModstamp and LastModifiedDate included: not moved
        assert max(after[i]["LastViewedDate"] or "", after[i]["LastActivityDate"] or "") > GENERATED_UNTIL
    created = now["changes"]["by_type"]["CREATE"] - stats["changes"]["by_type"].get("CREATE", 0)
    assert now["events_published"] - stats["events_published"] == created == 300  # one event per create, no more
    new = [r for i, r in after.items() if i not in before]
    assert new and all(r["LastViewedDate"] is None or r["LastViewedDate"] > GENERATED_UNTIL for r in new)
