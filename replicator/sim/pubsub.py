"""The Pub/Sub API over grpc.aio: GetTopic, GetSchema, Subscribe, Publish (docs/pubsub-cdc.md §2-§4).

Auth (docs/pubsub-cdc.md §1, §4): every RPC needs metadata `accesstoken` (a live session of the OAuth
token store, same idle expiry as REST), `instanceurl` (the simulator's instance URL) and `tenantid` (the org id,
or `core/<anything>/<orgId>`); otherwise UNAUTHENTICATED with trailer `error-code:
sfdc.platform.eventbus.grpc.service.auth.error`. Every error description ends with ` rpcId: <uuid>`
(docs/pubsub-cdc.md §4), except the UNAVAILABLE of a simulated network cut (below).

Subscribe (docs/pubsub-cdc.md §3): pull-based; at most 100 events owed per call (bigger requests are
capped silently); several events per FetchResponse (bounded to ~3 MB so a client's default 4 MB receive limit
holds); every response reports pending_num_requested; replay options are read from the first FetchRequest only;
a later request naming another topic fails with INVALID_ARGUMENT `…subscription.fetch.topic.mismatch`; while
events are owed and none are available an empty FetchResponse carrying latest_replay_id is sent every
`keepalive_seconds`. latest_replay_id is the position this subscription has scanned to, so storing it never skips
an event of the topic. A CUSTOM replay id is accepted in the 10-byte form sent here or as an 8-byte long
(events.py).

Stream faults (faults.py): `stream_close_seconds` and `stream_close_rate` end a stream with UNAVAILABLE, the
description "RST_STREAM closed stream" and no error-code trailer, as Salesforce reports a transient network
failure (docs/pubsub-cdc.md §4); only ever between two responses, so a client that resubscribes from
the last replay id it received loses nothing. `keepalive_ahead` makes a keepalive's latest_replay_id run past the
org's newest event, as other orgs' events do on Salesforce's shared bus (replay tightening,
docs/pubsub-cdc.md §3): those positions are reserved on the bus (EventBus.pass_foreign), so every
later event comes after them.

Delivery allocation (limits.py): every event sent counts against `DailyDeliveredPlatformEvents`; an event that
would pass the allocation is not sent and the stream ends with `…subscription.limit.exceeded`; a Subscribe while
nothing is left is refused the same way. The events stay on the bus: a reset of the allocation delivers them.
Channels (channels.py): custom `/data/<Name>__chn` channels are served from buses of their own (their own replay
ids), `/data/ChangeEvents` from the org's bus; GetTopic answers for them with an empty schema_id, each event
names its schema.
`peak_streams_per_connection` counts the most Subscribe calls one client connection held at once; the server
allows 100 concurrent streams per connection (docs/pubsub-cdc.md §9).

Not built: the 60 s idle close when nothing is owed, PublishStream and ManagedSubscribe (UNIMPLEMENTED).
"""

from __future__ import annotations

import asyncio
import time
import uuid

import grpc

from replicator.protocol import pubsub_api_pb2 as pb
from replicator.protocol import pubsub_api_pb2_grpc as pb_grpc

from ..retry import wait_event
from .avro import ORDER_READY_TOPIC
from .cdc import ChangeCapture
from .events import ALL_CHANGE_EVENTS, EventBus, ReplayIdError
from .faults import Faults
from .limits import EVENT_LIMIT_CODE, EVENT_LIMIT_TEXT, Allocations
from .oauth import TokenStore

PREFIX = "sfdc.platform.eventbus.grpc."
AUTH_ERROR = PREFIX + "service.auth.error"
TOPIC_NOT_FOUND = PREFIX + "topic.not.found"
REPLAY_CORRUPTED = PREFIX + "subscription.fetch.replayid.corrupted"
REPLAY_VALIDATION = PREFIX + "subscription.fetch.replayid.validation.failed"
TOPIC_MISMATCH = PREFIX + "subscription.fetch.topic.mismatch"
# Events owed per Subscribe call; larger requests are capped, not rejected (docs/pubsub-cdc.md §3, §9).
MAX_OUTSTANDING = 100
# Payload bytes per FetchResponse: under gRPC's 4 MB default receive limit (docs/pubsub-cdc.md §9).
MAX_RESPONSE_BYTES = 3_000_000
MAX_STREAMS_PER_CONNECTION = 100  # concurrent streams on one HTTP/2 connection (docs/pubsub-cdc.md §9)
MAX_PUBLISH_EVENT_BYTES = 1_000_000  # each published event at most 1 MB (docs/pubsub-cdc.md §9)
AUTH_TEXT = "An authentication exception occurred. Provide valid authentication via metadata headers."
REPLAY_TEXT = ("The Replay ID validation failed. Ensure that the replay_id field value in FetchRequest is valid "
               "and refers to an event that is within the retention window.")


