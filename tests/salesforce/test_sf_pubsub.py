"""pubsub.py against a fake PubSub servicer (grpc.aio on a loopback port, plaintext).

The fake honours the protocol's subscribe rules (docs/pubsub-cdc.md §3): replay options from the
first FetchRequest only, events sent only while requested, keepalives on demand, and the errors of
docs/pubsub-cdc.md §4 with their `error-code` trailers. Synchronisation is by conditions with
deadlines, never by sleeping.
"""

from __future__ import annotations

import asyncio
from typing import Any

import grpc
import pytest
from sf_pubsub_fakes import (
    ORG,
    SCHEMA_ID,
    TOPIC,
    FakePubSub,
    FakeTokens,
    replay,
    until,
)

from replicator.model import AuthError, ConfigError, ReplayIdInvalidError, TerminalError, TransientError
from replicator.protocol import pubsub_api_pb2 as pb
from replicator.protocol import pubsub_api_pb2_grpc as pb_grpc
from replicator.salesforce.auth import Token, org_id_of
from replicator.salesforce.pubsub import PubSubClient


@pytest.fixture
async def fake():
    servicer = FakePubSub()
    server = grpc.aio.server()
    pb_grpc.add_PubSubServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    servicer.endpoint = f"127.0.0.1:{port}"
    yield servicer
    await server.stop(grace=None)


@pytest.fixture
async def tokens():
    return FakeTokens()


@pytest.fixture
async def client(fake, tokens):
    sleeps: list[float] = []

    async def no_wait(delay: float) -> None:
        sleeps.append(delay)

    ps = PubSubClient(fake.endpoint, tokens, tls=False, reconnect_attempts=4, backoff_base=0.01, sleep=no_wait)
    ps.sleeps = sleeps
    yield ps
    await ps.close()


class Consumer:
    """Takes events from a subscription in the background, as far as `allow` permits."""

    def __init__(self, sub, fake: FakePubSub) -> None:
        self.sub, self.fake = sub, fake
        self.events: list[Any] = []
        self.error: BaseException | None = None
        self.allow = 10**9
        self._gate = asyncio.Event()
        fake.consumed_total = lambda: sum(1 for e in self.events if not e.keepalive)
        self.task = asyncio.create_task(self._run())

    def permit(self, n: int) -> None:
        self.allow = n
        self._gate.set()

    @property
    def changes(self) -> list[Any]:
        return [e for e in self.events if not e.keepalive]

    async def _run(self) -> None:
        try:
            while True:
                while len(self.changes) >= self.allow:
                    self._gate.clear()
                    await self._gate.wait()
                self.events.append(await self.sub.__anext__())
        except StopAsyncIteration:
            pass
        except BaseException as exc:
            self.error = exc

    async def stop(self) -> None:
        self.task.cancel()
        await asyncio.gather(self.task, return_exceptions=True)
        await self.sub.close()


async def test_auth_metadata_and_earliest_when_no_position(fake, client):
    fake.add(3)
    sub = client.subscribe(TOPIC, replay_id=None, max_pending=10)
    events = [await sub.__anext__() for _ in range(3)]
    await sub.close()
    md = fake.calls[0]["metadata"]
    assert (md["accesstoken"], md["instanceurl"], md["tenantid"]) == ("tok-1", "https://org.example.test", ORG)
    first = fake.calls[0]["first"]
    assert first.replay_preset == pb.ReplayPreset.EARLIEST and first.topic_name == TOPIC
    assert [e.replay_id for e in events] == [replay(1), replay(2), replay(3)]
    change = events[0].changes[0]
    assert change.change_type == "UPDATE" and change.fields == {"Fax": "fax-1", "LastModifiedDate": 1_700_000_000_001}
    assert events[0].schema_id == SCHEMA_ID and fake.schema_requests == 1  # cached by schema id


