"""REST: versions, describe, query/queryAll paging, SOQL over HTTP, collections retrieve, limits
(docs/bulk-rest-oauth.md §3)."""

from __future__ import annotations

from .conftest import RECORDS, V, ground_truth


def test_versions_need_no_auth_and_carry_no_limit_header(client):
    r = client.get("/services/data/")
    assert r.status_code == 200 and "Sforce-Limit-Info" not in r.headers
    versions = {v["version"] for v in r.json()}
    assert {f"{n}.0" for n in range(47, 68)} <= versions
    assert all(v["label"] and v["url"].startswith("/services/data/v") for v in r.json())


def test_describe_global_and_describe(client, auth):
    r = client.get(f"/services/data/{V}/sobjects/", headers=auth)
    assert r.status_code == 200 and r.headers["Sforce-Limit-Info"].startswith("api-usage=")
    names = {o["name"]: o for o in r.json()["sobjects"]}
    assert {"Account", "Contact", "Opportunity", "Invoice__c"} <= set(names)
    assert names["Invoice__c"]["custom"] and names["Account"]["keyPrefix"] == "001"
    for suffix in ("describe", "describe/"):
        d = client.get(f"/services/data/{V}/sobjects/Account/{suffix}", headers=auth)
        assert d.status_code == 200
    fields = {f["name"]: f for f in d.json()["fields"]}
    assert fields["BillingAddress"]["type"] == "address"
    assert fields["BillingCity"]["compoundFieldName"] == "BillingAddress"
    for key in ("name", "type", "soapType", "length", "byteLength", "digits", "precision", "scale", "nillable",
                "externalId", "unique", "idLookup", "calculated", "compoundFieldName", "referenceTo",
                "relationshipName", "label", "custom", "createable", "updateable", "filterable",
                "picklistValues", "extraTypeInfo"):
        assert key in fields["Name"]
    contact = client.get(f"/services/data/{V}/sobjects/Contact/describe", headers=auth).json()
    acct = next(f for f in contact["fields"] if f["name"] == "AccountId")
    assert acct["referenceTo"] == ["Account"] and acct["relationshipName"] == "Account"
    r = client.get(f"/services/data/{V}/sobjects/Nope/describe", headers=auth)
    assert r.status_code == 404 and r.json()[0]["errorCode"] == "NOT_FOUND"


def _collect(client, auth, first_url, params=None, headers=None):
    r = client.get(first_url, params=params, headers={**auth, **(headers or {})})
    assert r.status_code == 200, r.text
    body = r.json()
    pages = [body]
    while not body["done"]:
        r = client.get(body["nextRecordsUrl"], headers={**auth, **(headers or {})})
        body = r.json()
        pages.append(body)
    return pages


