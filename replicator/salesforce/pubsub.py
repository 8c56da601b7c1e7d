"""The Pub/Sub API subscriber (gRPC, docs/pubsub-cdc.md §1–4): auth metadata, flow control,
reconnects, decoding.

`PubSubClient.subscribe(topic, replay_id=…)` gives a `Subscription`, an async iterator of `model.StreamEvent`:
change events decoded by `cdc.decode_event` with the schema of each event's own `schema_id`, keepalives, and
dead-letter events for payloads that do not decode. It never skips an event and never moves to LATEST on its
own: a refused replay id raises `model.ReplayIdInvalidError`, and the pipeline resyncs.

The only module (with `protocol/`) that imports grpc. gRPC failures are mapped once by `errors.map_grpc_status`.
"""

from __future__ import annotations

import asyncio
import inspect
import json
import time
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Any

import grpc
import structlog

from replicator.model import (
    AuthError,
    ConfigError,
    ReplicatorError,
    SessionExpiredError,
    StreamEvent,
    TerminalError,
    TransientError,
)
from replicator.protocol import pubsub_api_pb2 as pb
from replicator.protocol import pubsub_api_pb2_grpc as pb_grpc
from replicator.retry import backoff_delay, is_transient, retry_transient
from replicator.salesforce.auth import Token, org_id_of
from replicator.salesforce.cdc import SchemaCache, decode_event
from replicator.salesforce.errors import map_grpc_status

log = structlog.get_logger(__name__)

# At most 100 events may be outstanding per Subscribe call; the server silently caps larger requests
# (docs/pubsub-cdc.md §3).
MAX_PENDING_LIMIT = 100
# An event is at most 1 MB (docs/pubsub-cdc.md §9) and one FetchResponse may carry every owed
# event: 100 × 1 MB plus framing. gRPC's default 4 MB receive limit would fail the stream (RESOURCE_EXHAUSTED)
# on a batch of large events.
MAX_RECEIVE_BYTES = 110 * 1024 * 1024
# The server sends a keepalive within 270 s while events are owed (docs/pubsub-cdc.md §3); silence
# well past that means a dead connection that TCP has not noticed yet, so the subscriber reconnects.
STALL_TIMEOUT_S = 330.0
# "A gRPC channel can have a maximum of 100 concurrent streams on an underlying HTTP/2 connection" ("Pub/Sub API
# and Event Allocations", https://developer.salesforce.com/docs/platform/pub-sub-api/guide/allocations.html;
# docs/pubsub-cdc.md §9). Subscriptions get channels of their own, at most this many streams each; unary RPCs
# (GetTopic, GetSchema) use the first channel, which holds no subscription.
MAX_STREAMS_PER_CHANNEL = 100

_TOPIC_FIELDS = ("topic_name", "tenant_guid", "can_publish", "can_subscribe", "schema_id", "rpc_id")

# The org's daily event delivery allocation is used up: Salesforce ends the subscription (docs/pubsub-cdc.md §4,
# "Daily delivery allocation exhausted"; Change Data Capture Developer Guide, "Change Data Capture Allocations",
# https://developer.salesforce.com/docs/atlas.en-us.change_data_capture.meta/change_data_capture/cdc_allocations.htm).
# Its gRPC status is not documented: the `error-code` trailer alone identifies it.
EVENT_ALLOCATION_CODE = "subscription.limit.exceeded"


def event_allocation_exhausted(exc: BaseException) -> bool:
    """True for the error a Subscribe ends with once the org's event delivery allocation is used up: resubscribing
    cannot help for hours, so it is surfaced at once (the service polls the object meanwhile)."""
    return isinstance(exc, ReplicatorError) and (getattr(exc, "code", None) or "").endswith(EVENT_ALLOCATION_CODE)


TokenSource = Any  # a TokenProvider (token() / refresh(stale)), or a callable returning a Token (or awaitable)


