"""One Pub/Sub API subscription (docs/pubsub-cdc.md §3–4): flow control, reconnects, decoding, and the errors a
Subscribe ends with. `PubSubClient.subscribe` (salesforce/pubsub.py) gives one; it uses the client's stubs, tokens
and schema cache.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from typing import TYPE_CHECKING, Any

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
from replicator.retry import backoff_delay, is_transient, wait_event
from replicator.salesforce.cdc import decode_event
from replicator.salesforce.errors import map_grpc_status

if TYPE_CHECKING:
    from replicator.salesforce.auth import Token
    from replicator.salesforce.pubsub import PubSubClient

log = structlog.get_logger(__name__)

# At most 100 events may be outstanding per Subscribe call; the server silently caps larger requests
# (docs/pubsub-cdc.md §3).
MAX_PENDING_LIMIT = 100
# The org's daily event delivery allocation is used up: Salesforce ends the subscription (docs/pubsub-cdc.md §4,
# "Daily delivery allocation exhausted"; Change Data Capture Developer Guide, "Change Data Capture Allocations",
# https://developer.salesforce.com/docs/atlas.en-us.change_data_capture.meta/change_data_capture/cdc_allocations.htm).
# Its gRPC status is not documented: the `error-code` trailer alone identifies it.
EVENT_ALLOCATION_CODE = "subscription.limit.exceeded"


def event_allocation_exhausted(exc: BaseException) -> bool:
    """True for the error a Subscribe ends with once the org's event delivery allocation is used up: resubscribing
    cannot help for hours, so it is surfaced at once (the service polls the object meanwhile)."""
    return isinstance(exc, ReplicatorError) and (getattr(exc, "code", None) or "").endswith(EVENT_ALLOCATION_CODE)


def grpc_error(exc: grpc.aio.AioRpcError, what: str, rpc: str = "") -> ReplicatorError:
    """The model error for a failed RPC, with the Salesforce `error-code` trailer
    (docs/pubsub-cdc.md §4)."""
    error_code = None
    for key, value in exc.trailing_metadata() or ():
        if key == "error-code":
            error_code = value.decode() if isinstance(value, bytes) else str(value)
    return map_grpc_status(exc.code().name, exc.details() or "", error_code, what=what, rpc=rpc)


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
            await wait_event(self._ready, timeout)
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
                async with asyncio.timeout(self._client.stall_timeout):  # not wait_for (retry.wait_event)
                    response = await call.read()
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
