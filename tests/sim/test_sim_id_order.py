"""ORDER BY Id follows the order WHERE compares ids in: a keyset (SystemModstamp, Id) read page by page returns
every record of one second once, however their ids differ in case (the poller's read, docs/polling.md)."""

from __future__ import annotations

import pytest

from .conftest import V
from .pubsub_client import Org, running_org


@pytest.fixture(scope="module")
def org():
    with running_org(records=500, seed=12) as o:
        yield o


def _query(org: Org, soql: str) -> list[dict]:
    r = org.http.get(f"/services/data/{V}/queryAll", params={"q": soql},
                     headers={"Authorization": f"Bearer {org.token}"})
    assert r.status_code == 200, r.text
    return r.json()["records"]


def test_keyset_pages_over_one_second_return_every_record_once(org):
    r = org.http.post("/__sim/changes", json={"separate_transactions": True, "changes": [
        {"object": "Opportunity", "type": "CREATE", "fields": {}, "count": 20} for _ in range(3)]})
    assert r.status_code == 200, r.text
    created = {i for t in r.json()["transactions"] for i in t["ids"][0]}
    # the 60 ids differ by case alone in places (…8wAAA and …8WAAQ): a case-insensitive ORDER BY skips some
    assert len({i[:15].lower() for i in created}) < len(created)
    seen: list[str] = []
    where = "SystemModstamp >= 2026-01-01T00:00:00Z"
    while True:
        page = _query(org, f"SELECT Id, SystemModstamp FROM Opportunity WHERE {where} "
                           "ORDER BY SystemModstamp, Id LIMIT 25")
        seen += [p["Id"] for p in page]
        if len(page) < 25:
            break
        stamp, last = page[-1]["SystemModstamp"].replace(".000+0000", "Z"), page[-1]["Id"]
        where = f"SystemModstamp > {stamp} OR (SystemModstamp = {stamp} AND Id > '{last}')"
    assert len(seen) == len(set(seen))
    assert created <= set(seen)