class PubSubService(pb_grpc.PubSubServicer):
    def __init__(self, capture: ChangeCapture, bus: EventBus, tokens: TokenStore, faults: Faults,
                 org_id: str, instance_url: str) -> None:
        self.capture, self.bus, self.tokens, self.faults = capture, bus, tokens, faults
        self.org_id, self.instance_url = org_id, instance_url.rstrip("/")
        self.channels = None  # channels.Channels: the multi-entity channels, each a bus of its own
        self.subscribers = 0
        self.peak_streams_per_connection = 0  # most Subscribe calls open at once on one client connection
        self._streams_by_peer: dict[str, int] = {}
        self.streams_cut = 0  # Subscribe streams ended by the stream_close_* faults
        self.allocations = Allocations()  # the org's (server.py hands over the shared one)

    # -- helpers ----------------------------------------------------------------------------------------------
    async def _fail(self, context, code: grpc.StatusCode, error_code: str, text: str):
        rpc_id = str(uuid.uuid4())
        await context.abort(code, f"{text} rpcId: {rpc_id}",
                            trailing_metadata=(("error-code", error_code), ("rpc-id", rpc_id)))

    async def _authenticate(self, context) -> None:
        meta = {k.lower(): v for k, v in (context.invocation_metadata() or ())}
        token, url, tenant = meta.get("accesstoken", ""), meta.get("instanceurl", ""), meta.get("tenantid", "")
        tenant_ok = tenant == self.org_id or (tenant.startswith("core/") and tenant.rsplit("/", 1)[-1] == self.org_id)
        if not (token and self.tokens.touch(token) and url.rstrip("/") == self.instance_url and tenant_ok):
            await self._fail(context, grpc.StatusCode.UNAUTHENTICATED, AUTH_ERROR, AUTH_TEXT)

    def _schema_id(self, topic: str) -> str | None:
        if topic == ORDER_READY_TOPIC:
            return self.capture.platform.id
        if topic == ALL_CHANGE_EVENTS or (self.channels is not None and self.channels.bus_for(topic) is not None):
            return ""  # a multi-entity channel: each event names its own schema (channels.py)
        return self.capture.topic_schema_id(topic)

    def _bus(self, topic: str) -> EventBus:
        channel = self.channels.bus_for(topic) if self.channels is not None else None
        return channel or self.bus

    async def _require_topic(self, topic: str, context) -> str:
        schema_id = self._schema_id(topic)
        if schema_id is None:
            await self._fail(context, grpc.StatusCode.NOT_FOUND, TOPIC_NOT_FOUND,
                             f"The topic information for org CORE/prod/{self.org_id} and topic {topic} not found. "
                             "Ensure the topic name is correct and that the topic exists.")
        return schema_id or ""

    # -- unary RPCs -------------------------------------------------------------------------------------------
    async def GetTopic(self, request, context):  # noqa: N802 - gRPC method name
        await self._authenticate(context)
        schema_id = await self._require_topic(request.topic_name, context)
        return pb.TopicInfo(topic_name=request.topic_name, tenant_guid=self.org_id,
                            can_publish=request.topic_name.startswith("/event/"), can_subscribe=True,
                            schema_id=schema_id, rpc_id=str(uuid.uuid4()))

    async def GetSchema(self, request, context):  # noqa: N802
        await self._authenticate(context)
        schema_json = self.capture.schemas_by_id.get(request.schema_id)
        if schema_json is None:
            await self._fail(context, grpc.StatusCode.NOT_FOUND, PREFIX + "schema.not.found",
                             f"The schema {request.schema_id} was not found.")
        return pb.SchemaInfo(schema_json=schema_json, schema_id=request.schema_id, rpc_id=str(uuid.uuid4()))

    async def Publish(self, request, context):  # noqa: N802
        await self._authenticate(context)
        topic = request.topic_name
        await self._require_topic(topic, context)
        platform = self.capture.platform
        results = []
        for event in request.events:
            key = event.id or str(uuid.uuid4())
            error = None
            if topic != ORDER_READY_TOPIC:
                error = "Publishing to change event topics is not allowed."
            elif event.schema_id != platform.id:
                error = f"Unknown schema id {event.schema_id!r} for {topic}."
            elif len(event.payload) > MAX_PUBLISH_EVENT_BYTES:
                error = "The event exceeds the maximum size of 1 MB."
            else:
                try:
                    platform.decode(event.payload)
                except Exception as exc:  # noqa: BLE001 - any decode failure is the publisher's error
                    error = f"The payload is not a valid {topic} record: {exc}"
            if error is not None:
                results.append(pb.PublishResult(error=pb.Error(code=pb.PUBLISH, msg=error), correlation_key=key))
                continue
            stored = self.bus.publish(topic, False, platform.id, event.payload, key)
            results.append(pb.PublishResult(replay_id=stored.replay_id, correlation_key=key))
        self.bus.notify()
        return pb.PublishResponse(results=results, schema_id=platform.id, rpc_id=str(uuid.uuid4()))

    # -- Subscribe --------------------------------------------------------------------------------------------
    async def Subscribe(self, request_iterator, context):  # noqa: N802
        await self._authenticate(context)
        first = await _next_request(request_iterator)
        if first is None:
            return
        topic = first.topic_name
        await self._require_topic(topic, context)
        if self.allocations.event_room() <= 0:
            await self._limit_exceeded(context)
        bus = self._bus(topic)
        stream = _Stream(topic, await self._start(first, context, bus),
                         min(MAX_OUTSTANDING, max(0, first.num_requested)), bus)
        bus.register(stream.wake)
        reader = asyncio.ensure_future(_read_requests(request_iterator, topic, stream))
        self.subscribers += 1
        peer = context.peer()
        self._streams_by_peer[peer] = open_here = self._streams_by_peer.get(peer, 0) + 1
        self.peak_streams_per_connection = max(self.peak_streams_per_connection, open_here)
        try:
            while not (stream.closed and stream.pending == 0):  # a half-closed client owed nothing: done
                if stream.mismatch:
                    await self._fail(context, grpc.StatusCode.INVALID_ARGUMENT, TOPIC_MISMATCH,
                                     f"The topic name in FetchRequest does not match {topic}.")
                if self._cut_due(stream):
                    await self._cut(context)
                response = self._next_response(stream)
                if response is _EXHAUSTED:
                    await self._limit_exceeded(context)
                if response is None:
                    await self._wait(stream)
                    continue
                yield response
                stream.last_sent = time.monotonic()
                if self.faults.roll(self.faults.stream_close_rate):
                    await self._cut(context)
        finally:
            self.subscribers -= 1
            self._streams_by_peer[peer] -= 1
            if not self._streams_by_peer[peer]:
                del self._streams_by_peer[peer]
            bus.unregister(stream.wake)
            reader.cancel()

    def _next_response(self, stream: _Stream):
        """The next FetchResponse of a stream: its owed events, else a keepalive when one is due, else None."""
        if stream.pending <= 0:
            return None
        room = min(stream.pending, self.allocations.event_room())
        events, scanned = stream.bus.take(stream.topic, stream.cursor, max(1, room), MAX_RESPONSE_BYTES)
        if events:
            if room <= 0:
                return _EXHAUSTED  # an event to send and no allocation left: it stays on the bus
            out, stream.cursor = self._consumer_events(events, room, scanned)
            stream.pending -= len(out)
            self.allocations.delivered(len(out))
            return pb.FetchResponse(events=out, latest_replay_id=_replay(stream.cursor), rpc_id=str(uuid.uuid4()),
                                    pending_num_requested=stream.pending)
        stream.cursor = scanned  # past other topics' events
        if self._keepalive_wait(stream) > 0:
            return None
        position = stream.cursor
        if self.faults.keepalive_ahead and position == stream.bus.last_counter:
            # Only once everything is scanned: the positions passed belong to no event of this org.
            position = stream.bus.pass_foreign(self.faults.keepalive_ahead)
        return pb.FetchResponse(latest_replay_id=_replay(stream.bus.keepalive_position(position)),
                                rpc_id=str(uuid.uuid4()), pending_num_requested=stream.pending)

    def _keepalive_wait(self, stream: _Stream) -> float:
        return stream.last_sent + max(0.01, self.faults.keepalive_seconds) - time.monotonic()

    def _cut_due(self, stream: _Stream) -> bool:
        limit = self.faults.stream_close_seconds
        return limit > 0 and time.monotonic() - stream.started >= limit

    async def _wait(self, stream: _Stream) -> None:
        """Sleep until a wake-up (new events, a FetchRequest, a fault change), a due keepalive or a due cut."""
        stream.wake.clear()
        if stream.pending > 0 and stream.bus.last_counter > stream.cursor:
            await asyncio.sleep(0)  # more of the log to scan first; let the other streams run meanwhile
            return
        timeouts = []
        if stream.pending > 0:
            timeouts.append(self._keepalive_wait(stream))
        if self.faults.stream_close_seconds > 0:
            timeouts.append(stream.started + self.faults.stream_close_seconds - time.monotonic())
        await wait_event(stream.wake, max(0.0, min(timeouts)) if timeouts else None)

    async def _limit_exceeded(self, context) -> None:
        """The daily delivery allocation is used up (limits.py): end or refuse the Subscribe."""
        self.allocations.refused_subscribes += 1
        await self._fail(context, grpc.StatusCode.RESOURCE_EXHAUSTED, EVENT_LIMIT_CODE, EVENT_LIMIT_TEXT)

    async def _cut(self, context) -> None:
        """End the stream like a transient network failure: UNAVAILABLE, no error-code trailer. Every event
        sent before it has been written; the cursor is the client's to resume from."""
        self.streams_cut += 1
        await context.abort(grpc.StatusCode.UNAVAILABLE, "RST_STREAM closed stream")

    async def _start(self, first, context, bus: EventBus) -> int:
        """The cursor from the first request's replay options: LATEST, EARLIEST or after a CUSTOM id
        (docs/pubsub-cdc.md §3)."""
        if first.replay_preset == pb.EARLIEST:
            return bus.start_earliest()
        if first.replay_preset == pb.CUSTOM:
            if not first.replay_id:
                await self._fail(context, grpc.StatusCode.INVALID_ARGUMENT, REPLAY_VALIDATION,
                                 "The Replay ID validation failed. A replay_id is required with CUSTOM.")
            try:
                return bus.start_after(first.replay_id)
            except ReplayIdError:
                await self._fail(context, grpc.StatusCode.INVALID_ARGUMENT, REPLAY_CORRUPTED, REPLAY_TEXT)
        return bus.start_latest()

    def _consumer_events(self, events, room: int, scanned: int) -> tuple[list, int]:
        """The ConsumerEvents of one response (at most `room`, duplicates included) and the cursor after it.

        A duplicate (the `duplicate_rate` knob) takes the room of a later event: that event is left for the
        next response and the cursor stops at the last event sent, so a duplicate never costs an event."""
        out = []
        rate, roll = self.faults.duplicate_rate, self.faults.roll
        for k, event in enumerate(events):
            if len(out) >= room:
                return out, events[k - 1].counter
            message = pb.ConsumerEvent(event=pb.ProducerEvent(id=event.event_id, schema_id=event.schema_id,
                                                              payload=event.payload),
                                       replay_id=event.replay_id)
            out.append(message)
            if rate > 0 and len(out) < room and roll(rate):
                out.append(message)  # a duplicate delivery: the same event, the same replay id
        return out, scanned


