"""A fake Pub/Sub API (the generated servicer on a loopback port) and helpers for test_sf_pubsub.py."""

from __future__ import annotations

import asyncio
import copy
import io
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import fastavro
import grpc

from replicator.protocol import pubsub_api_pb2 as pb
from replicator.protocol import pubsub_api_pb2_grpc as pb_grpc
from replicator.salesforce.auth import Token

SCHEMA = json.loads((Path(__file__).parent / "data" / "AccountChangeEvent.v1.avsc").read_text())
PARSED = fastavro.parse_schema(copy.deepcopy(SCHEMA))
TOPIC = "/data/AccountChangeEvent"
SCHEMA_ID = "acct-v1"
ORG = "00D000000000001AAA"
REPLAYID_CORRUPTED = "sfdc.platform.eventbus.grpc.subscription.fetch.replayid.corrupted"


def replay(n: int) -> bytes:
    return n.to_bytes(8, "big") + b"\0\0"


def update_payload(n: int) -> bytes:
    record: dict[str, Any] = {f["name"]: None for f in SCHEMA["fields"]}
    record["ChangeEventHeader"] = {
        "entityName": "Account", "recordIds": [f"001{n:015d}"], "changeType": "UPDATE", "changeOrigin": "",
        "transactionKey": f"tx-{n}", "sequenceNumber": 1, "commitTimestamp": 1_700_000_000_000 + n,
        "commitNumber": n, "commitUser": "005000000000001AAA", "nulledFields": [], "diffFields": [],
        "changedFields": ["0x800100"],
    }
    record["Fax"] = f"fax-{n}"
    record["LastModifiedDate"] = 1_700_000_000_000 + n
    out = io.BytesIO()
    fastavro.schemaless_writer(out, PARSED, record)
    return out.getvalue()


async def until(condition: Callable[[], bool], timeout: float = 5.0) -> None:
    """Wait for a condition, failing after `timeout` seconds."""
    async with asyncio.timeout(timeout):
        while not condition():
            await asyncio.sleep(0.001)