async def test_given_position_subscribes_custom_after_it(fake, client):
    fake.add(5)
    sub = client.subscribe(TOPIC, replay_id=replay(3), max_pending=10)
    events = [await sub.__anext__() for _ in range(2)]
    await sub.close()
    first = fake.calls[0]["first"]
    assert first.replay_preset == pb.ReplayPreset.CUSTOM and first.replay_id == replay(3)
    assert [e.replay_id for e in events] == [replay(4), replay(5)]
    # Replay options only on the first request of the call.
    assert all(r.replay_preset == pb.ReplayPreset.LATEST and not r.replay_id for r in fake.calls[0]["requests"][1:])


async def test_flow_control_never_exceeds_max_pending(fake, client):
    fake.max_pending = 10
    fake.add(200)
    sub = client.subscribe(TOPIC, replay_id=None, max_pending=10)
    consumer = Consumer(sub, fake)
    consumer.permit(5)
    # The consumer stops after 5: the subscriber may hold 10 more, and must not ask for anything beyond.
    await until(lambda: fake.delivered_total == 15)
    await until(lambda: sub.requested == 15)
    assert fake.delivered_total == 15 and sub.peak_outstanding <= 10
    consumer.permit(200)
    await until(lambda: len(consumer.changes) == 200)
    await consumer.stop()
    assert fake.violations == []
    assert [e.replay_id for e in consumer.changes] == [replay(n) for n in range(1, 201)]
    assert sub.peak_outstanding <= 10 and len(fake.calls) == 1
    # Requests batch up (half the window at a time), not one per event taken.
    assert len(fake.calls[0]["requests"]) < 60


async def test_next_window_is_requested_as_events_arrive_up_to_the_buffer(fake, client):
    """With a buffer larger than the window, the subscriber asks for the next window as soon as a response
    arrives (while it decodes), not only once the consumer takes events; it never holds more than the buffer."""
    fake.max_pending = 40  # the fake checks requested − taken: here, at most the buffer
    got: list = []
    fake.consumed_total = lambda: len(got)
    fake.add(100)
    sub = client.subscribe(TOPIC, replay_id=None, max_pending=10, buffer=40)
    await sub.wait_ready(0)  # starts the subscription; nothing is taken until the buffer is full
    await until(lambda: sub.received == 40)
    got += sub.take_ready(100)
    await until(lambda: sub.received == 80)  # taking frees the buffer: the next windows follow
    got += sub.take_ready(100)
    await sub.close()
    assert [e.replay_id for e in got] == [replay(n) for n in range(1, 81)]
    assert sub.peak_outstanding <= 40 and fake.delivered_total == 80 and fake.violations == []
    assert all(r.num_requested <= 10 for r in fake.calls[0]["requests"])  # never more than the window owed


async def test_keepalive_yields_latest_replay_id(fake, client):
    fake.add(2)
    sub = client.subscribe(TOPIC, replay_id=None, max_pending=5)
    assert (await sub.__anext__()).replay_id == replay(1)
    assert (await sub.__anext__()).replay_id == replay(2)
    fake.keepalive.set()
    event = await asyncio.wait_for(sub.__anext__(), 5)
    assert event.keepalive and event.replay_id == replay(999) and event.changes == ()
    fake.add(1)
    assert (await asyncio.wait_for(sub.__anext__(), 5)).replay_id == replay(3)
    await sub.close()


@pytest.mark.parametrize(
    "code,details",
    [
        (grpc.StatusCode.UNAVAILABLE, "RST_STREAM closed stream"),
        (grpc.StatusCode.INTERNAL, "Received RST_STREAM with error code 2"),
        (grpc.StatusCode.DEADLINE_EXCEEDED, "deadline"),
    ],
)
async def test_dropped_stream_resumes_after_last_received_event(fake, client, code, details):
    fake.add(30)
    fake.drop_after = [(12, code, details), (5, code, details)]
    sub = client.subscribe(TOPIC, replay_id=None, max_pending=20)
    consumer = Consumer(sub, fake)
    await until(lambda: len(consumer.changes) == 30)
    await consumer.stop()
    assert [e.replay_id for e in consumer.changes] == [replay(n) for n in range(1, 31)]  # no loss, no duplicate
    assert len(fake.calls) == 3
    assert fake.calls[1]["first"].replay_preset == pb.ReplayPreset.CUSTOM
    assert fake.calls[1]["first"].replay_id == replay(12)
    assert fake.calls[2]["first"].replay_id == replay(17)
    assert len(client.sleeps) == 2  # backoff between attempts


