"""SalesforceClient against the fake org: auth header, 401 refresh, retries, error mapping, REST calls."""

from __future__ import annotations

import asyncio

import httpx
import orjson
import pytest
from sf_fakes import INSTANCE, SECRET, json_response

from replicator.model import ApiLimitError, AuthError, TerminalError, TransientError

V = "/services/data/v62.0"


async def test_request_logs_in_joins_paths_and_tracks_usage(client, org):
    org.route("GET", f"{V}/limits", json_response(200, {"DailyApiRequests": {"Max": 15000, "Remaining": 14990}}))
    org.limit_info = "api-usage=10/15000; api-bursts=1/750"
    assert client.instance_url is None
    limits = await client.limits()
    assert limits["DailyApiRequests"]["Max"] == 15000
    assert client.instance_url == INSTANCE
    assert client.api_usage == (10, 15000)
    assert client.call_count == 1
    (call,) = org.calls
    assert str(call.url) == f"{INSTANCE}{V}/limits"
    assert call.headers["Authorization"].startswith("Bearer tok-")


async def test_expired_session_refreshes_once_and_retries(client, org):
    org.route("GET", f"{V}/limits", json_response(200, {}))
    await client.limits()
    org.expire_all()
    await client.limits()
    assert org.logins == 2
    assert len(org.calls) == 3  # ok, 401, ok


async def test_second_401_after_new_login_is_auth_error(client, org):
    org.route(
        "GET", f"{V}/limits",
        json_response(401, [{"errorCode": "INVALID_SESSION_ID", "message": "This session is not valid for use with the REST API"}]),
    )
    with pytest.raises(AuthError) as info:
        await client.limits()
    assert org.logins == 2
    assert "tok-" not in str(info.value) and SECRET not in str(info.value)


async def test_concurrent_401s_cause_one_new_login(client, org):
    org.route("GET", f"{V}/limits", json_response(200, {}))
    await client.limits()
    org.expire_all()
    await asyncio.gather(*(client.limits() for _ in range(8)))
    assert org.logins == 2


async def test_transient_statuses_are_retried(client, org):
    org.route(
        "GET", f"{V}/limits",
        json_response(503, [{"errorCode": "SERVER_UNAVAILABLE", "message": "maintenance"}]),
        httpx.Response(420, text="We are setting things up"),
        json_response(200, {"ok": True}),
    )
    assert await client.limits() == {"ok": True}
    assert len(org.calls) == 3


async def test_transient_errors_give_up_after_the_attempts(client, org):
    org.route("GET", f"{V}/limits", json_response(500, [{"errorCode": "UNKNOWN_EXCEPTION", "message": "x"}]))
    with pytest.raises(TransientError):
        await client.limits()
    assert len(org.calls) == 3  # retry_attempts=3


async def test_network_errors_are_retried_and_mapped(client, org):
    failures = iter([httpx.ReadTimeout("slow"), httpx.ConnectError("refused")])

    def flaky(request):
        exc = next(failures, None)
        if exc is not None:
            raise exc
        return json_response(200, {"ok": 1})

    org.route("GET", f"{V}/limits", flaky)
    assert await client.limits() == {"ok": 1}


async def test_400_is_never_retried(client, org):
    org.route("GET", f"{V}/query", json_response(400, [{"errorCode": "MALFORMED_QUERY", "message": "unexpected token"}]))
    with pytest.raises(TerminalError) as info:
        [r async for r in client.query("SELEC Id FROM Account")]
    assert info.value.code == "MALFORMED_QUERY" and not isinstance(info.value, TransientError)
    assert len(org.calls) == 1


async def test_request_limit_exceeded_is_api_limit_error(creds, org):
    from replicator.salesforce.client import SalesforceClient

    org.route("GET", f"{V}/limits", json_response(403, [{"errorCode": "REQUEST_LIMIT_EXCEEDED", "message": "TotalRequests Limit exceeded."}]))
    async with SalesforceClient(creds, transport=httpx.MockTransport(org.handler), retry_attempts=1) as sf:
        with pytest.raises(ApiLimitError):
            await sf.limits()


async def test_token_is_not_sent_to_another_host(client, org):
    org.route("GET", f"{V}/limits", json_response(200, {}))
    await client.limits()
    with pytest.raises(TerminalError) as info:
        await client.request("GET", "https://evil.example.test/services/data/")
    assert info.value.code == "FOREIGN_URL"
    assert all(c.url.host == "org.example.test" for c in org.calls)


