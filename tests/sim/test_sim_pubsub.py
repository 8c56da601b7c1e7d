"""Pub/Sub API over real gRPC sockets with TLS (the simulator's certificate as root): auth, topics, flow
control, keepalive, replay presets, replay id errors, topic mismatch, duplicates, stream faults, Publish
(docs/pubsub-cdc.md §2-§4)."""

from __future__ import annotations

import io

import fastavro
import grpc
import pytest

from replicator.protocol import pubsub_api_pb2 as pb
from replicator.sim.faults import Faults
from replicator.sim.server import SimulatorThread

from .conftest import wait_for
from .pubsub_client import Follower, Org, running_org, trailer

ACCOUNTS = "/data/AccountChangeEvent"
CORRUPTED = "sfdc.platform.eventbus.grpc.subscription.fetch.replayid.corrupted"


@pytest.fixture(scope="module")
def org():
    with running_org(records=50, seed=3) as o:
        yield o


@pytest.fixture(autouse=True)
def reset(org):
    yield
    org.faults(**Faults().to_dict())


def touch_account(org: Org, phone: str, n: int = 1) -> list[str]:
    """n one-event transactions; their replay ids (hex)."""
    account = org.first_ids("Account", 1)[0]
    out = []
    for k in range(n):
        out += org.changes([{"object": "Account", "type": "UPDATE", "ids": [account],
                             "fields": {"Phone": f"{phone}-{k}"}}])["replay_ids"]
    return out


def test_auth_errors_carry_the_error_code_trailer(org):
    good = dict(org.metadata)
    cases = [
        {**good, "accesstoken": "00D!not-a-session"},
        {**good, "instanceurl": "https://elsewhere.my.salesforce.com"},
        {**good, "tenantid": "00D000000000000AAA"},
        {k: v for k, v in good.items() if k != "tenantid"},
    ]
    for metadata in cases:
        with pytest.raises(grpc.RpcError) as err:
            org.stub.GetTopic(pb.TopicRequest(topic_name=ACCOUNTS), metadata=tuple(metadata.items()))
        assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
        assert trailer(err.value) == "sfdc.platform.eventbus.grpc.service.auth.error"
        assert "rpcId: " in err.value.details()
    core = {**good, "tenantid": f"core/prod/{org.info['org_id']}"}
    assert org.stub.GetTopic(pb.TopicRequest(topic_name=ACCOUNTS), metadata=tuple(core.items())).can_subscribe


def test_expired_session_is_unauthenticated_on_subscribe(org):
    org.faults(expire_tokens_now=True)
    sub = org.subscribe(ACCOUNTS, num_requested=1)
    assert sub.done.wait(10)
    assert sub.error.code() == grpc.StatusCode.UNAUTHENTICATED
    assert trailer(sub.error) == "sfdc.platform.eventbus.grpc.service.auth.error"
    org.token = org.new_token()


def test_unknown_topic_is_not_found(org):
    for call in (lambda: org.stub.GetTopic(pb.TopicRequest(topic_name="/data/NopeChangeEvent"),
                                           metadata=org.metadata),):
        with pytest.raises(grpc.RpcError) as err:
            call()
        assert err.value.code() == grpc.StatusCode.NOT_FOUND
        assert trailer(err.value) == "sfdc.platform.eventbus.grpc.topic.not.found"
    sub = org.subscribe("/event/Nope__e", num_requested=1)
    assert sub.done.wait(10) and sub.error.code() == grpc.StatusCode.NOT_FOUND


def test_flow_control_reports_pending_and_caps_at_100(org):
    with org.subscribe(ACCOUNTS, num_requested=2) as sub:
        wait_for(lambda: org.http.get("/__sim/stats").json()["subscribers"] >= 1)
        touch_account(org, "flow", 5)
        wait_for(lambda: len(sub.events) == 2)
        assert sub.responses[-1].pending_num_requested == 0
        sub.request(150)  # capped silently at 100 outstanding (docs/pubsub-cdc.md §3)
        wait_for(lambda: len(sub.events) == 5)
        assert sub.responses[-1].pending_num_requested == 97
        assert all(r.pending_num_requested <= 100 for r in sub.responses)
        assert sub.error is None


def test_keepalive_sends_latest_replay_id_while_events_are_owed(org):
    last = touch_account(org, "keepalive")[-1]
    org.faults(keepalive_seconds=0.2)
    with org.subscribe(ACCOUNTS, num_requested=5) as sub:
        wait_for(lambda: len([r for r in sub.responses if not r.events]) >= 2)
        empty = [r for r in sub.responses if not r.events]
        assert all(r.pending_num_requested == 5 for r in empty)
        assert empty[-1].latest_replay_id.hex() == last


