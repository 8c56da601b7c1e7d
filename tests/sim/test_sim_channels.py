"""Custom channels (`/data/<Name>__chn`, their own replay ids) and generated objects (`--objects N`)."""

from __future__ import annotations

import grpc
import pytest

from replicator.protocol import pubsub_api_pb2 as pb
from replicator.sim.__main__ import build_parser

from .conftest import wait_for
from .pubsub_client import running_org, trailer

SALES = "/data/Sales__chn"


@pytest.fixture(scope="module")
def org():
    with running_org(records=40, seed=5, objects=3, object_records=25,
                     channel_members={"Sales": ["Account", "Gen002__c"]}) as o:
        yield o


def _update(org, obj: str, field: str, value: object, n: int = 1) -> list[str]:
    ids = org.first_ids(obj, n)
    return org.changes([{"type": "UPDATE", "object": obj, "ids": [i], "fields": {field: value}} for i in ids])["ids"]


def test_a_custom_channel_carries_its_members_events_with_replay_ids_of_its_own(org):
    _update(org, "Contact", "Phone", "+1 555 0100")  # not a member: not on the channel
    _update(org, "Account", "Phone", "+1 555 0101")
    _update(org, "Gen002__c", "Note__c", "on the channel")
    _update(org, "Gen001__c", "Note__c", "not on the channel")
    with org.subscribe(SALES, pb.EARLIEST, num_requested=100) as sub:  # the first test: the channel holds these
        wait_for(lambda: len(sub.events) >= 2)
        assert len(sub.events) == 2
        decoded = [org.decode(e) for e in sub.events]
        assert [d["ChangeEventHeader"]["entityName"] for d in decoded] == ["Account", "Gen002__c"]
        schemas = {e.event.schema_id for e in sub.events}
        assert len(schemas) == 2  # each event names its own entity's schema
        counters = [int.from_bytes(e.replay_id[:8], "big") for e in sub.events]
        assert counters[1] == counters[0] + 1  # the channel's own sequence: the Contact event is not in it
    org_bus = org.http.get("/__sim/stats").json()["last_replay_id"]
    assert int(org_bus[:16], 16) > counters[1]  # the org's topics numbered all four events


def test_a_channel_resumes_after_a_replay_id_of_its_own(org):
    _update(org, "Account", "Phone", "+1 555 0200")
    with org.subscribe(SALES, pb.EARLIEST, num_requested=100) as sub:
        wait_for(lambda: len(sub.events) >= 3)
        first = sub.events[2].replay_id
        assert org.decode(sub.events[2])["Phone"] == "+1 555 0200"
    _update(org, "Gen002__c", "Note__c", "after the first")
    with org.subscribe(SALES, pb.CUSTOM, first, num_requested=100) as sub:
        wait_for(lambda: sub.events)
        assert org.decode(sub.events[0])["ChangeEventHeader"]["entityName"] == "Gen002__c"


def test_get_topic_knows_channels_and_refuses_unknown_ones(org):
    info = org.stub.GetTopic(pb.TopicRequest(topic_name=SALES), metadata=org.metadata)
    assert (info.topic_name, info.can_subscribe, info.schema_id) == (SALES, True, "")
    assert org.stub.GetTopic(pb.TopicRequest(topic_name="/data/ChangeEvents"), metadata=org.metadata).can_subscribe
    with pytest.raises(grpc.RpcError) as err:
        org.stub.GetTopic(pb.TopicRequest(topic_name="/data/Nope__chn"), metadata=org.metadata)
    assert err.value.code() == grpc.StatusCode.NOT_FOUND
    assert trailer(err.value) == "sfdc.platform.eventbus.grpc.topic.not.found"


def test_channels_are_defined_at_run_time_and_select_their_members(org):
    org.http.put("/__sim/cdc", json={"objects": ["Account"]})
    try:
        r = org.http.put("/__sim/channels", json={"name": "Ops__chn", "members": ["Gen003__c", "Contact"]})
        assert r.status_code == 200, r.text
        assert r.json() == {"topic": "/data/Ops__chn", "members": ["Contact", "Gen003__c"]}
        assert set(org.http.get("/__sim/cdc").json()["objects"]) == {"Account", "Contact", "Gen003__c"}
        bad = org.http.put("/__sim/channels", json={"name": "Bad", "members": ["Nope__c"]})
        assert bad.status_code == 400 and "Nope__c" in bad.json()["error"]
        assert "/data/Bad__chn" not in org.http.get("/__sim/channels").json()
    finally:
        org.http.put("/__sim/cdc", json={"objects": ["Account", "Contact", "Opportunity", "Invoice__c",
                                                     "Gen001__c", "Gen002__c", "Gen003__c"]})


def test_generated_objects_are_described_queried_and_publish_change_events(org):
    auth = {"Authorization": f"Bearer {org.token}"}
    describe = org.http.get("/services/data/v62.0/sobjects/Gen003__c/describe/", headers=auth).json()
    assert describe["custom"] and {"Name", "Amount__c", "Status__c", "Due_Date__c"} <= {
        f["name"] for f in describe["fields"]}
    rows = org.http.get("/services/data/v62.0/query/", params={"q": "SELECT Id, Name FROM Gen003__c"},
                        headers=auth).json()
    assert rows["totalSize"] == 25
    truth = [line for line in org.http.get("/__sim/objects/Gen003__c/records").text.splitlines() if line]
    assert len(truth) == 25
    _update(org, "Gen003__c", "Count__c", 7)
    with org.subscribe("/data/Gen003__ChangeEvent", pb.EARLIEST, num_requested=10) as sub:
        wait_for(lambda: sub.events)
        assert org.decode(sub.events[0])["Count__c"] == 7


def test_traffic_spreads_over_generated_objects(org):
    r = org.http.put("/__sim/traffic", json={"objects": ["Gen001__c", "Gen002__c", "Gen003__c"], "rate": 300,
                                             "changes": 60, "running": True})
    assert r.status_code == 200, r.text
    stats = wait_for(lambda: (s := org.http.get("/__sim/stats").json())["changes"]["by_object"].keys()
                     >= {"Gen001__c", "Gen002__c", "Gen003__c"} and s)
    assert sum(stats["changes"]["by_object"].get(f"Gen00{k}__c", 0) for k in (1, 2, 3)) >= 3


def test_the_command_line_takes_channels_and_generated_objects():
    args = build_parser().parse_args(["--objects", "500", "--object-records", "10", "--channel", "Sales=Account,Contact",
                                      "--channel", "Ops=Gen001__c"])
    assert (args.objects, args.object_records) == (500, 10)
    assert dict(args.channel) == {"Sales": ["Account", "Contact"], "Ops": ["Gen001__c"]}
    with pytest.raises(SystemExit):
        build_parser().parse_args(["--channel", "Sales"])
