"""Test-side Pub/Sub helpers: a TLS channel trusting the simulator's certificate, a Subscribe call driven from
a queue (responses collected by a thread), a client that resubscribes after stream failures, Avro decoding by
schema id and the bitmap decoding, written here from docs/pubsub-cdc.md §5-§6 (the simulator's encoder
is not reused, so the two cannot share a mistake)."""

from __future__ import annotations

import io
import json
import queue
import ssl
import threading
from collections.abc import Iterator
from contextlib import contextmanager

import fastavro
import grpc
import httpx

from replicator.protocol import pubsub_api_pb2 as pb
from replicator.protocol import pubsub_api_pb2_grpc as pb_grpc

from .conftest import wait_for


class Org:
    """One simulator seen from a test: HTTP admin client, an access token, the gRPC stub and its metadata."""

    def __init__(self, info: dict) -> None:
        self.info = info
        verify = ssl.create_default_context(cafile=info["ca_file"]) if info.get("ca_file") else False
        self.http = httpx.Client(base_url=info["instance_url"], verify=verify, timeout=60)
        if info.get("ca_file"):
            with open(info["ca_file"], "rb") as f:
                self.channel = grpc.secure_channel(info["pubsub_endpoint"], grpc.ssl_channel_credentials(f.read()))
        else:
            self.channel = grpc.insecure_channel(info["pubsub_endpoint"])
        self.stub = pb_grpc.PubSubStub(self.channel)
        self._schemas: dict[str, dict] = {}
        self.token = self.new_token()

    def new_token(self) -> str:
        r = self.http.post("/services/oauth2/token", data={"grant_type": "client_credentials",
                                                            "client_id": self.info["client_id"],
                                                            "client_secret": self.info["client_secret"]})
        assert r.status_code == 200, r.text
        return r.json()["access_token"]

    @property
    def metadata(self) -> tuple:
        return (("accesstoken", self.token), ("instanceurl", self.info["instance_url"]),
                ("tenantid", self.info["tenant_id"]))

    def changes(self, items: list[dict]) -> dict:
        r = self.http.post("/__sim/changes", json=items)
        assert r.status_code == 200, r.text
        return r.json()

    def faults(self, **knobs) -> None:
        r = self.http.put("/__sim/faults", json=knobs)
        assert r.status_code == 200, r.text

    def record(self, obj: str, record_id: str) -> dict:
        for line in self.http.get(f"/__sim/objects/{obj}/records").content.splitlines():
            rec = json.loads(line)
            if rec["Id"] == record_id:
                return rec
        raise AssertionError(f"{record_id} not in ground truth")

    def first_ids(self, obj: str, n: int) -> list[str]:
        out = []
        for line in self.http.get(f"/__sim/objects/{obj}/records").content.splitlines():
            rec = json.loads(line)
            if not rec["IsDeleted"]:
                out.append(rec["Id"])
            if len(out) == n:
                break
        return out

    def schema(self, schema_id: str) -> dict:
        if schema_id not in self._schemas:
            info = self.stub.GetSchema(pb.SchemaRequest(schema_id=schema_id), metadata=self.metadata)
            self._schemas[schema_id] = json.loads(info.schema_json)
        return self._schemas[schema_id]

    def decode(self, event) -> dict:
        schema = fastavro.parse_schema(self.schema(event.event.schema_id))
        return fastavro.schemaless_reader(io.BytesIO(event.event.payload), schema, schema)

    def subscribe(self, topic: str, preset=pb.LATEST, replay_id: bytes = b"", num_requested: int = 0):
        return Subscription(self, topic, preset, replay_id, num_requested)

    def close(self) -> None:
        self.channel.close()
        self.http.close()