def test_replay_presets_earliest_latest_custom(org):
    org.faults(purge_before_now=True)
    ids = touch_account(org, "replay", 3)
    with org.subscribe(ACCOUNTS, pb.EARLIEST, num_requested=10) as sub:
        wait_for(lambda: len(sub.events) == 3)
        assert [e.replay_id.hex() for e in sub.events] == ids
        assert all(len(e.replay_id) == 10 and e.replay_id[8:] == b"\0\0" for e in sub.events)
    with org.subscribe(ACCOUNTS, pb.CUSTOM, bytes.fromhex(ids[0]), num_requested=10) as sub:
        wait_for(lambda: len(sub.events) == 2)  # starts AFTER the given id
        assert [e.replay_id.hex() for e in sub.events] == ids[1:]
    with org.subscribe(ACCOUNTS, pb.LATEST, num_requested=10) as sub:
        wait_for(lambda: org.http.get("/__sim/stats").json()["subscribers"] >= 1)
        later = touch_account(org, "latest")
        wait_for(lambda: len(sub.events) == 1)
        assert sub.events[0].replay_id.hex() == later[0]
    counter = [int(i[:16], 16) for i in ids]
    assert counter == sorted(counter)


def test_custom_replay_id_as_an_8_byte_long_is_accepted(org):
    # The Java example resumes with the integer replay id encoded as an 8-byte big-endian long
    # (CommonContext.getReplayIdFromLong); Salesforce accepts it next to the 10-byte form it sends.
    ids = touch_account(org, "long", 3)
    as_long = int(ids[0][:16], 16).to_bytes(8, "big")
    with org.subscribe(ACCOUNTS, pb.CUSTOM, as_long, num_requested=10) as sub:
        wait_for(lambda: len(sub.events) == 2)
        assert [e.replay_id.hex() for e in sub.events] == ids[1:]
        assert sub.error is None


@pytest.mark.parametrize("kind", ["malformed", "unknown", "expired"])
def test_bad_replay_id_is_invalid_argument_with_corrupted_code(org, kind):
    known = touch_account(org, kind)[0]
    replay_id = {"malformed": b"\x01\x02\x03", "unknown": (10**12).to_bytes(8, "big") + b"\0\0",
                 "expired": bytes.fromhex(known)}[kind]
    if kind == "expired":
        org.faults(purge_before_now=True)
    sub = org.subscribe(ACCOUNTS, pb.CUSTOM, replay_id, num_requested=1)
    assert sub.done.wait(10)
    assert sub.error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert trailer(sub.error) == CORRUPTED
    assert "The Replay ID validation failed." in sub.error.details()


def test_retention_seconds_expires_old_events(org):
    known = touch_account(org, "retention")[0]
    org.faults(retention_seconds=0.05)

    def expired() -> bool:
        org.faults()  # PUT /__sim/faults applies the retention window now
        return org.http.get("/__sim/stats").json()["events_retained"] == 0
    wait_for(expired)
    sub = org.subscribe(ACCOUNTS, pb.CUSTOM, bytes.fromhex(known), num_requested=1)
    assert sub.done.wait(10) and trailer(sub.error) == CORRUPTED


def test_later_request_naming_another_topic_fails(org):
    with org.subscribe(ACCOUNTS, num_requested=1) as sub:
        sub.request(1, topic="/data/ContactChangeEvent")
        assert sub.done.wait(10)
        assert sub.error.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert trailer(sub.error) == "sfdc.platform.eventbus.grpc.subscription.fetch.topic.mismatch"


def test_duplicate_delivery_repeats_the_same_replay_id(org):
    org.faults(purge_before_now=True)
    ids = touch_account(org, "dup", 2)
    org.faults(duplicate_rate=1.0)
    with org.subscribe(ACCOUNTS, pb.EARLIEST, num_requested=4) as sub:
        wait_for(lambda: len(sub.events) == 4)
        assert [e.replay_id.hex() for e in sub.events] == [ids[0], ids[0], ids[1], ids[1]]
        assert sub.events[0].event.payload == sub.events[1].event.payload


def test_duplicates_never_cost_an_event(org):
    # Duplicates must come on top of the events owed, never in their place: every published replay id
    # arrives at least once, in replay order, even when responses are full (100 owed, a backlog of 450).
    org.faults(purge_before_now=True)
    account = org.first_ids("Account", 1)[0]
    ids = org.changes([{"object": "Account", "type": "UPDATE", "ids": [account], "fields": {"Phone": f"d-{k}"}}
                       for k in range(450)])["replay_ids"]
    org.faults(duplicate_rate=0.3)
    with org.subscribe(ACCOUNTS, pb.EARLIEST, num_requested=100) as sub:
        wait_for(lambda: sub.keep_flowing(100) and sub.scanned >= ids[-1])
        received = [e.replay_id.hex() for e in sub.events]
    assert set(received) == set(ids), f"{len(set(ids) - set(received))} of {len(ids)} events never arrived"
    assert received == sorted(received)
    assert len(received) > len(ids)  # the knob did deliver duplicates


def update_events(org: Org, tag: str, n: int) -> list[str]:
    """One transaction of n events (one UPDATE item each); their replay ids (hex)."""
    account = org.first_ids("Account", 1)[0]
    return org.changes([{"object": "Account", "type": "UPDATE", "ids": [account], "fields": {"Phone": f"{tag}-{k}"}}
                        for k in range(n)])["replay_ids"]