def test_query_and_query_all_paging(client, auth):
    truth = ground_truth(client, "Account")
    live = [t for t in truth if not t["IsDeleted"]]
    pages = _collect(client, auth, f"/services/data/{V}/query", {"q": "SELECT Id, Name FROM Account"},
                     {"Sforce-Query-Options": "batchSize=200"})
    assert len(pages) == -(-len(live) // 200) and all(len(p["records"]) <= 200 for p in pages)
    records = [r for p in pages for r in p["records"]]
    assert [r["Id"] for r in records] == [t["Id"] for t in live]
    assert pages[0]["totalSize"] == len(live)
    assert records[0]["attributes"] == {"type": "Account",
                                        "url": f"/services/data/{V}/sobjects/Account/{records[0]['Id']}"}
    everything = _collect(client, auth, f"/services/data/{V}/queryAll",
                          {"q": "SELECT Id, IsDeleted, CreatedDate FROM Account"})
    rows = [r for p in everything for r in p["records"]]
    assert len(rows) == RECORDS and any(r["IsDeleted"] for r in rows)
    assert rows[0]["CreatedDate"].endswith(".000+0000")


def test_soql_where_in_order_limit_over_http(client, auth):
    q = ("SELECT Id, Industry, AnnualRevenue FROM Account WHERE Industry IN ('Banking','Energy') "
         "AND (AnnualRevenue > 1000 OR AnnualRevenue = null) ORDER BY AnnualRevenue DESC LIMIT 25")
    rows = client.get(f"/services/data/{V}/query", params={"q": q}, headers=auth).json()["records"]
    assert len(rows) == 25 and all(r["Industry"] in ("Banking", "Energy") for r in rows)
    revenues = [r["AnnualRevenue"] for r in rows if r["AnnualRevenue"] is not None]
    assert revenues == sorted(revenues, reverse=True)


def test_query_errors(client, auth):
    r = client.get(f"/services/data/{V}/query", params={"q": "SELECT Id, Nope FROM Account"}, headers=auth)
    assert r.status_code == 400 and r.json()[0]["errorCode"] == "INVALID_FIELD"
    assert "No such column 'Nope'" in r.json()[0]["message"]
    r = client.get(f"/services/data/{V}/query", params={"q": "SELECT Id FROM"}, headers=auth)
    assert r.status_code == 400 and r.json()[0]["errorCode"] == "MALFORMED_QUERY"


def test_collections_retrieve_get_and_post(client, auth):
    truth = [t for t in ground_truth(client, "Contact") if not t["IsDeleted"]]
    ids = [truth[0]["Id"], "003000000000000AAA", truth[3]["Id"]]
    r = client.get(f"/services/data/{V}/composite/sobjects/Contact",
                   params={"ids": ",".join(ids), "fields": "Id,LastName,Birthdate"}, headers=auth)
    assert r.status_code == 200
    got = r.json()
    assert got[1] is None
    assert got[0]["Id"] == ids[0] and got[0]["LastName"] == truth[0]["LastName"]
    assert got[2]["Birthdate"] == truth[3]["Birthdate"]
    r = client.post(f"/services/data/{V}/composite/sobjects/Contact",
                    json={"ids": ids + ["junk"], "fields": ["Id", "Email"]}, headers=auth)
    assert [x and x["Id"] for x in r.json()] == [ids[0], None, ids[2], None]
    r = client.post(f"/services/data/{V}/composite/sobjects/Contact",
                    json={"ids": ids, "fields": ["Nope"]}, headers=auth)
    assert r.status_code == 400 and r.json()[0]["errorCode"] == "INVALID_FIELD"
    r = client.post(f"/services/data/{V}/composite/sobjects/Contact",
                    json={"ids": ids * 700, "fields": ["Id"]}, headers=auth)
    assert r.status_code == 400


def test_limits_and_usage_counter(client, auth):
    first = client.get(f"/services/data/{V}/limits", headers=auth)
    second = client.get(f"/services/data/{V}/limits", headers=auth)
    body = second.json()
    assert {"DailyApiRequests", "DailyBulkV2QueryJobs"} <= set(body)
    assert body["DailyApiRequests"]["Max"] - body["DailyApiRequests"]["Remaining"] >= 2

    def used(r):
        return int(r.headers["Sforce-Limit-Info"].split("=")[1].split("/")[0])
    assert used(second) == used(first) + 1


def test_fault_knobs_apply_to_salesforce_endpoints_only(client, auth):
    assert client.put("/__sim/faults", json={"error_503_rate": 1.0}).status_code == 200
    r = client.get(f"/services/data/{V}/limits", headers=auth)
    assert r.status_code == 503 and isinstance(r.json(), list)
    assert client.get("/__sim/counts").status_code == 200
    client.put("/__sim/faults", json={"error_503_rate": 0.0, "limit_exceeded_rate": 1.0})
    r = client.get(f"/services/data/{V}/limits", headers=auth)
    assert r.status_code == 403 and r.json()[0]["errorCode"] == "REQUEST_LIMIT_EXCEEDED"
    client.put("/__sim/faults", json={"limit_exceeded_rate": 0.0, "error_500_rate": 1.0})
    assert client.get(f"/services/data/{V}/limits", headers=auth).status_code == 500
    assert client.put("/__sim/faults", json={"no_such_knob": 1}).status_code == 400


def test_admin_counts_and_truth(client):
    counts = client.get("/__sim/counts").json()
    truth = ground_truth(client, "Invoice__c")
    assert counts["Invoice__c"] == {"total": len(truth), "deleted": sum(t["IsDeleted"] for t in truth)}
    assert "BillingAddress" not in ground_truth(client, "Account")[0]
    info = client.get("/__sim/info").json()
    assert {"instance_url", "client_id", "client_secret", "org_id", "ca_file", "token_url", "api_version"} <= set(info)
