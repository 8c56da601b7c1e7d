"""`replicator sim --orgs 2`: one process, two orgs on real sockets (HTTPS and gRPC with TLS), each with its own
credentials, org id, record Ids and Pub/Sub service (replicator/sim/server.py org_options, ids.py org_pod)."""

from __future__ import annotations

import io
import json
import queue
import ssl
import threading
import time

import fastavro
import grpc
import httpx
import pytest

from replicator.protocol import pubsub_api_pb2 as pb
from replicator.protocol import pubsub_api_pb2_grpc as pb_grpc
from replicator.sim.process import start_sim_process, stop_sim_process
from replicator.sim.server import DEMO_CLIENT_ID, DEMO_CLIENT_SECRET

pytestmark = pytest.mark.slow  # a `replicator sim` subprocess

V = "v62.0"


@pytest.fixture(scope="module")
def orgs():
    proc, infos = start_sim_process("--records", "40", "--seed", "5", "--keepalive-seconds", "0.2", orgs=2)
    try:
        yield infos
    finally:
        assert stop_sim_process(proc) == 0


def _http(info: dict) -> httpx.Client:
    return httpx.Client(base_url=info["instance_url"], verify=ssl.create_default_context(cafile=info["ca_file"]),
                        timeout=30)


def _token(info: dict, client_id: str, client_secret: str) -> httpx.Response:
    with _http(info) as http:
        return http.post("/services/oauth2/token", data={"grant_type": "client_credentials", "client_id": client_id,
                                                         "client_secret": client_secret})


def _records(info: dict, obj: str) -> list[dict]:
    with _http(info) as http:
        r = http.get(f"/__sim/objects/{obj}/records")
    assert r.status_code == 200, r.text
    return [json.loads(line) for line in r.content.splitlines() if line]


def test_one_ready_line_per_org_each_its_own_ports_ids_and_credentials(orgs):
    one, two = orgs
    assert [one["org"], two["org"]] == ["org1", "org2"]
    assert one["client_id"] == DEMO_CLIENT_ID and one["client_secret"] == DEMO_CLIENT_SECRET  # org 1's as today
    assert (two["client_id"], two["client_secret"]) == (DEMO_CLIENT_ID + "-org2", DEMO_CLIENT_SECRET + "-org2")
    assert one["org_id"] != two["org_id"] and one["tenant_id"] == one["org_id"] and two["tenant_id"] == two["org_id"]
    assert all(info["org_id"].startswith("00D") and len(info["org_id"]) == 18 for info in orgs)
    assert one["instance_url"] != two["instance_url"] and one["pubsub_endpoint"] != two["pubsub_endpoint"]
    assert (one["seed"], two["seed"]) == (5, 6)
    with _http(two) as http:  # the org id the org reports is its ready line's
        assert http.get("/__sim/info").json()["org_id"] == two["org_id"]


def test_oauth_takes_each_orgs_own_credentials_only(orgs):
    one, two = orgs
    for me, other in ((one, two), (two, one)):
        r = _token(me, me["client_id"], me["client_secret"])
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["id"].split("/")[-2] == me["org_id"] and body["instance_url"] == me["instance_url"]
        assert body["access_token"].startswith(me["org_id"][:15] + "!")
        refused = _token(me, me["client_id"], other["client_secret"])  # the other org's secret
        assert refused.status_code == 400 and refused.json()["error"] == "invalid_client", refused.text
        refused = _token(me, other["client_id"], other["client_secret"])  # the other org's connected app
        assert refused.status_code == 400 and refused.json()["error"] == "invalid_client_id", refused.text
        # a session of one org is no session of the other
        with _http(other) as http:
            r = http.get(f"/services/data/{V}/sobjects/", headers={"Authorization": f"Bearer {body['access_token']}"})
        assert r.status_code == 401, r.text