async def test_query_follows_next_records_url_and_strips_attributes(client, org):
    def first(request):
        assert request.url.params["q"] == "SELECT Id, Owner.Name FROM Account"
        return json_response(200, {
            "totalSize": 3, "done": False, "nextRecordsUrl": f"{V}/query/01g-2",
            "records": [
                {"attributes": {"type": "Account"}, "Id": "001A", "Owner": {"attributes": {"type": "User"}, "Name": "Ann"}},
                {"attributes": {"type": "Account"}, "Id": "001B", "Owner": None},
            ],
        })

    org.route("GET", f"{V}/queryAll", first)
    org.route("GET", f"{V}/query/01g-2", json_response(200, {
        "totalSize": 3, "done": True, "records": [{"attributes": {"type": "Account"}, "Id": "001C", "Owner": None}],
    }))
    records = [r async for r in client.query("SELECT Id, Owner.Name FROM Account", all_rows=True)]
    assert records == [{"Id": "001A", "Owner": {"Name": "Ann"}}, {"Id": "001B", "Owner": None},
                       {"Id": "001C", "Owner": None}]


async def test_retrieve_batches_by_2000_and_keeps_order(client, org):
    bodies = []

    def collection(request):
        body = orjson.loads(request.content)
        bodies.append(body)
        return json_response(200, [
            None if i.endswith("X") else {"attributes": {"type": "Account"}, "Id": i, "Name": f"n{i}"}
            for i in body["ids"]
        ])

    org.route("POST", f"{V}/composite/sobjects/Account", collection)
    ids = [f"001{n:012d}" for n in range(4500)]
    ids[2] = "001unknownX"
    out = await client.retrieve("Account", ids, ["Id", "Name"])
    assert [len(b["ids"]) for b in bodies] == [2000, 2000, 500]
    assert bodies[0]["fields"] == ["Id", "Name"]
    assert out[2] is None
    assert [r["Id"] for r in out if r] == [i for i in ids if not i.endswith("X")]
    assert "attributes" not in out[0]
    assert await client.retrieve("Account", [], ["Id"]) == []


async def test_describe_maps_fields(client, org):
    org.route("GET", f"{V}/sobjects/Account/describe/", json_response(200, {
        "name": "Account", "label": "Account", "keyPrefix": "001", "custom": False, "queryable": True,
        "replicateable": True,
        "fields": [
            {"name": "Id", "type": "id", "label": "Account ID", "length": 18, "nillable": False, "idLookup": True,
             "unique": False, "externalId": False, "referenceTo": [], "relationshipName": None},
            {"name": "BillingCity", "type": "string", "length": 40, "nillable": True,
             "compoundFieldName": "BillingAddress"},
            {"name": "AnnualRevenue", "type": "currency", "precision": 18, "scale": 0},
            {"name": "OwnerId", "type": "reference", "referenceTo": ["User"], "relationshipName": "Owner"},
            {"name": "Ext__c", "type": "string", "externalId": True, "unique": True, "calculated": False,
             "extraTypeInfo": None},
        ],
    }))
    d = await client.describe("Account")
    assert d.name == "Account" and d.key_prefix == "001" and not d.custom
    assert [f.name for f in d.fields] == ["Id", "BillingCity", "AnnualRevenue", "OwnerId", "Ext__c"]
    assert d.field("id").id_lookup and not d.field("Id").nillable and d.field("Id").length == 18
    assert d.field("BillingCity").compound_field_name == "BillingAddress"
    assert (d.field("AnnualRevenue").precision, d.field("AnnualRevenue").scale) == (18, 0)
    assert d.field("OwnerId").reference_to == ("User",) and d.field("OwnerId").relationship_name == "Owner"
    assert d.field("Ext__c").external_id and d.field("Ext__c").unique


async def test_versions_and_describe_global(client, org):
    org.route("GET", "/services/data/", json_response(200, [{"label": "Winter '25", "url": f"{V}", "version": "62.0"}]))
    org.route("GET", f"{V}/sobjects/", json_response(200, {"encoding": "UTF-8", "sobjects": [{"name": "Account"}]}))
    assert (await client.versions())[0]["version"] == "62.0"
    assert await client.describe_global() == [{"name": "Account"}]


async def test_stream_maps_errors_raised_while_reading(client, org):
    org.route("GET", f"{V}/limits", json_response(200, {}))
    with pytest.raises(TransientError):
        async with client.stream("GET", f"{V}/limits"):
            raise httpx.ReadError("peer reset")


async def test_logs_never_contain_the_token(client, org, capsys):
    import structlog

    org.route("GET", f"{V}/limits", json_response(500, [{"errorCode": "X", "message": "y"}]), json_response(200, {}))
    with structlog.testing.capture_logs() as logs:
        await client.limits()
    assert logs and "tok-" not in repr(logs) and SECRET not in repr(logs)


def test_unreadable_ca_file_is_a_config_error(creds, tmp_path):
    from replicator.model import ConfigError
    from replicator.salesforce.client import SalesforceClient

    with pytest.raises(ConfigError) as info:
        SalesforceClient(creds, ca_file=str(tmp_path / "missing.pem"))
    assert info.value.code == "ca_file"
