"""Many objects over ONE subscription: a channel (`/data/ChangeEvents`, or a custom `/data/<Name>__chn`) carries
the change events of many entities (docs/pubsub-cdc.md §5). `ChannelStream` subscribes once, cuts the events into
batches (pipeline/batcher.py, whole Salesforce transactions), routes each event by its
`ChangeEventHeader.entityName` to the member object's BatchApplier (pipeline/applier.py: classify → schema → fold
→ diffs → reconcile → keys), and commits every object's rows with ONE checkpoint, the channel's (topic = the channel
name; replay ids are per channel), in one Postgres transaction (docs/design.md, contract 4).

- Events on one channel carry their own entity's schema id: each is decoded with its own (salesforce/pubsub.py's
  schema cache is by schema id).
- Events of entities that are not members (not configured, or running on a subscription of their own) are
  skipped, counted per object (`replicator_channel_events_skipped`).
- One object that needs a resync (GAP_OVERFLOW, a wildcard record id, an operator's `replicator resync`) leaves the
  channel: after a GAP_OVERFLOW it is marked RESYNCING before the batch commits (so a crash at any instant still
  resyncs it; an operator's request stays raised until the resync clears it), then handed to `detach`, which runs it on a subscription of its own with the usual handoff (capture its topic's
  position, extract, stream), while the channel goes on with the others. A channel cannot be replayed for one
  object, and applying its events during its extract would let an older extract row win a same-second tie.
- An expired or refused channel position resyncs every member from a freshly captured channel position (never
  LATEST silently: docs/design.md, "What we refuse").

What the service decides around it (app/service.py, docs/channels.md): which objects are
members, the first start's handoff (capture the channel position, then extract every member), restarts.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Awaitable, Callable

import structlog

from ..config import Settings
from ..lifecycle import Phase
from ..model import Checkpoint, DeadLetter, RejectedDataError, ReplayIdInvalidError, StreamEvent
from ..observe.metrics import Metrics
from ..postgres.apply import ApplyResult, UpdatesMissed
from ..postgres.store import Store
from ..retry import stop_ends_waits
from .backfill import Backfill
from .batcher import Batcher
from .stopping import until_stopped
from .stream import ObjectStream

log = structlog.get_logger(__name__)

# Objects described or extracted at once when a channel starts or resyncs: each extract holds Postgres connections
# (backfill.parallel_pages) and a Bulk job; a few at a time keep the pool and the org's job queue usable.
PARALLEL_OBJECTS = 4

# Schemas fetched at once before a channel subscribes (GetTopic and GetSchema, one unary call each).
WARM_PARALLEL = 16

Detach = Callable[[str, str], Awaitable[None]]


class ChannelStream:
    """Every member's change events over one subscription; `run()` until stopped."""

    def __init__(self, pubsub, store: Store, settings: Settings, members: dict[str, ObjectStream],
                 metrics: Metrics, detach: Detach):
        self.pubsub, self.store, self.settings = pubsub, store, settings
        self.topic = settings.stream.channel
        self.members = dict(members)
        self.metrics, self.detach = metrics, detach
        self.skipped: Counter = Counter()  # events of objects this channel does not serve
        self._stop = asyncio.Event()

    @stop_ends_waits
    async def run(self, stop: asyncio.Event) -> None:
        self._stop = stop
        described = [s for s in self.members.values() if getattr(s.applier, "sink", None) is None]
        await for_each(described, lambda s: s.applier.load_schema())  # the ones not described at start
        await for_each(list(self.members.values()), self._warm, parallel=WARM_PARALLEL)
        while not stop.is_set():
            position = await self.store.load_checkpoint(self.topic)
            for stream in self.members.values():
                stream.health.phase = Phase.STREAMING
            try:
                await self._stream(position, stop)
            except ReplayIdInvalidError as exc:
                log.error("channel.replay_id_invalid", channel=self.topic, error=str(exc),
                          action="capture the current position, resync every object of the channel, stream on")
                await self.resync_all("channel replay id expired or invalid")
            finally:
                for stream in self.members.values():
                    stream.health.connected = False

    async def _warm(self, stream: ObjectStream) -> None:
        """The member's change-event schema fetched and compiled before the first event (salesforce/pubsub.py);
        a failure here only leaves it to the first event."""
        try:
            await self.pubsub.warm_schema(stream.topic)
        except Exception as exc:  # noqa: BLE001 - an optimisation: the event path fetches it again and reports
            log.warning("channel.schema_not_warmed", channel=self.topic, object=stream.name, error=str(exc))

    async def resync_all(self, reason: str) -> None:
        """Capture the channel's position, then extract every member again (keyed upsert into the live tables)."""
        for name in self.members:
            await self.store.begin_resync(name, reason)
        await until_stopped(self._stop, capture_channel_position(self.pubsub, self.store, self.settings))
        await backfill_members(self.store, self.settings, list(self.members.values()), self._stop)

    async def _stream(self, position: bytes | None, stop: asyncio.Event) -> None:
        stream_cfg = self.settings.stream
        sub = self.pubsub.subscribe(self.topic, replay_id=position, max_pending=stream_cfg.num_requested,
                                    buffer=stream_cfg.batch_max_events)
        batcher = Batcher(stream_cfg.batch_max_events, stream_cfg.batch_max_wait_s,
                          max_transaction_events=stream_cfg.max_transaction_events)
        poll_every = self.settings.service.control_poll_s
        next_poll = time.monotonic() + poll_every
        try:
            while not stop.is_set():
                for member in self.members.values():
                    member.health.connected = sub.connected
                if time.monotonic() >= next_poll:
                    next_poll = time.monotonic() + poll_every
                    await self._operator_requests()
                # Everything received so far (up to a batch): while a batch of many objects commits, the next one
                # gathers, so each object's fixed cost per batch (a lookup, a statement) is paid for more events.
                events = sub.take_ready(stream_cfg.batch_max_events)
                if not events:
                    timeout = batcher.next_deadline()
                    if timeout is None and sub.connected:  # nothing received that is not applied: caught up
                        self._mark(idle=True, caught_up_at=time.time())
                    await sub.wait_ready(0.5 if timeout is None else min(timeout, 0.5))
                    if batch := batcher.due():
                        await self.apply_batch(batch)
                    continue
                self._mark(idle=False)
                for event in events:
                    if batch := batcher.add(event):
                        await self.apply_batch(batch)
                if batcher.next_deadline() == 0 and (batch := batcher.due()):
                    await self.apply_batch(batch)
            if rest := batcher.drain():  # stopping: commit the complete transactions only
                await self.apply_batch(rest)
        finally:
            await sub.close()

    async def _operator_requests(self) -> None:
        for name in sorted(await self.store.resync_requests() & set(self.members)):
            await self._detach(name, "requested by an operator (replicator resync)")

    def route(self, batch: list[StreamEvent]) -> tuple[dict[str, list[StreamEvent]], list[DeadLetter]]:
        """The batch's events per member object (in order), and dead letters for events that did not decode."""
        out: dict[str, list[StreamEvent]] = {}
        dead: list[DeadLetter] = []
        for ev in batch:
            if ev.keepalive:
                continue
            if ev.error:
                dead.append(DeadLetter(self.topic, f"undecodable event: {ev.error}", source="stream",
                                       payload={"replay_id": ev.replay_id.hex(), "schema_id": ev.schema_id,
                                                "payload_hex": ev.payload.hex()}))
                continue
            name = ev.changes[0].object if ev.changes else ""
            if name in self.members:
                out.setdefault(name, []).append(ev)
            else:
                self.skipped[name] += 1
                self.metrics.channel_skipped.labels(channel=self.topic, object=name).inc()
        return out, dead

    async def apply_batch(self, batch: list[StreamEvent]) -> None:
        """One channel batch: each member's steps, then every member's rows, the dead letters and the channel's
        checkpoint in one transaction; then the objects that asked for a resync leave the channel."""
        started = time.monotonic()
        routed, dead = self.route(batch)
        # The objects' steps run concurrently: their fetches and lookups are independent round trips (the pool
        # bounds them), and only the commit below must be one transaction.
        appliers = [self.members[name].applier for name in routed]
        steps = await asyncio.gather(*(a.prepare(events) for a, events in zip(appliers, routed.values(), strict=True)))
        prepared = [(name, applier, events, found, rows) for (name, events), applier, (found, rows)
                    in zip(routed.items(), appliers, steps, strict=True)]
        for _, _, _, found, _ in prepared:
            dead += found.dead
        resync = {name: found.resync_reason for name, _, _, found, _ in prepared if found.resync_reason}
        for name in resync:  # before the commit moves the channel past the event that asks (counted by the resync)
            await self.store.set_phase(name, Phase.RESYNCING)
        committing = time.perf_counter()
        commits = [e.commit_timestamp for e in batch if e.commit_timestamp]
        checkpoint = Checkpoint(self.topic, batch[-1].replay_id, max(commits) if commits else None)
        delivered = sum(p[3].delivered for p in prepared) + sum(1 for e in batch if e.error)
        # Rows of partial updates are not looked up first (BatchApplier.looks_up_first): the commit finds a
        # missing one, and only then are they looked up and the batch applied again.
        must_find = not all(applier.looks_up_first() for applier in appliers)
        members = [(name, len(events), max((e.commit_timestamp for e in events if e.commit_timestamp), default=None))
                   for name, _, events, _, _ in prepared]  # each member's own figures (`replicator status`)
        try:
            try:
                results = await self.store.apply_objects(
                    [(applier.sink, rows) for _, applier, _, _, rows in prepared], dead, checkpoint, delivered,
                    must_find, members)
            except UpdatesMissed as exc:
                log.info("channel.rows_looked_up", channel=self.topic, reason=str(exc))
                prepared, must_find = await self._looked_up(prepared), False
                results = await self.store.apply_objects(
                    [(applier.sink, rows) for _, applier, _, _, rows in prepared], dead, checkpoint, delivered,
                    members=members)
        except RejectedDataError as exc:
            if must_find:  # each object alone finds no missing row: look them up first
                prepared = await self._looked_up(prepared)
            results = await self._commit_apart(prepared, dead, checkpoint, delivered, str(exc), members)
        seconds, committed = time.monotonic() - started, time.perf_counter() - committing
        total = ApplyResult()
        all_rows = sum(len(p[4]) for p in prepared)
        for (_, applier, events, found, rows), result in zip(prepared, results, strict=True):
            applier.count_stage("commit", committed * len(rows) / (all_rows or 1))  # the shared commit, by rows
            applier.observe(events, found, rows, result, seconds, log_line=False)
            total.merge(result)
        now = time.time()  # the channel's checkpoint is every member's
        # One line for the batch (each object's own line is at debug level: hundreds of objects a batch)
        lag = round(now - max(commits) / 1000, 3) if commits else None
        (log.info if delivered or dead else log.debug)(
            "channel.batch", channel=self.topic, events=len(batch), objects=len(prepared),
            rows=all_rows, upserts=total.upserts, updates=total.updates,
            deletes=total.deletes, skipped=total.skipped, dead_letters=len(dead) + total.dead_letters, lag_s=lag,
            duration_s=round(seconds, 4), first_replay_id=batch[0].replay_id.hex(), last_replay_id=batch[-1].replay_id.hex())
        last = batch[-1]
        self._mark(checkpoint_saved=now,
                   position_time=now if last.keepalive or not last.commit_timestamp else last.commit_timestamp / 1000)
        for name, reason in resync.items():
            await self._detach(name, reason)

    @staticmethod
    async def _looked_up(prepared: list) -> list:
        """The batch's rows with partial updates' rows looked up (missing records fetched by Id), per object; an
        object that looked its rows up before (`looks_up_first`) keeps them."""

        async def looked(applier, rows: list) -> list:
            return rows if applier.looks_up_first() else await applier.look_up(rows)

        rows = await asyncio.gather(*(looked(applier, rows) for _, applier, _, _, rows in prepared))
        return [(name, applier, events, found, looked) for (name, applier, events, found, _), looked
                in zip(prepared, rows, strict=True)]

    async def _commit_apart(self, prepared: list, dead: list[DeadLetter], checkpoint: Checkpoint, delivered: int,
                            error: str, members: list) -> list:
        """Postgres refused a value: each object commits alone (the applier isolates the rows it refuses, with dead
        letters), then the checkpoint. Not one transaction any more; a crash in between applies the batch again,
        which the version guard makes harmless."""
        log.warning("channel.batch_refused", channel=self.topic, error=error, objects=len(prepared))
        results = []
        for _, applier, _, found, rows in prepared:
            results.append(await applier.commit(rows, found.dead, None, 0))
        own = [d for d in dead if d.object == self.topic]  # the undecodable events
        await self.store.apply_objects([], own, checkpoint, delivered, members=members)
        return results

    def _mark(self, **health) -> None:
        """Set these health fields of every member (the channel's connection, position and idleness are theirs)."""
        for stream in self.members.values():
            for key, value in health.items():
                setattr(stream.health, key, value)

    async def _detach(self, name: str, reason: str) -> None:
        if self.members.pop(name, None) is None:
            return
        log.warning("channel.object_detached", channel=self.topic, object=name, reason=reason,
                    action="resync it and stream it on a subscription of its own")
        await self.detach(name, reason)


