"""Bulk API 2.0 query jobs: lifecycle, result pages, resultPages, gzip, errors
(docs/bulk-rest-oauth.md §1, §7)."""

from __future__ import annotations

import csv
import gzip
import io
import ssl

import httpx
import pytest

from replicator.sim.schema import HOSTILE_FIELD
from replicator.sim.server import SimulatorThread

from .conftest import V, ground_truth, wait_for, wait_job

JOBS = f"/services/data/{V}/jobs/query"


def create(client, auth, query, operation="query", version=V, **extra):
    return client.post(f"/services/data/{version}/jobs/query",
                       json={"operation": operation, "query": query, **extra}, headers=auth)


def read_all_pages(client, auth, job_id, max_records=None, version=V):
    locator, pages = None, []
    while True:
        params = {}
        if locator:
            params["locator"] = locator
        if max_records:
            params["maxRecords"] = max_records
        r = client.get(f"/services/data/{version}/jobs/query/{job_id}/results", params=params, headers=auth)
        assert r.status_code == 200, r.text
        assert r.headers["Content-Type"] == "text/csv; charset=UTF-8"
        rows = list(csv.reader(io.StringIO(r.content.decode(), newline="")))
        assert len(rows) - 1 == int(r.headers["Sforce-NumberOfRecords"])
        pages.append((r.headers["Sforce-Locator"], rows))
        locator = r.headers["Sforce-Locator"]
        if locator == "null":
            return pages


def test_job_lifecycle_and_paging_matches_ground_truth(client, auth):
    fields = ["Id", "Name", "Description", "AnnualRevenue", "NumberOfEmployees", "Active__c", "CreatedDate",
              "BillingLatitude", "Regions__c"]
    r = create(client, auth, f"SELECT {', '.join(fields)} FROM Account")
    assert r.status_code == 200
    job = r.json()
    assert job["state"] == "UploadComplete" and job["id"].startswith("750") and job["object"] == "Account"
    assert job["apiVersion"] == 62.0 and job["contentType"] == "CSV" and job["concurrencyMode"] == "Parallel"
    info = wait_job(client, auth, job["id"])
    assert info["state"] == "JobComplete" and info["jobType"] == "V2Query"
    for key in ("numberRecordsProcessed", "retries", "totalProcessingTime", "isPkChunkingSupported"):
        assert key in info
    pages = read_all_pages(client, auth, job["id"], max_records=100)
    assert [loc for loc, _ in pages][-1] == "null"
    assert all(rows[0] == fields for _, rows in pages)  # every page carries the header, SELECT order
    records = [row for _, rows in pages for row in rows[1:]]
    truth = [t for t in ground_truth(client, "Account") if not t["IsDeleted"]]
    assert len(records) == len(truth) == info["numberRecordsProcessed"]

    def norm(v):
        if v is None:
            return ""
        if isinstance(v, bool):
            return "true" if v else "false"
        if isinstance(v, float) and v.is_integer():
            return str(int(v))
        return str(v)
    assert records == [[norm(t[f]) for f in fields] for t in truth]
    # Locators are stable and re-fetchable (docs/bulk-rest-oauth.md §1.5).
    again = client.get(f"{JOBS}/{job['id']}/results", params={"locator": pages[0][0], "maxRecords": 100},
                       headers=auth)
    assert list(csv.reader(io.StringIO(again.text, newline=""))) == pages[1][1]
    jobs = {j["id"]: j for j in client.get("/__sim/jobs").json()}
    assert jobs[job["id"]]["results_requests"][pages[0][0]] == 2


def test_every_value_quoted_and_nulls_are_empty_quotes(client, auth):
    job = create(client, auth, "SELECT Id, FirstName, Notes__c FROM Contact").json()
    wait_job(client, auth, job["id"])
    body = client.get(f"{JOBS}/{job['id']}/results", params={"maxRecords": 50}, headers=auth).content.decode()
    assert body.startswith('"Id","FirstName","Notes__c"\n')
    assert ',""' in body  # a null