def test_the_orgs_records_have_disjoint_ids(orgs):
    one, two = orgs
    for obj in ("Account", "Contact", "Invoice__c"):
        ids_one = {r["Id"] for r in _records(one, obj)}
        ids_two = {r["Id"] for r in _records(two, obj)}
        assert len(ids_one) == len(ids_two) == 40
        assert not ids_one & ids_two, obj
        assert not {i[:15] for i in ids_one} & {i[:15] for i in ids_two}  # case-sensitive 15-character form too
    # an org's references point at its own records
    accounts_two = {r["Id"] for r in _records(two, "Account")}
    references = {r["AccountId"] for r in _records(two, "Contact") if r["AccountId"]}
    assert references and references <= accounts_two
    # one org does not know the other's Ids
    account = next(iter(accounts_two))
    token = _token(one, one["client_id"], one["client_secret"]).json()["access_token"]
    with _http(one) as http:
        r = http.get(f"/services/data/{V}/sobjects/Account/{account}", headers={"Authorization": f"Bearer {token}"})
    assert r.status_code == 404, r.text
    token = _token(two, two["client_id"], two["client_secret"]).json()["access_token"]
    with _http(two) as http:
        r = http.get(f"/services/data/{V}/sobjects/Account/{account}", headers={"Authorization": f"Bearer {token}"})
    assert r.status_code == 200 and r.json()["Id"] == account, r.text


def _first_event(info: dict, token: str, topic: str, deadline: float) -> tuple[pb.ConsumerEvent, dict]:
    """Subscribe EARLIEST to `topic` of the org and return its first event, decoded, before the deadline."""
    with open(info["ca_file"], "rb") as f:
        channel = grpc.secure_channel(info["pubsub_endpoint"], grpc.ssl_channel_credentials(f.read()))
    stub = pb_grpc.PubSubStub(channel)
    metadata = (("accesstoken", token), ("instanceurl", info["instance_url"]), ("tenantid", info["org_id"]))
    requests: queue.Queue = queue.Queue()
    requests.put(pb.FetchRequest(topic_name=topic, replay_preset=pb.EARLIEST, num_requested=10))

    def feed():
        while (request := requests.get()) is not None:
            yield request

    call = stub.Subscribe(feed(), metadata=metadata, timeout=max(deadline - time.monotonic(), 1))
    found: list = []
    done = threading.Event()

    def collect():
        try:
            for response in call:
                if response.events:
                    found.append(response.events[0])
                    return
        except grpc.RpcError as exc:
            found.append(exc)
        finally:
            done.set()

    threading.Thread(target=collect, daemon=True).start()
    try:
        assert done.wait(max(deadline - time.monotonic(), 0)), "no event before the deadline"
        assert isinstance(found[0], pb.ConsumerEvent), found[0]
        event = found[0]
        schema = json.loads(stub.GetSchema(pb.SchemaRequest(schema_id=event.event.schema_id),
                                           metadata=metadata).schema_json)
        parsed = fastavro.parse_schema(schema)
        return event, fastavro.schemaless_reader(io.BytesIO(event.event.payload), parsed, parsed)
    finally:
        call.cancel()
        requests.put(None)
        channel.close()


def test_pubsub_subscribe_on_each_org_gets_its_own_change(orgs):
    deadline = time.monotonic() + 60
    changed = {}
    for info in orgs:
        account = _records(info, "Account")[0]["Id"]
        with _http(info) as http:
            r = http.post("/__sim/changes", json=[{"object": "Account", "type": "UPDATE", "ids": [account],
                                                  "fields": {"Phone": f"+1 555 {info['org']}"}}])
        assert r.status_code == 200, r.text
        changed[info["org"]] = (account, r.json()["replay_ids"][0])
    for info in orgs:
        token = _token(info, info["client_id"], info["client_secret"]).json()["access_token"]
        event, payload = _first_event(info, token, "/data/AccountChangeEvent", deadline)
        account, replay_id = changed[info["org"]]
        assert event.replay_id.hex() == replay_id
        assert payload["ChangeEventHeader"]["recordIds"] == [account]
        assert payload["Phone"] == f"+1 555 {info['org']}"
    # the other org's session is refused by this org's Pub/Sub service
    one, two = orgs
    token = _token(one, one["client_id"], one["client_secret"]).json()["access_token"]
    with open(two["ca_file"], "rb") as f:
        channel = grpc.secure_channel(two["pubsub_endpoint"], grpc.ssl_channel_credentials(f.read()))
    try:
        with pytest.raises(grpc.RpcError) as err:
            pb_grpc.PubSubStub(channel).GetTopic(
                pb.TopicRequest(topic_name="/data/AccountChangeEvent"), timeout=30,
                metadata=(("accesstoken", token), ("instanceurl", two["instance_url"]), ("tenantid", two["org_id"])))
        assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
    finally:
        channel.close()