async def test_stream_that_ends_reconnects_and_keeps_queued_events(fake, client):
    fake.add(10)
    fake.end_after = [4]
    sub = client.subscribe(TOPIC, replay_id=replay(2), max_pending=5)
    consumer = Consumer(sub, fake)
    await until(lambda: len(consumer.changes) == 8)
    await consumer.stop()
    assert [e.replay_id for e in consumer.changes] == [replay(n) for n in range(3, 11)]
    assert fake.calls[0]["first"].replay_id == replay(2)
    assert fake.calls[1]["first"].replay_id == replay(6)


async def test_dropped_before_any_event_resumes_from_original_position(fake, client):
    fake.add(5)
    fake.drop_after = [(0, grpc.StatusCode.UNAVAILABLE, "down")]
    sub = client.subscribe(TOPIC, replay_id=replay(2), max_pending=5)
    assert (await asyncio.wait_for(sub.__anext__(), 5)).replay_id == replay(3)
    await sub.close()
    assert [c["first"].replay_id for c in fake.calls] == [replay(2), replay(2)]


async def test_corrupted_replay_id_raises_replay_id_invalid(fake, client):
    fake.add(3)
    sub = client.subscribe(TOPIC, replay_id=replay(77), max_pending=5)
    with pytest.raises(ReplayIdInvalidError) as info:
        await asyncio.wait_for(sub.__anext__(), 5)
    assert "replayid.corrupted" in info.value.code
    # Never a quiet fallback: exactly one Subscribe call, CUSTOM from the stored id.
    assert [c["first"].replay_preset for c in fake.calls] == [pb.ReplayPreset.CUSTOM]
    await sub.close()


async def test_unauthenticated_refreshes_once_and_reconnects(fake, client, tokens):
    fake.add(2)
    fake.valid_tokens = {"tok-2"}
    sub = client.subscribe(TOPIC, replay_id=None, max_pending=5)
    assert (await asyncio.wait_for(sub.__anext__(), 5)).replay_id == replay(1)
    await sub.close()
    assert tokens.refreshes == 1
    assert fake.calls[-1]["metadata"]["accesstoken"] == "tok-2"
    assert client.sleeps == []  # a refresh is not a backoff


async def test_repeated_unauthenticated_is_an_auth_error(fake, client, tokens):
    fake.valid_tokens = set()
    sub = client.subscribe(TOPIC, replay_id=None, max_pending=5)
    with pytest.raises(AuthError):
        await asyncio.wait_for(sub.__anext__(), 5)
    assert tokens.refreshes == 1
    await sub.close()


async def test_unknown_topic_tells_to_enable_cdc(fake, client):
    sub = client.subscribe("/data/Nope__ChangeEvent", replay_id=None)
    with pytest.raises(TerminalError) as info:
        await asyncio.wait_for(sub.__anext__(), 5)
    assert info.value.code == "TOPIC_NOT_FOUND" and "Change Data Capture" in str(info.value)
    with pytest.raises(TerminalError, match="Change Data Capture"):
        await client.get_topic("/data/Nope__ChangeEvent")
    await sub.close()


async def test_bounded_reconnect_attempts_end_in_transient_error(fake, client):
    fake.subscribe_error = (grpc.StatusCode.UNAVAILABLE, "service down", None)
    sub = client.subscribe(TOPIC, replay_id=None)
    with pytest.raises(TransientError, match="gave up after 4 attempts"):
        await asyncio.wait_for(sub.__anext__(), 5)
    assert len(fake.calls) == 4 and len(client.sleeps) == 3
    await sub.close()


async def test_queued_events_are_delivered_before_a_terminal_error(fake, client):
    fake.add(3)
    fake.drop_after = [(3, grpc.StatusCode.PERMISSION_DENIED, "no access")]
    sub = client.subscribe(TOPIC, replay_id=None, max_pending=5)
    got = [await asyncio.wait_for(sub.__anext__(), 5) for _ in range(3)]
    assert [e.replay_id for e in got] == [replay(1), replay(2), replay(3)]
    with pytest.raises(TerminalError):
        await asyncio.wait_for(sub.__anext__(), 5)
    await sub.close()