_EXHAUSTED = object()  # _next_response: an event is due but the delivery allocation is used up


class _Stream:
    """One Subscribe call: its topic, cursor (the last counter scanned or sent), what is owed, and timing."""

    def __init__(self, topic: str, cursor: int, pending: int, bus: EventBus) -> None:
        self.topic, self.cursor, self.pending, self.bus = topic, cursor, pending, bus
        self.mismatch = self.closed = False
        self.wake = asyncio.Event()
        self.started = self.last_sent = time.monotonic()


async def _next_request(iterator):
    try:
        return await iterator.__anext__()
    except StopAsyncIteration:
        return None


async def _read_requests(iterator, topic: str, stream: _Stream) -> None:
    """Later FetchRequests add to what is owed (capped at 100); their replay options are ignored
    (docs/pubsub-cdc.md §3)."""
    try:
        async for request in iterator:
            if request.topic_name and request.topic_name != topic:
                stream.mismatch = True
                break
            stream.pending = min(MAX_OUTSTANDING, stream.pending + max(0, request.num_requested))
            stream.wake.set()
        else:
            stream.closed = True
    except (asyncio.CancelledError, grpc.RpcError):
        stream.closed = True
        raise
    finally:
        stream.wake.set()


def _replay(counter: int) -> bytes:
    return counter.to_bytes(8, "big") + b"\x00\x00"


async def start_server(service: PubSubService, host: str, credentials: grpc.ServerCredentials | None
                       ) -> tuple[grpc.aio.Server, int]:
    """A grpc.aio server on `host` (port chosen by the OS); plaintext when `credentials` is None."""
    # At most 100 concurrent streams per HTTP/2 connection, as Salesforce ("Pub/Sub API and Event Allocations",
    # docs/pubsub-cdc.md §9): a client's 101st call on one connection waits for a free stream.
    server = grpc.aio.server(options=[("grpc.max_receive_message_length", 8 << 20),
                                      ("grpc.max_concurrent_streams", MAX_STREAMS_PER_CONNECTION)])
    pb_grpc.add_PubSubServicer_to_server(service, server)
    address = f"[{host}]:0" if ":" in host else f"{host}:0"
    port = server.add_secure_port(address, credentials) if credentials else server.add_insecure_port(address)
    await server.start()
    return server, port