async def for_each(streams: list[ObjectStream], step: Callable[[ObjectStream], Awaitable[None]],
                   parallel: int = PARALLEL_OBJECTS) -> None:
    """Run `step` for every stream, `parallel` at a time."""
    gate = asyncio.Semaphore(parallel)

    async def one(stream: ObjectStream) -> None:
        async with gate:
            await step(stream)

    await asyncio.gather(*(one(s) for s in streams))


async def capture_channel_position(pubsub, store: Store, settings: Settings) -> bytes | None:
    """Store the channel's current position as its checkpoint, before any member's extract (docs/design.md,
    contract 5); without one the channel starts from the earliest retained event."""
    channel = settings.stream.channel
    position = await pubsub.current_position(channel, settings.stream.position_timeout_s)
    if position is None:
        await store.drop_checkpoint(channel)
        log.warning("channel.position_unknown", channel=channel,
                    action="the channel will start from the earliest retained event")
    else:
        await store.save_checkpoint(Checkpoint(channel, position, None))
        log.info("channel.position_captured", channel=channel, replay_id=position.hex())
    return position


async def backfill_members(store: Store, settings: Settings, streams: list[ObjectStream],
                           stop: asyncio.Event) -> None:
    """Extract every member not yet streaming (a backfill resumes its job; a resync starts a new one), a few at a
    time, then mark them STREAMING. Run after the channel's position was captured and before the channel streams
    from it, so the stream replays every change after the position over the extracted rows."""

    async def extract(stream: ObjectStream) -> None:
        st = await store.get_object(stream.name)
        if st is not None and st.phase in (Phase.BACKFILLED, Phase.STREAMING):
            return  # described when the channel starts
        stream.health.phase = Phase.RESYNCING if st is not None and st.phase == Phase.RESYNCING else Phase.BACKFILLING
        backfill = Backfill(stream.client, store, settings, stream.name, stream.obj, stream.metrics.backfill_progress)
        await until_stopped(stop, backfill.run())
        await store.set_phase(stream.name, Phase.STREAMING)
        await stream.applier.load_schema()

    await for_each(streams, extract)