class Subscription:
    def __init__(self, org: Org, topic: str, preset, replay_id: bytes, num_requested: int) -> None:
        self._requests: queue.Queue = queue.Queue()
        self._requests.put(pb.FetchRequest(topic_name=topic, replay_preset=preset, replay_id=replay_id,
                                           num_requested=num_requested))
        self.responses: list = []
        self.error: grpc.RpcError | None = None
        self.done = threading.Event()
        self._asked_at = 0  # len(responses) when keep_flowing last asked for more
        self.call = org.stub.Subscribe(self._iterate(), metadata=org.metadata)
        threading.Thread(target=self._collect, daemon=True).start()

    def _iterate(self):
        while True:
            request = self._requests.get()
            if request is None:
                return
            yield request

    def _collect(self) -> None:
        try:
            for response in self.call:
                self.responses.append(response)
        except grpc.RpcError as exc:
            self.error = exc
        finally:
            self.done.set()

    def request(self, n: int, topic: str = "") -> None:
        self._requests.put(pb.FetchRequest(topic_name=topic, num_requested=n))

    def keep_flowing(self, n: int) -> bool:
        """Ask for `n` more events whenever everything asked for has arrived (call it while waiting on a
        condition); returns True so it can lead an `and`."""
        responses = self.responses
        if responses and responses[-1].pending_num_requested == 0 and len(responses) != self._asked_at:
            self._asked_at = len(responses)
            self.request(n)
        return True

    @property
    def scanned(self) -> str:
        """The newest latest_replay_id received (hex; "" before any response)."""
        return max((r.latest_replay_id.hex() for r in list(self.responses)), default="")

    @property
    def events(self) -> list:
        return [e for r in list(self.responses) for e in r.events]

    def close(self) -> None:
        self.call.cancel()
        self._requests.put(None)

    def __enter__(self) -> Subscription:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class Follower:
    """A client that reads one topic across stream failures, as a replicating client must.

    It asks for `batch` more events whenever everything asked for has arrived, remembers the newest replay id
    it was given (a response's latest_replay_id, which on a keepalive may run ahead of every event: replay
    tightening), and when a stream ends with UNAVAILABLE it subscribes again, CUSTOM from that replay id
    (EARLIEST the first time). Any other error fails the test. Drive it with poll() inside wait_for."""

    def __init__(self, org: Org, topic: str, batch: int = 100) -> None:
        self.org, self.topic, self.batch = org, topic, batch
        self.position = b""
        self.events: list = []  # every ConsumerEvent received, over every stream, in arrival order
        self.keepalives: list[bytes] = []  # latest_replay_id of every empty response
        self.cuts = 0  # streams that ended with UNAVAILABLE
        self._sub: Subscription | None = None
        self._seen = 0

    def poll(self) -> bool:
        if self._sub is None:
            preset = pb.CUSTOM if self.position else pb.EARLIEST
            self._sub = self.org.subscribe(self.topic, preset, self.position, self.batch)
            self._seen = 0
        sub = self._sub
        ended = sub.done.is_set()  # read before the responses: once set, every response is in the list
        responses = list(sub.responses)
        for response in responses[self._seen:]:
            self.events.extend(response.events)
            if not response.events:
                self.keepalives.append(response.latest_replay_id)
            self.position = response.latest_replay_id or (response.events[-1].replay_id if response.events
                                                           else self.position)
        self._seen = len(responses)
        if ended:
            if sub.error is None or sub.error.code() != grpc.StatusCode.UNAVAILABLE:
                raise AssertionError(f"the stream ended with {sub.error!r}")
            self.cuts += 1
            sub.close()
            self._sub = None
        else:
            sub.keep_flowing(self.batch)
        return True

    def received(self) -> list[str]:
        """Replay ids of the events received (hex), in arrival order."""
        return [e.replay_id.hex() for e in self.events]

    def close(self) -> None:
        if self._sub is not None:
            self._sub.close()


def events_of(org: Org, replay_ids: list[str], topic: str = "/data/ChangeEvents") -> list[dict]:
    """The decoded events with these replay ids, read with CUSTOM from just before the first; each also carries
    `_schema` (its schema JSON) and `_schema_id`."""
    start = (int(replay_ids[0][:16], 16) - 1).to_bytes(8, "big") + b"\0\0"
    preset = pb.CUSTOM if int(replay_ids[0][:16], 16) > 1 else pb.EARLIEST
    with org.subscribe(topic, preset, start if preset == pb.CUSTOM else b"", num_requested=100) as sub:
        wait_for(lambda: {e.replay_id.hex() for e in sub.events} >= set(replay_ids))
        found = {e.replay_id.hex(): e for e in sub.events}
    out = []
    for rid in replay_ids:
        decoded = org.decode(found[rid])
        decoded["_schema"] = org.schema(found[rid].event.schema_id)
        decoded["_schema_id"] = found[rid].event.schema_id
        out.append(decoded)
    return out


def trailer(error: grpc.RpcError, key: str = "error-code") -> str | None:
    return dict(error.trailing_metadata() or ()).get(key)


def _bits(hex_text: str) -> list[int]:
    value = int(hex_text[2:], 16)
    return [i for i in range(value.bit_length()) if value >> i & 1]


def _record_of(field_type, named: dict) -> dict | None:
    for branch in field_type if isinstance(field_type, list) else [field_type]:
        if isinstance(branch, dict) and branch.get("type") == "record":
            return branch
        if isinstance(branch, str) and branch in named:
            return named[branch]
    return None


def decode_bitmap(schema: dict, bitmap: list[str]) -> set[str]:
    """Element 0 `0x…`: bit i -> schema.fields[i]; `"{pos}-0x…"`: bits over that compound's fields
    (docs/pubsub-cdc.md §6)."""
    fields = schema["fields"]
    named: dict[str, dict] = {}
    for f in fields:
        rec = _record_of(f["type"], {})
        if rec is not None:
            named.setdefault(rec["name"], rec)
    out: set[str] = set()
    for element in bitmap:
        if "-" in element:
            pos, hex_text = element.split("-")
            parent = fields[int(pos)]
            rec = _record_of(parent["type"], named)
            out.update(f"{parent['name']}.{rec['fields'][i]['name']}" for i in _bits(hex_text))
        else:
            out.update(fields[i]["name"] for i in _bits(element))
    return out


@contextmanager
def running_org(**simulator: object) -> Iterator[Org]:
    """A simulator of its own (SimulatorThread options) and an `Org` talking to it, closed after."""
    from replicator.sim.server import SimulatorThread

    with SimulatorThread(**simulator) as running:
        org = Org(running.info)
        try:
            yield org
        finally:
            org.close()