async def test_unknown_schema_and_corrupt_payload_become_dead_letter_events(fake, client):
    fake.events.append((replay(1), "unknown-schema", b"\x01\x02"))
    fake.events.append((replay(2), SCHEMA_ID, b"\xff\xff\xff"))
    fake.add(1)
    sub = client.subscribe(TOPIC, replay_id=None, max_pending=5)
    got = [await asyncio.wait_for(sub.__anext__(), 5) for _ in range(3)]
    await sub.close()
    assert got[0].error and "unknown-schema" in got[0].error and got[0].payload == b"\x01\x02"
    assert got[1].error and got[1].payload == b"\xff\xff\xff"
    assert got[2].error is None and got[2].changes[0].fields["Fax"] == "fax-3"


async def test_get_topic_and_get_schema(fake, client):
    info = await client.get_topic(TOPIC)
    assert info["schema_id"] == SCHEMA_ID and info["can_subscribe"] is True and info["tenant_guid"] == ORG
    schema = await client.get_schema(SCHEMA_ID)
    assert schema["name"] == "AccountChangeEvent" and len(schema["fields"]) == 85


async def test_unary_rpc_refreshes_token_once(fake, client, tokens):
    fake.valid_tokens = {"tok-2"}
    assert (await client.get_topic(TOPIC))["topic_name"] == TOPIC
    assert tokens.refreshes == 1


async def test_close_ends_iteration(fake, client):
    sub = client.subscribe(TOPIC, replay_id=None, max_pending=5)
    waiter = asyncio.ensure_future(sub.__anext__())
    await until(lambda: len(fake.calls) == 1)
    await sub.close()
    with pytest.raises(StopAsyncIteration):
        await asyncio.wait_for(waiter, 5)


async def test_tenant_id_from_access_token_prefix_or_configured(fake):
    tokens = FakeTokens(first="00D000000000002AAA!opaque", org_id=None)
    fake.valid_tokens = {tokens.current.access_token}
    async with PubSubClient(fake.endpoint, tokens, tls=False) as ps:
        await ps.get_topic(TOPIC)
    async with PubSubClient(fake.endpoint, tokens, tls=False, tenant_id="00Dexplicit") as ps:
        assert dict(ps.metadata(tokens.current))["tenantid"] == "00Dexplicit"
        assert dict(ps.metadata(tokens.current))["accesstoken"] == "00D000000000002AAA!opaque"
    no_org = FakeTokens(first="opaque", org_id=None)
    async with PubSubClient(fake.endpoint, no_org, tls=False) as ps:
        with pytest.raises(ConfigError, match="tenant_id"):
            ps.metadata(no_org.current)


async def test_callable_token_source(fake):
    token = Token("tok-1", "https://org.example.test", 0.0, ORG)
    async with PubSubClient(fake.endpoint, lambda: token, tls=False) as ps:
        assert (await ps.get_topic(TOPIC))["topic_name"] == TOPIC


def test_max_pending_is_bounded(fake):
    ps = PubSubClient("127.0.0.1:1", FakeTokens(), tls=False)
    for bad in (0, 101):
        with pytest.raises(ConfigError, match="max_pending"):
            ps.subscribe(TOPIC, replay_id=None, max_pending=bad)


def test_unreadable_ca_file_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="ca_file"):
        PubSubClient("h:443", FakeTokens(), ca_file=str(tmp_path / "missing.pem"))


def test_org_id_from_identity_url_or_token_prefix():
    url = "https://login.salesforce.com/id/00D5g000004ABCDEAA/0055g00000ABCDEAAA"
    assert org_id_of(url, "opaque") == "00D5g000004ABCDEAA"
    assert org_id_of(None, "00D5g000004ABCD!AQ0Ao.xyz") == "00D5g000004ABCD"
    assert org_id_of("https://x/id/00D/005", "opaque") is None
    assert "AQ0Ao" not in repr(Token("00D5g000004ABCD!AQ0Ao.xyz", "https://x", 0.0, "00D5g000004ABCD"))