def test_stream_cuts_lose_no_event_for_a_client_that_resubscribes(org):
    org.faults(purge_before_now=True)
    org.faults(stream_close_rate=0.3, stream_close_seconds=0.3, keepalive_seconds=0.05, keepalive_ahead=3)
    follower = Follower(org, ACCOUNTS, batch=10)
    published: list[str] = []
    try:
        for round_ in range(8):
            published += update_events(org, f"cut{round_}", 30)
            last = published[-1]
            wait_for(lambda last=last: follower.poll() and last in follower.received())
            if round_ % 2:  # let streams age past stream_close_seconds while idle, keepalives flowing
                cuts = follower.cuts
                wait_for(lambda cuts=cuts: follower.poll() and follower.cuts > cuts)
    finally:
        follower.close()
    received = follower.received()
    assert set(received) == set(published), f"{len(set(published) - set(received))} events never arrived"
    assert received == sorted(received)
    assert follower.cuts >= 4
    assert org.http.get("/__sim/stats").json()["streams_cut"] >= follower.cuts


def test_keepalive_runs_ahead_and_resuming_there_loses_nothing(org):
    org.faults(purge_before_now=True)
    delivered = touch_account(org, "ahead", 2)
    org.faults(keepalive_seconds=0.05, keepalive_ahead=5)
    with org.subscribe(ACCOUNTS, pb.EARLIEST, num_requested=10) as sub:
        wait_for(lambda: len(sub.events) == 2 and any(not r.events for r in sub.responses))
        keepalive = next(r for r in sub.responses if not r.events).latest_replay_id
    # Ahead of the last event delivered, and of every event of the org: it names no event at all.
    assert int.from_bytes(keepalive[:8], "big") >= int(delivered[-1][:16], 16) + 5
    later = touch_account(org, "after", 3)
    with org.subscribe(ACCOUNTS, pb.CUSTOM, keepalive, num_requested=10) as sub:
        wait_for(lambda: len(sub.events) == 3)
        assert [e.replay_id.hex() for e in sub.events] == later
        assert sub.error is None


def test_change_events_topic_has_every_object_with_the_same_replay_ids(org):
    org.faults(purge_before_now=True)
    contact = org.first_ids("Contact", 1)[0]
    result = org.changes([{"object": "Contact", "type": "UPDATE", "ids": [contact], "fields": {"Phone": "1"}},
                          {"object": "Account", "type": "CREATE", "fields": {"Name": "All topics"}}])
    with org.subscribe("/data/ChangeEvents", pb.EARLIEST, num_requested=10) as everything, \
            org.subscribe("/data/ContactChangeEvent", pb.EARLIEST, num_requested=10) as contacts:
        wait_for(lambda: len(everything.events) == 2 and len(contacts.events) == 1)
        assert [e.replay_id.hex() for e in everything.events] == result["replay_ids"]
        assert contacts.events[0].replay_id.hex() == result["replay_ids"][0]
        assert [org.decode(e)["ChangeEventHeader"]["entityName"] for e in everything.events] == ["Contact", "Account"]


def test_publish_platform_event_and_receive_it(org):
    org.faults(purge_before_now=True)
    topic = org.stub.GetTopic(pb.TopicRequest(topic_name="/event/Order_Ready__e"), metadata=org.metadata)
    assert topic.can_publish and topic.schema_id
    schema = fastavro.parse_schema(org.schema(topic.schema_id))
    buf = io.BytesIO()
    fastavro.schemaless_writer(buf, schema, {"CreatedDate": 1714172795000, "CreatedById": "005000000000001AAA",
                                             "Order_Id__c": "ORD-1", "Amount__c": 12.5, "Ready_At__c": 1714172795000})
    good = pb.ProducerEvent(id="corr-1", schema_id=topic.schema_id, payload=buf.getvalue())
    bad = pb.ProducerEvent(id="corr-2", schema_id=topic.schema_id, payload=b"\xff")
    response = org.stub.Publish(pb.PublishRequest(topic_name="/event/Order_Ready__e", events=[good, bad]),
                                metadata=org.metadata)
    ok, failed = response.results
    assert ok.correlation_key == "corr-1" and len(ok.replay_id) == 10 and not ok.HasField("error")
    assert failed.error.code == pb.PUBLISH
    with org.subscribe("/event/Order_Ready__e", pb.EARLIEST, num_requested=1) as sub:
        wait_for(lambda: sub.events)
        assert sub.events[0].event.id == "corr-1"
        assert org.decode(sub.events[0])["Order_Id__c"] == "ORD-1"


def test_plaintext_when_tls_is_off():
    with SimulatorThread(records=5, tls=False) as running:
        assert running.info["ca_file"] is None
        o = Org(running.info)
        try:
            topic = o.stub.GetTopic(pb.TopicRequest(topic_name="/data/Invoice__ChangeEvent"), metadata=o.metadata)
            assert topic.schema_id
        finally:
            o.close()