def test_query_all_includes_deleted_and_delimiters(client, auth):
    job = create(client, auth, "SELECT Id, IsDeleted FROM Opportunity", operation="queryAll",
                 columnDelimiter="PIPE", lineEnding="CRLF").json()
    assert job["columnDelimiter"] == "PIPE" and job["lineEnding"] == "CRLF"
    wait_job(client, auth, job["id"])
    text = client.get(f"{JOBS}/{job['id']}/results", params={"maxRecords": 10000}, headers=auth).text
    rows = list(csv.reader(io.StringIO(text, newline=""), delimiter="|"))
    assert text.startswith('"Id"|"IsDeleted"\r\n')
    counts = client.get("/__sim/counts").json()["Opportunity"]
    assert len(rows) - 1 == counts["total"] and sum(r[1] == "true" for r in rows[1:]) == counts["deleted"]


def test_result_pages_in_batches_of_five(client, auth):
    job = create(client, auth, "SELECT Id FROM Invoice__c", operation="queryAll").json()
    wait_job(client, auth, job["id"])
    url = f"{JOBS}/{job['id']}/resultPages?maxRecords=40"
    urls, calls = [], 0
    while url:
        body = client.get(url, headers=auth).json()
        calls += 1
        assert len(body["resultPages"]) <= 5
        urls += [p["resultUrl"] for p in body["resultPages"]]
        url = body["nextRecordsUrl"]
        assert body["done"] == (url is None)
    assert len(urls) == 15 and calls == 3  # 600 records / 40 per page
    assert all("locator=" in u and "maxRecords=40" in u for u in urls)
    total = 0
    for u in urls:  # each resultUrl is an ordinary results call (docs/bulk-rest-oauth.md §1.6)
        r = client.get(u, headers=auth)
        total += int(r.headers["Sforce-NumberOfRecords"])
    assert total == 600
    assert client.get(f"/services/data/v57.0/jobs/query/{job['id']}/resultPages", headers=auth).status_code == 404


def test_gzip_when_asked(sim, client, auth):
    job = create(client, auth, "SELECT Id, Name FROM Account").json()
    wait_job(client, auth, job["id"])
    raw = httpx.get(f"{sim['instance_url']}{JOBS}/{job['id']}/results", headers={**auth, "Accept-Encoding": "gzip"},
                    verify=ssl.create_default_context(cafile=sim["ca_file"]))
    assert raw.headers["Content-Encoding"] == "gzip"
    plain = client.get(f"{JOBS}/{job['id']}/results", headers={**auth, "Accept-Encoding": "identity"})
    assert "Content-Encoding" not in plain.headers
    assert raw.content == plain.content  # httpx decoded the gzip body
    with httpx.stream("GET", f"{sim['instance_url']}{JOBS}/{job['id']}/results",
                      headers={**auth, "Accept-Encoding": "gzip"},
                      verify=ssl.create_default_context(cafile=sim["ca_file"])) as r:
        assert gzip.decompress(b"".join(r.iter_raw())) == plain.content


def test_412_before_completion_then_abort_and_delete_rules(client, auth):
    client.put("/__sim/faults", json={"hold_jobs": True})
    job = create(client, auth, "SELECT Id FROM Account").json()
    r = client.get(f"{JOBS}/{job['id']}/results", headers=auth)
    assert r.status_code == 412
    assert r.json()[0]["errorCode"] == "JOB_NOT_COMPLETE"
    assert "Current status: UPLOAD_COMPLETE" in r.json()[0]["message"]
    r = client.delete(f"{JOBS}/{job['id']}", headers=auth)
    assert r.status_code == 400 and r.json()[0]["errorCode"] == "API_ERROR"
    r = client.patch(f"{JOBS}/{job['id']}", json={"state": "Aborted"}, headers=auth)
    assert r.status_code == 200 and r.json()["state"] == "Aborted"
    assert client.patch(f"{JOBS}/{job['id']}", json={"state": "Aborted"}, headers=auth).status_code == 400
    assert client.delete(f"{JOBS}/{job['id']}", headers=auth).status_code == 204
    assert client.get(f"{JOBS}/{job['id']}", headers=auth).status_code == 404
    client.put("/__sim/faults", json={"hold_jobs": False})