class FakePubSub(pb_grpc.PubSubServicer):
    def __init__(self) -> None:
        self.events: list[tuple[bytes, str, bytes]] = []  # (replay id, schema id, payload)
        self.valid_tokens = {"tok-1"}
        self.calls: list[dict[str, Any]] = []  # per Subscribe call: first request, requests, metadata
        self.consumed = 0  # events the test has taken out of the subscription (set by the test)
        self.violations: list[str] = []
        self.drop_after: list[tuple[int, grpc.StatusCode, str]] = []  # per call, in order: abort after n events
        self.end_after: list[int] = []  # per call: return (stream ends OK) after n events
        self.keepalive = asyncio.Event()
        self.keepalive_id = replay(999)
        self.subscribe_error: tuple[grpc.StatusCode, str, str | None] | None = None
        self.new_events = asyncio.Event()
        self.schema_json = json.dumps(SCHEMA)
        self.schema_requests = 0
        self.requested_total = 0  # across calls
        self.delivered_total = 0

    def add(self, count: int) -> None:
        start = len(self.events) + 1
        for n in range(start, start + count):
            self.events.append((replay(n), SCHEMA_ID, update_payload(n)))
        self.new_events.set()

    async def _auth(self, context: grpc.aio.ServicerContext) -> dict[str, str]:
        md = {k: v for k, v in context.invocation_metadata()}
        if md.get("accesstoken") not in self.valid_tokens:
            await context.abort(grpc.StatusCode.UNAUTHENTICATED, "An authentication exception occurred.",
                                trailing_metadata=(("error-code", "sfdc.platform.eventbus.grpc.service.auth.error"),))
        return md

    async def GetSchema(self, request, context):
        await self._auth(context)
        self.schema_requests += 1
        if request.schema_id != SCHEMA_ID:
            await context.abort(grpc.StatusCode.NOT_FOUND, "schema not found")
        return pb.SchemaInfo(schema_json=self.schema_json, schema_id=SCHEMA_ID, rpc_id="r")

    async def GetTopic(self, request, context):
        await self._auth(context)
        if request.topic_name != TOPIC:
            await context.abort(grpc.StatusCode.NOT_FOUND, f"The topic information for {request.topic_name} not found")
        return pb.TopicInfo(topic_name=TOPIC, tenant_guid=ORG, can_subscribe=True, schema_id=SCHEMA_ID, rpc_id="r")

    async def Subscribe(self, request_iterator, context):
        md = await self._auth(context)
        call: dict[str, Any] = {"metadata": md, "requests": []}
        self.calls.append(call)
        index = len(self.calls) - 1
        first = await context.read()
        call["first"] = first
        if self.subscribe_error:
            code, details, error_code = self.subscribe_error
            await context.abort(code, details, trailing_metadata=(("error-code", error_code),) if error_code else ())
        if first.topic_name != TOPIC:
            await context.abort(grpc.StatusCode.NOT_FOUND, "topic not found")
        ids = [e[0] for e in self.events]
        if first.replay_preset == pb.ReplayPreset.EARLIEST:
            position = 0
        elif first.replay_preset == pb.ReplayPreset.CUSTOM:
            if first.replay_id not in ids:
                await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "The Replay ID validation failed.",
                                    trailing_metadata=(("error-code", REPLAYID_CORRUPTED),))
            position = ids.index(first.replay_id) + 1
        else:
            position = len(self.events)
        pending = 0
        more = asyncio.Event()

        def on_request(request: pb.FetchRequest) -> None:
            nonlocal pending
            call["requests"].append(request)
            pending += request.num_requested
            self.requested_total += request.num_requested
            outstanding = self.requested_total - self.consumed_total()
            if outstanding > self.max_pending:
                self.violations.append(f"outstanding {outstanding} > {self.max_pending}")
            more.set()

        on_request(first)

        async def read_requests() -> None:
            while True:
                request = await context.read()
                if request is grpc.aio.EOF:
                    return
                on_request(request)

        reader = asyncio.create_task(read_requests())
        sent = 0
        drop = self.drop_after[index] if index < len(self.drop_after) else None
        end = self.end_after[index] if index < len(self.end_after) else None
        try:
            while True:
                if drop and sent >= drop[0]:
                    await context.abort(drop[1], drop[2])
                if end is not None and sent >= end:
                    return
                if pending > 0 and position < len(self.events):
                    count = min(pending, len(self.events) - position, 7)  # several responses per request
                    if drop:
                        count = min(count, drop[0] - sent)
                    if end is not None:
                        count = min(count, end - sent)
                    batch = self.events[position:position + count]
                    position += count
                    pending -= count
                    sent += count
                    self.delivered_total += count
                    await context.write(pb.FetchResponse(
                        events=[pb.ConsumerEvent(event=pb.ProducerEvent(schema_id=s, payload=p), replay_id=r)
                                for r, s, p in batch],
                        latest_replay_id=batch[-1][0], pending_num_requested=pending, rpc_id="r"))
                    continue
                if pending > 0 and self.keepalive.is_set():
                    self.keepalive.clear()
                    await context.write(pb.FetchResponse(latest_replay_id=self.keepalive_id,
                                                         pending_num_requested=pending))
                    continue
                more.clear()
                self.new_events.clear()
                waiters = [asyncio.ensure_future(e.wait()) for e in (more, self.new_events, self.keepalive)]
                await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
                for w in waiters:
                    w.cancel()
        finally:
            reader.cancel()

    max_pending = 100
    consumed_total: Callable[[], int] = staticmethod(lambda: 0)


class FakeTokens:
    def __init__(self, first: str = "tok-1", org_id: str | None = ORG) -> None:
        self.current = Token(first, "https://org.example.test", 0.0, org_id)
        self.refreshes = 0

    async def token(self) -> Token:
        return self.current

    async def refresh(self, stale: Token) -> Token:
        if self.current is stale:
            self.refreshes += 1
            self.current = Token(f"tok-{self.refreshes + 1}", stale.instance_url, 0.0, stale.org_id)
        return self.current
