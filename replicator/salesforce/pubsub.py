"""The Pub/Sub API subscriber (gRPC, docs/pubsub-cdc.md §1–4): auth metadata, flow control,
reconnects, decoding.

`PubSubClient.subscribe(topic, replay_id=…)` gives a `Subscription`, an async iterator of `model.StreamEvent`:
change events decoded by `cdc.decode_event` with the schema of each event's own `schema_id`, keepalives, and
dead-letter events for payloads that do not decode. It never skips an event and never moves to LATEST on its
own: a refused replay id raises `model.ReplayIdInvalidError`, and the pipeline resyncs.

`Subscription` itself (flow control, reconnects, decoding) is in salesforce/subscription.py. The only modules (with
`protocol/`) that import grpc. gRPC failures are mapped once by `errors.map_grpc_status`.
"""

from __future__ import annotations

import inspect
import json
from collections.abc import Awaitable, Callable
from typing import Any

import grpc
import structlog

from replicator.model import (
    AuthError,
    ConfigError,
    ServiceConfigError,
    SessionExpiredError,
    TerminalError,
)
from replicator.protocol import pubsub_api_pb2 as pb
from replicator.protocol import pubsub_api_pb2_grpc as pb_grpc
from replicator.retry import pause, retry_transient
from replicator.salesforce.auth import Token, org_id_of
from replicator.salesforce.cdc import SchemaCache
from replicator.salesforce.subscription import (  # noqa: F401 - event_allocation_exhausted: part of this API
    MAX_PENDING_LIMIT,
    Subscription,
    event_allocation_exhausted,
    grpc_error,
)

log = structlog.get_logger(__name__)

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

TokenSource = Any  # a TokenProvider (token() / refresh(stale)), or a callable returning a Token (or awaitable)


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
        sleep: Callable[[float], Awaitable[None]] = pause,  # ends at once on a stop (retry.waits_end_on)
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
            raise ServiceConfigError("the org id is unknown: set tenant_id (the 00D… org id)", code="tenant_id")
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