def test_409_on_version_mismatch(client, auth):
    job = create(client, auth, "SELECT Id FROM Account", version="v60.0").json()
    wait_job(client, auth, job["id"], version="v60.0")
    r = client.get(f"{JOBS}/{job['id']}/results", headers=auth)
    assert r.status_code == 409
    assert client.get(f"/services/data/v60.0/jobs/query/{job['id']}/results", headers=auth).status_code == 200


@pytest.mark.parametrize("query", [
    "SELECT Industry, COUNT(Id) FROM Account GROUP BY Industry",
    "SELECT COUNT() FROM Account",
    "SELECT Id FROM Account LIMIT 5 OFFSET 10",
    "SELECT TYPEOF What WHEN Account THEN Name END FROM Account",
    "SELECT Id, (SELECT Id FROM Contacts) FROM Account",
    "SELECT FIELDS(ALL) FROM Account LIMIT 200",
])
def test_bulk_rejections(client, auth, query):
    r = create(client, auth, query)
    assert r.status_code == 400
    assert r.json()[0]["errorCode"] == "FUNCTIONALITY_NOT_ENABLED"


def test_compound_field_rejected_with_documented_text(client, auth):
    r = create(client, auth, "SELECT Id, BillingAddress FROM Account")
    assert r.status_code == 400
    assert r.json() == [{"message": "Selecting compound data not supported in Bulk Query",
                         "errorCode": "FUNCTIONALITY_NOT_ENABLED"}]
    r = create(client, auth, "SELECT Id, Bogus FROM Account")
    assert r.status_code == 400 and r.json()[0]["errorCode"] == "INVALID_FIELD"


def test_failed_jobs_and_malformed_rows_faults(client, auth):
    client.put("/__sim/faults", json={"fail_jobs": 1, "malformed_rows": 3})
    failed = create(client, auth, "SELECT Id FROM Account").json()
    assert wait_job(client, auth, failed["id"])["state"] == "Failed"
    job = create(client, auth, "SELECT Id, Name FROM Account").json()
    wait_job(client, auth, job["id"])
    rows = list(csv.reader(io.StringIO(client.get(f"{JOBS}/{job['id']}/results", headers=auth).text,
                                       newline="")))
    assert sum(len(r) == 1 for r in rows[1:]) == 3
    ok = create(client, auth, "SELECT Id, Name FROM Account").json()
    wait_job(client, auth, ok["id"])
    rows = list(csv.reader(io.StringIO(client.get(f"{JOBS}/{ok['id']}/results", headers=auth).text, newline="")))
    assert all(len(r) == 2 for r in rows)


def test_list_jobs(client, auth):
    job = create(client, auth, "SELECT Id FROM Account").json()
    body = client.get(JOBS, headers=auth).json()
    assert body["done"] is True and job["id"] in {j["id"] for j in body["records"]}
    wait_job(client, auth, job["id"])


def test_hostile_field_is_selectable():
    with SimulatorThread(records=20, tls=False, hostile_field=True) as running:
        sim = running.info
        with httpx.Client(base_url=sim["instance_url"]) as client:
            token = client.post("/services/oauth2/token", data={
                "grant_type": "client_credentials", "client_id": sim["client_id"],
                "client_secret": sim["client_secret"]}).json()["access_token"]
            auth = {"Authorization": f"Bearer {token}"}
            fields = client.get(f"/services/data/{V}/sobjects/Account/describe", headers=auth).json()["fields"]
            assert HOSTILE_FIELD in {f["name"] for f in fields}
            job = create(client, auth, f"SELECT Id, {HOSTILE_FIELD} FROM Account").json()
            wait_for(lambda: client.get(f"{JOBS}/{job['id']}", headers=auth).json()["state"] == "JobComplete")
            text = client.get(f"{JOBS}/{job['id']}/results", headers=auth).text
            assert text.startswith('"Id","Bad""Name;DROP__c"\n')