def grpc_error(exc: grpc.aio.AioRpcError, what: str, rpc: str = "") -> ReplicatorError:
    """The model error for a failed RPC, with the Salesforce `error-code` trailer
    (docs/pubsub-cdc.md §4)."""
    error_code = None
    for key, value in exc.trailing_metadata() or ():
        if key == "error-code":
            error_code = value.decode() if isinstance(value, bytes) else str(value)
    return map_grpc_status(exc.code().name, exc.details() or "", error_code, what=what, rpc=rpc)


class _Tokens:
    """Adapts a TokenProvider or a plain callable to token() / refresh(stale)."""

    def __init__(self, source: TokenSource):
        self._source = source

    async def token(self) -> Token:
        getter = getattr(self._source, "token", None)
        result = getter() if callable(getter) else self._source()
        return await result if inspect.isawaitable(result) else result

    async def refresh(self, stale: Token) -> Token:
        refresher = getattr(self._source, "refresh", None)
        if callable(refresher):
            return await refresher(stale)
        return await self.token()


class PubSubClient:
    """One Pub/Sub endpoint and channel. `async with PubSubClient(...) as ps:`, or call `close()`.

    `tenant_id` defaults to the org id of the token (identity URL, else the `<orgId>!` token prefix).
    `ca_file` is a PEM bundle to trust instead of the system roots; `tls=False` (plaintext) is for tests.
    """

    def __init__(
        self,
        endpoint: str,
        tokens: TokenSource,
        *,
        tenant_id: str | None = None,
        ca_file: str | None = None,
        tls: bool = True,
        reconnect_attempts: int = 6,
        backoff_base: float = 0.5,
        backoff_cap: float = 30.0,
        rpc_timeout: float = 60.0,
        stall_timeout: float = STALL_TIMEOUT_S,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ):
        self.endpoint = endpoint
        self._tokens = _Tokens(tokens)
        self._tenant_id = tenant_id
        self._root_certificates: bytes | None = None
        if ca_file:
            try:
                with open(ca_file, "rb") as fh:
                    self._root_certificates = fh.read()
            except OSError as exc:
                raise ConfigError(f"ca_file {ca_file!r} is not readable ({exc.strerror})", code="ca_file") from None
        self._tls = tls
        self.reconnect_attempts = reconnect_attempts
        self.backoff_base = backoff_base
        self.backoff_cap = backoff_cap
        self.rpc_timeout = rpc_timeout
        self.stall_timeout = stall_timeout
        self.sleep = sleep
        self._channel: grpc.aio.Channel | None = None
        self._stub: pb_grpc.PubSubStub | None = None
        # Channels for Subscribe calls: [channel, stub, subscriptions holding it], a new one per 100.
        self._stream_channels: list[list] = []
        self.schemas = SchemaCache(self.get_schema)

    # -- channel and metadata ------------------------------------------------------------------------------

    @property
    def stub(self) -> pb_grpc.PubSubStub:
        """The stub, on a channel opened at first use (grpc.aio binds a channel to the running loop)."""
        if self._stub is None:
            self._channel = self._open_channel()
            self._stub = pb_grpc.PubSubStub(self._channel)
        return self._stub

    def _open_channel(self) -> grpc.aio.Channel:
        # A local subchannel pool: gRPC otherwise shares one connection between channels to the same target, and
        # the 100-stream cap is per HTTP/2 connection.
        options = [("grpc.max_receive_message_length", MAX_RECEIVE_BYTES), ("grpc.primary_user_agent", "replicator"),
                   ("grpc.use_local_subchannel_pool", 1)]
        if self._tls:
            creds = grpc.ssl_channel_credentials(root_certificates=self._root_certificates)
            return grpc.aio.secure_channel(self.endpoint, creds, options=options)
        return grpc.aio.insecure_channel(self.endpoint, options=options)

    def acquire_stream_stub(self) -> pb_grpc.PubSubStub:
        """A stub for one more Subscribe call: on a channel holding fewer than MAX_STREAMS_PER_CHANNEL; release it
        with release_stream_stub."""
        for slot in self._stream_channels:
            if slot[2] < MAX_STREAMS_PER_CHANNEL:
                slot[2] += 1
                return slot[1]
        channel = self._open_channel()
        self._stream_channels.append([channel, pb_grpc.PubSubStub(channel), 1])
        return self._stream_channels[-1][1]

    def release_stream_stub(self, stub: pb_grpc.PubSubStub) -> None:
        for slot in self._stream_channels:
            if slot[1] is stub:
                slot[2] -= 1

    @property
    def stream_channels(self) -> list[int]:
        """Subscriptions per open stream channel (for tests and metrics)."""
        return [slot[2] for slot in self._stream_channels]

    def metadata(self, token: Token) -> tuple[tuple[str, str], ...]:
        """The three auth headers of every RPC (docs/pubsub-cdc.md §1)."""
        tenant = self._tenant_id or token.org_id or org_id_of(None, token.access_token)
        if not tenant:
            raise ConfigError("the org id is unknown: set tenant_id (the 00D… org id)", code="tenant_id")
        return (("accesstoken", token.access_token), ("instanceurl", token.instance_url), ("tenantid", tenant))

    async def token(self) -> Token:
        return await self._tokens.token()

    async def refresh(self, stale: Token) -> Token:
        return await self._tokens.refresh(stale)

    async def close(self) -> None:
        if self._channel is not None:
            await self._channel.close()
        self._channel = self._stub = None
        slots, self._stream_channels = self._stream_channels, []
        for channel, _, _ in slots:
            await channel.close()

    async def __aenter__(self) -> PubSubClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # -- unary RPCs ----------------------------------------------------------------------------------------

    async def _unary(self, rpc: str, request: Any, what: str) -> Any:
        """One unary RPC: auth headers, one token refresh on UNAUTHENTICATED, transient errors retried."""

        async def once() -> Any:
            method = getattr(self.stub, rpc)
            token = await self.token()
            for refreshed in (False, True):
                try:
                    return await method(request, metadata=self.metadata(token), timeout=self.rpc_timeout)
                except grpc.aio.AioRpcError as exc:
                    error = grpc_error(exc, what, rpc)
                if not isinstance(error, SessionExpiredError):
                    raise error
                if refreshed:
                    raise AuthError(f"{error}; a fresh token was refused too", code="UNAUTHENTICATED")
                token = await self.refresh(token)
            raise AssertionError("unreachable")

        return await retry_transient(once, attempts=self.reconnect_attempts, base=self.backoff_base,
                                     cap=self.backoff_cap, what=what, sleep=self.sleep)

    async def get_topic(self, topic: str) -> dict[str, Any]:
        """TopicInfo as a dict: topic_name, tenant_guid, can_publish, can_subscribe, schema_id, rpc_id."""
        info = await self._unary("GetTopic", pb.TopicRequest(topic_name=topic), f"GetTopic {topic}")
        return {name: getattr(info, name) for name in _TOPIC_FIELDS}

    async def warm_schema(self, topic: str) -> None:
        """Fetch and compile the topic's current schema now (GetTopic, then GetSchema into the schema cache), so
        the topic's first event is not kept waiting for it: a channel of hundreds of objects would otherwise
        fetch and compile hundreds of schemas one after another as their first events arrive."""
        schema_id = (await self.get_topic(topic))["schema_id"]
        if schema_id:
            await self.schemas.get(schema_id)

    async def get_schema(self, schema_id: str) -> dict[str, Any]:
        """The Avro schema JSON of a schema id, parsed."""
        info = await self._unary("GetSchema", pb.SchemaRequest(schema_id=schema_id), f"GetSchema {schema_id}")
        try:
            schema = json.loads(info.schema_json)
        except json.JSONDecodeError as exc:
            raise TerminalError(f"GetSchema {schema_id}: schema_json is not JSON ({exc})", code="BAD_SCHEMA") from None
        if not isinstance(schema, dict):
            raise TerminalError(f"GetSchema {schema_id}: schema_json is not an object", code="BAD_SCHEMA")
        return schema

    def subscribe(self, topic: str, *, replay_id: bytes | None, max_pending: int = MAX_PENDING_LIMIT,
                  buffer: int | None = None) -> Subscription:
        """Events of `topic` after `replay_id` (CUSTOM); `None` means every retained event (EARLIEST), never
        LATEST: the pipeline captures a position before its backfill, so a missing one means "from the start"."""
        return Subscription(self, topic, replay_id, max_pending, buffer=buffer)

    async def current_position(self, topic: str, timeout: float) -> bytes | None:
        """The stream's position now, for a handoff: subscribe at LATEST and take the first thing the server
        sends, a keepalive's `latest_replay_id` or the replay id of an event committed after this call began.
        None when nothing arrives within `timeout` (Salesforce sends a keepalive within 270 s,
        docs/pubsub-cdc.md §3)."""
        sub = Subscription(self, topic, None, 1, latest=True)
        try:
            await sub.wait_ready(timeout)
            got = sub.take_ready(1)
            return got[0].replay_id if got else None
        finally:
            await sub.close()


