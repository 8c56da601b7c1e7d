"""simple-salesforce 1.12.10, unmodified, against the simulator over HTTPS (docs/bulk-rest-oauth.md §6)."""

from __future__ import annotations

import csv
import io

from simple_salesforce import Salesforce

from .conftest import V, ground_truth


def _text(v) -> str:
    if v is None:
        return ""
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, float) and v.is_integer():
        return str(int(v))
    return str(v)


def test_bulk2_query_all_equals_ground_truth(sim, client, token, monkeypatch):
    # The Bulk 2.0 download ignores a session's verify; REQUESTS_CA_BUNDLE makes the whole flow trust us
    # (docs/bulk-rest-oauth.md §6).
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", sim["ca_file"])
    sf = Salesforce(session_id=token, instance_url=sim["instance_url"], version=V[1:])
    describe = sf.Account.describe()
    fields = [f["name"] for f in describe["fields"] if f["type"] != "address"]
    soql = f"SELECT {', '.join(fields)} FROM Account"
    pages = list(sf.bulk2.Account.query_all(soql, max_records=150, wait=0))
    assert len(pages) == 4  # 600 records (deleted included: queryAll) / 150
    got = [row for page in pages for row in csv.DictReader(io.StringIO(page, newline=""))]
    truth = ground_truth(client, "Account")
    assert len(got) == len(truth)
    assert got == [{f: _text(t[f]) for f in fields} for t in truth]


def test_bulk2_download_and_rest_query(sim, client, token, monkeypatch, tmp_path):
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", sim["ca_file"])
    sf = Salesforce(session_id=token, instance_url=sim["instance_url"], version=V[1:])
    results = sf.bulk2.Contact.download("SELECT Id, LastName FROM Contact", path=str(tmp_path), wait=0)
    live = [t for t in ground_truth(client, "Contact") if not t["IsDeleted"]]
    assert sum(r["number_of_records"] for r in results) == len(live)
    rest = sf.query_all("SELECT Id, LastName FROM Contact")
    assert rest["totalSize"] == len(live) and [r["Id"] for r in rest["records"]] == [t["Id"] for t in live]
