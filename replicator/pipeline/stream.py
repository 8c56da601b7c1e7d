"""Stream one object: Pub/Sub change events → batches → folded row operations → one transaction each.

classify (dead letters, resync triggers) → fold per key → reconcile (fetch full records for gap events and
for updates of rows we do not have) → apply with the checkpoint. An expired or invalid replay position and
GAP_OVERFLOW / wildcard record ids resync the object from a fresh Bulk extract (loudly), without dropping
the live table.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections import deque
from dataclasses import dataclass, field

import structlog

from ..config import ObjectSettings, Settings
from ..model import Checkpoint, DeadLetter, ReplayIdInvalidError, RowOp, StreamEvent
from ..observe.metrics import Metrics
from ..postgres import apply as pg
from ..postgres import state
from ..postgres.sink import PageSink
from .backfill import Backfill
from .batcher import Batcher
from .changes import EMPTY_RECORD_ID, ColumnMap, UnknownFieldError, fold, record_op
from .schema import object_table
from .stopping import until_stopped

log = structlog.get_logger(__name__)

# Events taken from the subscription at once. Its bounded queue (≤100 outstanding, the Pub/Sub cap) is what
# asks Salesforce for more, so memory stays bounded end to end.
_TAKE = 100


LAG_SAMPLES = 100_000
_RECENT_IDS = 10_000
_RECORD_ID = re.compile(r"^[A-Za-z0-9]{15}(?:[A-Za-z0-9]{3})?$")
# Ids per queryAll: 200 ids of 18 characters keep the URL far below Salesforce's 16,384-byte limit (§2.1).
_QUERY_IDS = 200


class ResyncRequested(Exception):
    """An operator asked for a resync (`replicator resync`): the stream stops after committing its batches."""


def topic_for(name: str) -> str:
    """`/data/AccountChangeEvent`; custom objects drop the `c`: `Invoice__c` → `/data/Invoice__ChangeEvent` (§5)."""
    base = name[:-1] if name.endswith("__c") else name
    return f"/data/{base}ChangeEvent"


@dataclass(slots=True)
class StreamStats:
    events: int = 0
    batches: int = 0
    upserts: int = 0
    updates: int = 0
    deletes: int = 0
    skipped: int = 0
    dead_letters: int = 0
    refetched: int = 0
    resyncs: int = 0
    duplicates: int = 0  # events delivered again with a replay id already applied (skipped)
    last_commit_ms: int | None = None
    # commit → applied lag of recent events, seconds (bounded: the newest LAG_SAMPLES)
    lags: deque = field(default_factory=lambda: deque(maxlen=LAG_SAMPLES))


class ObjectStream:
    def __init__(self, client, pubsub, pool, settings: Settings, name: str, obj: ObjectSettings,
                 metrics: Metrics | None = None):
        self.client, self.pubsub, self.pool = client, pubsub, pool
        self.settings, self.name, self.obj = settings, name, obj
        self.topic = topic_for(name)
        self.stats = StreamStats()
        self.metrics = metrics or Metrics()
        self.health = self.metrics.object(name)
        self._stop = asyncio.Event()  # replaced by the service's in run()
        # Replay ids of the newest applied events: a redelivered event (Pub/Sub may deliver an event twice)
        # is skipped and not counted again. Bounded; older duplicates are still harmless (version guard).
        self._recent_ids: set[bytes] = set()
        self._recent_order: deque[bytes] = deque()
        self._batch_id = 0
        self._schemas_seen: set[str] = set()

    async def _load_schema(self) -> None:
        describe = await self.client.describe(self.name)
        info = object_table(describe, self.settings.postgres.schema_, self.obj)
        await PageSink(self.pool, info).prepare()  # adds columns for fields added in Salesforce
        self.spec, self.cmap = info.spec, ColumnMap(info.spec, describe)
        self.sink = pg.StreamSink(self.pool, info)

    async def run(self, stop: asyncio.Event) -> None:
        self._stop = stop
        await self._load_schema()
        while not stop.is_set():
            async with self.pool.acquire() as conn:
                position = await pg.load_checkpoint(conn, self.topic)
                requested = await state.resync_requested(conn, self.name)
                saved = await pg.checkpoint_times(conn, self.topic)
            if requested:
                await self.resync(reason="requested by an operator (replicator resync)")
                continue
            h = self.health
            h.phase = "STREAMING"
            h.last_commit, h.position_time, h.checkpoint_saved = saved if saved else (None, None, None)
            try:
                await self._stream(position, stop)
            except ResyncRequested:
                continue  # the loop above finds the flag and resyncs
            except ReplayIdInvalidError as exc:
                # Never resubscribe at LATEST: that would lose every event in between (STYLE.md). Capture the
                # position now, extract everything again, then stream from the captured position.
                log.error("stream.replay_id_invalid", object=self.name, topic=self.topic, error=str(exc),
                          action="capture the current position, resync from a fresh Bulk extract, stream on")
                await self.resync(reason="replay id expired or invalid", capture=True)
            finally:
                h.connected = False

    async def capture_position(self) -> bytes | None:
        """Store the stream's current position as the checkpoint, before an extract (DESIGN.md contract 5):
        streaming from it afterwards leaves no hole, and the version guard makes the overlap harmless."""
        position = await self.pubsub.current_position(self.topic, self.settings.stream.position_timeout_s)
        async with self.pool.acquire() as conn:
            if position is None:
                await pg.drop_checkpoint(conn, self.topic)
                log.warning("stream.position_unknown", object=self.name, topic=self.topic,
                            action="the stream will start from the earliest retained event")
            else:
                await pg.save_checkpoint(conn, Checkpoint(self.topic, position, None))
                log.info("stream.position_captured", object=self.name, topic=self.topic, replay_id=position.hex())
        return position

    async def resync(self, reason: str, capture: bool = False) -> None:
        """Build the table again from a fresh Bulk extract (keyed upsert into the live table).

        The object is marked RESYNCING first, so a crash at any point restarts the extract (with `capture`,
        a position stored before the crash is never streamed from without the extract that covers its hole).
        """
        self.stats.resyncs += 1
        self.metrics.resyncs.labels(object=self.name).inc()
        log.warning("stream.resync", object=self.name, reason=reason, resyncs=self.stats.resyncs)
        async with self.pool.acquire() as conn:
            await state.begin_resync(conn, self.name, reason)
        self.health.phase, self.health.connected = "RESYNCING", False
        if capture:
            await until_stopped(self._stop, self.capture_position())
        backfill = Backfill(self.client, self.pool, self.settings, self.name, self.obj,
                            self.metrics.backfill_progress)
        await until_stopped(self._stop, backfill.run())
        async with self.pool.acquire() as conn:
            await state.set_phase(conn, self.name, "STREAMING")
        self.health.phase = "STREAMING"
        await self._load_schema()

    async def _stream(self, position: bytes | None, stop: asyncio.Event) -> None:
        sub = self.pubsub.subscribe(self.topic, replay_id=position, max_pending=self.settings.stream.num_requested,
                                    buffer=self.settings.stream.batch_max_events)
        batcher = Batcher(self.settings.stream.batch_max_events, self.settings.stream.batch_max_wait_s,
                          max_transaction_events=self.settings.stream.max_transaction_events)
        h = self.health
        poll_every = self.settings.service.control_poll_s
        next_poll = time.monotonic() + poll_every
        try:
            while not stop.is_set():
                h.connected = sub.connected
                if time.monotonic() >= next_poll:
                    next_poll = time.monotonic() + poll_every
                    async with self.pool.acquire() as conn:
                        if await state.resync_requested(conn, self.name):
                            break
                events = sub.take_ready(_TAKE)
                if not events:
                    timeout = batcher.next_deadline()
                    if timeout is None and sub.connected:  # nothing received that is not applied: caught up
                        h.idle, h.caught_up_at = True, time.time()
                    await sub.wait_ready(0.5 if timeout is None else min(timeout, 0.5))
                    batch = batcher.due()
                    if batch:
                        await self.apply_batch(batch)
                    continue
                h.idle = False
                received = sum(1 for e in events if not e.keepalive)
                if received:
                    self.metrics.events_received.labels(object=self.name).inc(received)
                for event in events:
                    batch = batcher.add(event)
                    if batch:
                        await self.apply_batch(batch)
                if batcher.next_deadline() == 0:  # the time bound passed while events flowed
                    batch = batcher.due()
                    if batch:
                        await self.apply_batch(batch)
            rest = batcher.due(now=float("inf"))  # stopping: commit what is complete
            if rest:
                await self.apply_batch(rest)
        finally:
            await sub.close()
        if not stop.is_set():
            raise ResyncRequested()

    async def apply_batch(self, batch: list[StreamEvent]) -> None:
        started = time.monotonic()
        self._batch_id += 1
        dead: list[DeadLetter] = []
        changes = []
        resync_reason = None
        delivered = 0
        for ev in batch:
            if ev.keepalive:
                continue
            if ev.replay_id in self._recent_ids:  # delivered again (same replay id): applied once already
                self.stats.duplicates += 1
                continue
            self._remember(ev.replay_id)
            delivered += 1
            if ev.error:
                dead.append(DeadLetter(self.name, f"undecodable event: {ev.error}", source="stream",
                                       payload={"replay_id": ev.replay_id.hex(), "schema_id": ev.schema_id,
                                                "payload_hex": ev.payload.hex()}))
                continue
            for ch in ev.changes:
                if ch.object != self.name:
                    dead.append(DeadLetter(ch.object, f"change for an object not configured on {self.topic}",
                                           key=ch.record_id, source="stream",
                                           payload={"replay_id": ev.replay_id.hex(), "type": ch.change_type}))
                elif ch.change_type == "GAP_OVERFLOW" or ch.record_id == EMPTY_RECORD_ID or "*" in ch.record_id:
                    resync_reason = f"{ch.change_type} for {ch.record_id}"
                else:
                    changes.append(ch)
        new_schemas = {ch.schema_id for ch in changes if ch.schema_id} - self._schemas_seen
        if new_schemas:
            # A new schema id means the object's fields changed (§3): add the columns now, even for fields no
            # event has set yet, so the table always has every field Salesforce has.
            if self._schemas_seen:
                log.info("stream.schema_changed", object=self.name, schema_ids=sorted(new_schemas))
                await self._load_schema()
            self._schemas_seen |= new_schemas
        try:
            ops = fold(changes, self.cmap)
        except UnknownFieldError as exc:
            log.info("stream.schema_changed", object=self.name, fields=sorted(exc.fields))
            await self._load_schema()
            ops = fold(changes, self.cmap, strict=False)
        await self._reconcile(ops)
        ops_list, dead2 = self._check_keys(list(ops.values()))
        dead += dead2
        last = batch[-1]
        commits = [e.commit_timestamp for e in batch if e.commit_timestamp]
        checkpoint = Checkpoint(self.topic, last.replay_id, max(commits) if commits else None)
        try:
            result = await self.sink.apply(ops_list, dead, checkpoint, delivered)
        except pg.BadBatchError as exc:
            result = await self._apply_isolating(ops_list, dead, checkpoint, delivered, str(exc))
        s = self.stats
        s.events += delivered
        s.batches += 1
        s.upserts += result.upserts
        s.updates += result.updates
        s.deletes += result.deletes
        s.skipped += result.skipped
        s.dead_letters += len(dead)
        applied_ms = time.time() * 1000
        if commits:
            s.last_commit_ms = max(commits)
            s.lags.extend((applied_ms - c) / 1000 for c in commits)
        lag = (applied_ms - s.last_commit_ms) / 1000 if commits else None
        self._observe(batch, result, dead, delivered, time.monotonic() - started, applied_ms / 1000)
        (log.info if delivered or dead else log.debug)("stream.batch", object=self.name, phase="STREAMING", batch_id=self._batch_id, events=len(batch),
                 rows=len(ops_list), upserts=result.upserts, updates=result.updates, deletes=result.deletes,
                 skipped=result.skipped, dead_letters=len(dead), lag_s=None if lag is None else round(lag, 3),
                 duration_s=round(time.monotonic() - started, 4))
        if resync_reason:
            await self.resync(resync_reason)

    def _remember(self, replay_id: bytes) -> None:
        self._recent_ids.add(replay_id)
        self._recent_order.append(replay_id)
        if len(self._recent_order) > _RECENT_IDS:
            self._recent_ids.discard(self._recent_order.popleft())

    def _observe(self, batch: list[StreamEvent], result, dead: list[DeadLetter], delivered: int,
                 seconds: float, now: float) -> None:
        m, name, h = self.metrics, self.name, self.health
        m.events_applied.labels(object=name).inc(delivered)
        m.batches.labels(object=name).inc()
        m.batch_duration.labels(object=name).observe(seconds)
        m.batch_size.labels(object=name).observe(len(batch))
        for op in ("upserts", "updates", "deletes", "skipped"):
            count = getattr(result, op)
            if count:
                m.rows_written.labels(object=name, op=op.rstrip("s")).inc(count)
        if dead:
            m.dead_letters.labels(object=name, source="stream").inc(len(dead))
        if self.stats.last_commit_ms is not None:
            h.last_commit = self.stats.last_commit_ms / 1000
        last = batch[-1]
        # A keepalive's position is current as of its receipt; an event's is as old as its commit.
        h.position_time = now if last.keepalive or not last.commit_timestamp else last.commit_timestamp / 1000
        h.checkpoint_saved = now

    async def _apply_isolating(self, ops, dead, checkpoint, delivered, error: str):
        """Postgres refused the batch: apply row by row, dead-letter the rows it refuses, then commit the
        checkpoint with the dead letters. The batch is no longer one transaction; nothing is lost."""
        log.warning("stream.batch_refused", object=self.name, error=error, rows=len(ops))
        total = pg.ApplyResult()
        for op in ops:
            try:
                r = await self.sink.apply([op], [], None)
            except pg.BadBatchError as exc:
                dead.append(DeadLetter(self.name, f"postgres refused the change: {exc}", key=op.key,
                                       source="stream", payload={"kind": op.kind, "values": {
                                           k: str(v) for k, v in op.values.items()}}))
                continue
            total.upserts += r.upserts
            total.updates += r.updates
            total.deletes += r.deletes
            total.skipped += r.skipped
        await self.sink.apply([], dead, checkpoint, delivered)
        return total

    async def _reconcile(self, ops: dict[str, RowOp]) -> None:
        """Gap events, and updates of rows we do not have: fetch the full records by id (≤2,000 a call)."""
        updates = [k for k, o in ops.items() if o.kind == "update"]
        if updates:
            have = await self.sink.existing_ids(updates)
            for k in updates:
                if k not in have:
                    ops[k] = RowOp(k, "refetch", version=ops[k].version, commit_ms=ops[k].commit_ms)
        wanted = [k for k, o in ops.items() if o.kind == "refetch"]
        if not wanted:
            return
        records = await self.client.retrieve(self.name, wanted, self.spec.fields)
        self.stats.refetched += len(wanted)
        self.metrics.gaps_healed.labels(object=self.name).inc(len(wanted))
        gone = [key for key, record in zip(wanted, records, strict=True) if record is None]
        deleted = await self._deleted_records(gone) if gone else {}
        for key, record in zip(wanted, records, strict=True):
            record = record or deleted.get(key)
            if record is None:  # never visible to us: delete at the event's version
                ops[key] = RowOp(key, "delete", version=ops[key].version, commit_ms=ops[key].commit_ms)
            else:  # a deleted record keeps its last values (soft delete), like the org's recycle bin
                ops[key] = record_op(record, self.spec, ops[key].commit_ms)

    async def _deleted_records(self, ids: list[str]) -> dict[str, dict]:
        """Records sObject Collections no longer returns (deleted): fetched with queryAll, which includes them."""
        found: dict[str, dict] = {}
        safe = [i for i in ids if _RECORD_ID.match(i)]  # ids go into SOQL text: only well-formed ones
        for start in range(0, len(safe), _QUERY_IDS):
            chunk = safe[start:start + _QUERY_IDS]
            soql = (f"SELECT {', '.join(self.spec.fields)} FROM {self.name} "
                    f"WHERE Id IN ({', '.join(repr(i) for i in chunk)})")
            async for record in self.client.query(soql, all_rows=True):
                found[record["Id"]] = record
        return found

    def _check_keys(self, ops: list[RowOp]) -> tuple[list[RowOp], list[DeadLetter]]:
        """A full record for a table keyed by an external id needs that id; one without it is a dead letter."""
        if self.spec.key == "id":
            return ops, []
        good, dead = [], []
        for o in ops:
            if o.kind in ("upsert", "undelete") and not o.values.get(self.spec.key):
                dead.append(DeadLetter(self.name, f"record has no value for the key field {self.obj.key}",
                                       key=o.key, source="stream", payload={"values": {k: str(v) for k, v in
                                                                                       o.values.items()}}))
            else:
                good.append(o)
        return good, dead