class Subscription:
    """An async iterator of StreamEvent over one topic, resubscribing transparently after transient failures.

    Flow control (docs/pubsub-cdc.md §3): at most `max_pending` events are ever queued here or owed
    by the server together. A FetchRequest asks only for the free room, and only once the consumer has taken
    events out. Reconnects resume CUSTOM after the last event received (queued events are kept), so nothing is
    lost or delivered twice by this side. Errors: ReplayIdInvalidError / TerminalError / AuthError at once;
    TransientError after `reconnect_attempts` consecutive failed attempts. Events already queued are delivered
    before the error.
    """

    def __init__(self, client: PubSubClient, topic: str, replay_id: bytes | None, max_pending: int,
                 latest: bool = False, buffer: int | None = None):
        if not 1 <= max_pending <= MAX_PENDING_LIMIT:
            raise ConfigError(f"max_pending must be within 1..{MAX_PENDING_LIMIT}, not {max_pending}",
                              code="max_pending")
        self._client = client
        self.topic = topic
        self._start = replay_id or None
        self._latest = latest  # first request LATEST (only for current_position)
        # events owed by the server: at most this (Salesforce's cap is 100, docs/pubsub-cdc.md §3)
        self._max = max_pending
        # events held here plus owed: at most this. A buffer larger than max_pending lets the server keep
        # sending while the consumer is busy (applying a batch) without ever owing more than max_pending.
        self._buffer_max = max(buffer or max_pending, max_pending)
        # Ask again while events are still owed only when half the window is free: one FetchRequest per event
        # taken would cost a write per event at tens of thousands of events per second.
        self._threshold = max(1, max_pending // 2)
        self._last_received: bytes | None = None
        self._buffer: deque[StreamEvent] = deque()
        self._queued = 0  # events (not keepalives) in the buffer
        self._owed = 0  # requested on the current stream, not yet received
        self._ready = asyncio.Event()  # wakes the consumer
        self._room = asyncio.Event()  # wakes the request writer
        self._task: asyncio.Task[None] | None = None
        self._failure: BaseException | None = None
        self._done = False
        self._closed = False
        self._progressed = False
        # Counters for tests and metrics.
        self.streams = 0  # Subscribe calls opened
        self.requested = 0  # sum of num_requested sent
        self.received = 0  # events received
        self.peak_outstanding = 0  # highest queued + owed observed
        self.connected = False  # a Subscribe call is open and has answered
        self.decode_seconds = 0.0  # spent decoding received events (the stream's "decode" stage)
        self._call: Any = None  # the open Subscribe call, cancelled first on close
        self._stub: Any = None  # the stream channel's stub, held from the first read to close()

    # -- consumer side -------------------------------------------------------------------------------------

    def __aiter__(self) -> Subscription:
        return self

    async def __anext__(self) -> StreamEvent:
        self._ensure_running()
        while not self._buffer:
            if self._failure is not None:
                raise self._failure
            if self._done or self._closed:
                raise StopAsyncIteration
            self._ready.clear()
            await self._ready.wait()
        event = self._buffer.popleft()
        if not event.keepalive:
            self._queued -= 1
            self._room.set()
        return event

    def take_ready(self, limit: int) -> list[StreamEvent]:
        """The events already received, at most `limit`, without waiting (one hand-off for many events)."""
        self._ensure_running()
        out: list[StreamEvent] = []
        while self._buffer and len(out) < limit:
            event = self._buffer.popleft()
            if not event.keepalive:
                self._queued -= 1
            out.append(event)
        if out:
            self._room.set()
        return out

    async def wait_ready(self, timeout: float) -> None:
        """Wait until an event is ready or `timeout` passes; raises the subscription's failure, and
        StopAsyncIteration once it has ended."""
        self._ensure_running()
        if not self._buffer:
            if self._failure is not None:
                raise self._failure
            if self._done or self._closed:
                raise StopAsyncIteration
            self._ready.clear()
            try:
                await asyncio.wait_for(self._ready.wait(), timeout)
            except TimeoutError:
                pass
        if not self._buffer and self._failure is not None:
            raise self._failure

    def _ensure_running(self) -> None:
        if self._task is None and not self._closed:
            self._stub = self._client.acquire_stream_stub()
            self._task = asyncio.create_task(self._run(), name=f"subscribe {self.topic}")

    async def close(self) -> None:
        """Stop receiving; the iterator ends. Safe to call more than once."""
        self._closed = True
        self._ready.set()
        if self._call is not None:
            # Cancel the call before the task: a grpc.aio read() being cancelled waits for its call to end,
            # so cancelling the task alone can wait forever (seen as a SIGTERM drain that never finished).
            self._call.cancel()
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        stub, self._stub = self._stub, None
        if stub is not None:
            self._client.release_stream_stub(stub)

    async def __aenter__(self) -> Subscription:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # -- receive loop --------------------------------------------------------------------------------------

    @property
    def position(self) -> bytes | None:
        """Where a (re)subscription starts: after the last event received, else the original position."""
        return self._last_received or self._start

    async def _run(self) -> None:
        attempt = 0
        auth_refreshed = False
        try:
            while not self._closed:
                await self._wait_for_room()
                token = await self._client.token()
                self._progressed = False
                try:
                    await self._stream_once(token)
                    error: ReplicatorError = TransientError(f"Subscribe {self.topic}: stream ended", code="ENDED")
                except grpc.aio.AioRpcError as exc:
                    error = grpc_error(exc, f"Subscribe {self.topic}", "Subscribe")
                except TimeoutError:
                    error = TransientError(f"Subscribe {self.topic}: nothing received for "
                                           f"{self._client.stall_timeout:g} s", code="STALLED")
                except ReplicatorError as exc:  # GetSchema failed after its own retries
                    error = exc
                if self._progressed:
                    attempt, auth_refreshed = 0, False
                if isinstance(error, SessionExpiredError):
                    if auth_refreshed:
                        raise AuthError(f"{error}; a fresh token was refused too", code="UNAUTHENTICATED")
                    auth_refreshed = True
                    await self._client.refresh(token)
                    continue
                if not is_transient(error) or event_allocation_exhausted(error):
                    raise error
                attempt += 1
                if attempt >= self._client.reconnect_attempts:
                    raise TransientError(f"{error} (gave up after {attempt} attempts)", code=error.code)
                delay = backoff_delay(error, attempt, base=self._client.backoff_base, cap=self._client.backoff_cap)
                log.warning("pubsub.reconnect", topic=self.topic, attempt=attempt, delay=round(delay, 3),
                            error=str(error), position=(self.position or b"").hex())
                await self._client.sleep(delay)
        except asyncio.CancelledError:
            raise
        except BaseException as exc:  # handed to the consumer after the queued events
            self._failure = exc
        finally:
            self._done = True
            self._ready.set()

    async def _wait_for_room(self) -> None:
        while self._queued >= self._buffer_max:
            self._room.clear()
            await self._room.wait()

    async def _stream_once(self, token: Token) -> None:
        """One Subscribe call, until it ends (returns) or fails (raises)."""
        self._owed = 0
        self.streams += 1
        call = self._call = self._stub.Subscribe(metadata=self._client.metadata(token))
        writer = asyncio.create_task(self._write_requests(call, self.position))
        try:
            while True:
                response = await asyncio.wait_for(call.read(), self._client.stall_timeout)
                if response is grpc.aio.EOF:
                    return
                self._progressed = self.connected = True
                await self._accept(response)
        finally:
            self.connected = False
            self._call = None
            writer.cancel()
            call.cancel()
            await asyncio.gather(writer, return_exceptions=True)

    async def _write_requests(self, call: Any, position: bytes | None) -> None:
        first = True
        while True:
            self._room.clear()
            free = min(self._max - self._owed, self._buffer_max - self._queued - self._owed)
            # Ask in chunks (half the window) so a fast consumer does not turn into one request per event;
            # ask for whatever is free only when the consumer would otherwise starve.
            starving = self._owed == 0 and self._queued == 0
            if free > 0 and (first or starving or free >= self._threshold):
                request = pb.FetchRequest(topic_name=self.topic, num_requested=free)
                # replay options are honoured only on the first request of a call
                # (docs/pubsub-cdc.md §3)
                if first:
                    if position:
                        request.replay_preset = pb.ReplayPreset.CUSTOM
                        request.replay_id = position
                    elif self._latest:
                        request.replay_preset = pb.ReplayPreset.LATEST
                    else:
                        request.replay_preset = pb.ReplayPreset.EARLIEST
                    first = False
                self._owed += free
                self.requested += free
                self.peak_outstanding = max(self.peak_outstanding, self._queued + self._owed)
                try:
                    await call.write(request)
                except (grpc.aio.AioRpcError, asyncio.InvalidStateError):
                    return  # the call ended: the reader sees its status
                continue
            await self._room.wait()

    async def _accept(self, response: Any) -> None:
        if not response.events:
            # Keepalive: the position may be ahead of our last event (docs/pubsub-cdc.md §3 "replay
            # tightening"). Consecutive keepalives collapse into the newest, so a slow consumer does not pile
            # them up.
            if response.latest_replay_id:
                keepalive = StreamEvent(self.topic, replay_id=response.latest_replay_id, keepalive=True)
                if self._buffer and self._buffer[-1].keepalive:
                    self._buffer[-1] = keepalive
                else:
                    self._buffer.append(keepalive)
                self._ready.set()
            return
        self._owed = max(0, self._owed - len(response.events))
        # Counted as queued before they are decoded, and the request writer woken first: the next request goes
        # out (when the buffer has room) while these events decode, instead of after the consumer took them.
        arrived, decoded = len(response.events), 0
        self._queued += arrived
        try:
            self._room.set()
            await asyncio.sleep(0)
            started = time.perf_counter()
            for consumer_event in response.events:
                self._buffer.append(await self._decode(consumer_event))
                decoded += 1
                self.received += 1
                self._last_received = consumer_event.replay_id
            self.decode_seconds += time.perf_counter() - started
        finally:
            self._queued -= arrived - decoded  # a failure part way: only what reached the buffer is queued
            self._ready.set()
        # A buffer larger than max_pending: once every event of the response is queued (owed and queued agree
        # again), let the writer ask for more while the buffer has room, so the server keeps sending while the
        # consumer applies a batch (never more than max_pending owed, nor more than the buffer holds). Only when a
        # request is due: each write races with a server closing the call.
        room = min(self._max - self._owed, self._buffer_max - self._queued - self._owed)
        if self._buffer_max > self._max and room >= self._threshold:
            self._room.set()

    async def _decode(self, consumer_event: Any) -> StreamEvent:
        event = consumer_event.event
        try:
            schema = await self._client.schemas.get(event.schema_id)
        except (TerminalError, ValueError) as exc:
            if isinstance(exc, (AuthError, ConfigError)):
                raise
            # A schema we cannot use (unknown id, not Avro): this event becomes a dead letter.
            return StreamEvent(self.topic, consumer_event.replay_id, error=f"schema {event.schema_id}: {exc}",
                               payload=event.payload, schema_id=event.schema_id)
        return decode_event(self.topic, consumer_event.replay_id, event.schema_id, event.payload, schema)
