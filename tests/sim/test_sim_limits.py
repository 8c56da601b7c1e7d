"""The org's daily allocations (replicator/sim/limits.py): REST `/limits` counts API requests and delivered
events; past the API allocation REST answers 403 REQUEST_LIMIT_EXCEEDED; past the delivery allocation Subscribe
ends (and new ones are refused) with `…subscription.limit.exceeded`; a reset restores service and the events held
back are delivered then (docs/pubsub-cdc.md §4, §9; docs/bulk-rest-oauth.md §2.1)."""

from __future__ import annotations

import grpc
import pytest

from replicator.protocol import pubsub_api_pb2 as pb

from .conftest import V, wait_for
from .pubsub_client import running_org, trailer

LIMIT = "sfdc.platform.eventbus.grpc.subscription.limit.exceeded"


@pytest.fixture
def org():
    with running_org(records=20, seed=5, api_allocation=40, event_allocation=3) as o:
        yield o


def _auth(org) -> dict:
    return {"Authorization": f"Bearer {org.token}"}


def _limit(org, name: str) -> dict:
    r = org.http.get(f"/services/data/{V}/limits", headers=_auth(org))
    assert r.status_code == 200, r.text
    return r.json()[name]


def test_api_allocation_is_counted_enforced_and_reset(org):
    first = _limit(org, "DailyApiRequests")
    assert first["Max"] == 40 and first["Remaining"] < 40
    assert _limit(org, "DailyApiRequests")["Remaining"] == first["Remaining"] - 1  # /limits counts too
    while org.http.get(f"/services/data/{V}/sobjects", headers=_auth(org)).status_code == 200:
        pass
    r = org.http.get(f"/services/data/{V}/sobjects/Account/describe", headers=_auth(org))
    assert r.status_code == 403 and r.json()[0]["errorCode"] == "REQUEST_LIMIT_EXCEEDED"
    state = org.http.get("/__sim/limits").json()
    assert state["api_used"] == 40 and state["refused_requests"] >= 2  # refused requests are not counted
    assert org.http.put("/__sim/limits", json={"reset": True}).json()["api_used"] == 0
    assert org.http.get(f"/services/data/{V}/sobjects", headers=_auth(org)).status_code == 200
    assert org.http.put("/__sim/limits", json={"api_allocation": -1}).status_code == 400
    assert org.http.put("/__sim/limits", json={"nope": 1}).status_code == 400


def test_delivery_allocation_ends_subscribe_and_nothing_is_lost(org):
    account = org.first_ids("Account", 1)[0]
    sub = org.subscribe("/data/AccountChangeEvent", preset=pb.EARLIEST, num_requested=100)
    replay_ids = []
    for k in range(5):
        replay_ids += org.changes([{"object": "Account", "type": "UPDATE", "ids": [account],
                                    "fields": {"Phone": f"555-{k}"}}])["replay_ids"]
    assert sub.done.wait(30), "the stream should end at the allocation"
    assert sub.error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED and trailer(sub.error) == LIMIT
    assert "event delivery limit" in sub.error.details()
    delivered = [e.replay_id.hex() for r in sub.responses for e in r.events]
    assert delivered == replay_ids[:3]  # exactly the allocation, in order
    assert _limit(org, "DailyDeliveredPlatformEvents") == {"Max": 3, "Remaining": 0}

    refused = org.subscribe("/data/AccountChangeEvent", preset=pb.LATEST, num_requested=1)
    assert refused.done.wait(30) and trailer(refused.error) == LIMIT  # new Subscribes are refused too

    assert org.http.put("/__sim/limits", json={"event_allocation": 100}).status_code == 200
    resumed = org.subscribe("/data/AccountChangeEvent", preset=pb.CUSTOM,
                            replay_id=bytes.fromhex(delivered[-1]), num_requested=100)
    wait_for(lambda: len([e for r in resumed.responses for e in r.events]) >= 2)
    assert [e.replay_id.hex() for r in resumed.responses for e in r.events] == replay_ids[3:]
    assert _limit(org, "DailyDeliveredPlatformEvents") == {"Max": 100, "Remaining": 95}
    resumed.close()


def test_the_monthly_entitlement_appears_with_the_add_on_and_goes_negative_without_refusing(org):
    assert "MonthlyPlatformEventsUsageEntitlement" not in org.http.get(
        f"/services/data/{V}/limits", headers=_auth(org)).json()  # no add-on: absent
    assert org.http.put("/__sim/limits", json={"monthly_entitlement": 2, "event_allocation": 100}).status_code == 200
    account = org.first_ids("Account", 1)[0]
    before = _limit(org, "MonthlyPlatformEventsUsageEntitlement")["Remaining"]
    sub = org.subscribe("/data/AccountChangeEvent", preset=pb.EARLIEST, num_requested=100)  # a new org: these 4
    for k in range(4):
        org.changes([{"object": "Account", "type": "UPDATE", "ids": [account], "fields": {"Phone": f"556-{k}"}}])
    wait_for(lambda: len([e for r in sub.responses for e in r.events]) == 4)  # delivery goes on past it
    sub.close()
    assert _limit(org, "MonthlyPlatformEventsUsageEntitlement") == {"Max": 2, "Remaining": before - 4}
    assert before - 4 < 0
    assert org.http.put("/__sim/limits", json={"reset": True}).status_code == 200  # a daily window: the month stays
    assert _limit(org, "MonthlyPlatformEventsUsageEntitlement")["Remaining"] == before - 4
    assert org.http.put("/__sim/limits", json={"monthly_entitlement": -1}).status_code == 400
