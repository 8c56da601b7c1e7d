"""Stream one object: its lifecycle around the batches. Subscribe from the checkpoint, cut the events into
batches (pipeline/batcher.py), apply each (pipeline/applier.py), and resync from a fresh Bulk extract when
the stream cannot continue: an expired or invalid replay position, GAP_OVERFLOW or a wildcard record id, or an
operator's request. A resync never drops the live table, and never resubscribes at LATEST.
"""

from __future__ import annotations

import asyncio
import time

import structlog

from ..config import ObjectSettings, Settings
from ..lifecycle import Phase
from ..model import Checkpoint, ReplayIdInvalidError, ResyncRequested, StreamEvent, TerminalError
from ..observe.metrics import Metrics
from ..postgres.store import Store
from ..retry import restart_delay, stop_ends_waits
from ..salesforce.topics import topic_for
from .applier import BatchApplier, StreamStats
from .backfill import Backfill
from .batcher import Batcher
from .stopping import sleep_or_stop, until_stopped

log = structlog.get_logger(__name__)

# Events taken from the subscription at once. Its bounded queue (≤100 outstanding, the Pub/Sub cap) is what
# asks Salesforce for more, so memory stays bounded end to end.
_TAKE = 100


class ObjectStream:
    """One object's stream: `run()` until stopped; a failure propagates to the service's supervisor."""

    def __init__(self, client, pubsub, store: Store, settings: Settings, name: str, obj: ObjectSettings,
                 metrics: Metrics | None = None):
        self.client, self.pubsub, self.store = client, pubsub, store
        self.settings, self.name, self.obj = settings, name, obj
        self.topic = topic_for(name)
        self.stats = StreamStats()
        self.metrics = metrics or Metrics()
        self.health = self.metrics.object(name)
        self.applier = BatchApplier(client, store, settings, name, obj, self.topic, self.metrics, self.stats)
        self._stop = asyncio.Event()  # replaced by the service's in run()

    @stop_ends_waits
    async def run(self, stop: asyncio.Event) -> None:
        self._stop = stop
        await self.applier.load_schema()
        refused_at: bytes | None = None  # the stored position Pub/Sub last refused without saying why
        captured_after_refusal = False
        while not stop.is_set():
            position = await self.store.load_checkpoint(self.topic)
            requested = await self.store.resync_requested(self.name)
            saved = await self.store.checkpoint_times(self.topic)
            if requested:
                await self.resync(reason="requested by an operator (replicator resync)")
                continue
            h = self.health
            h.phase = Phase.STREAMING
            h.last_commit, h.position_time, h.checkpoint_saved = saved if saved else (None, None, None)
            try:
                await self._stream(position, stop)
            except ResyncRequested:
                continue  # the loop above finds the flag and resyncs
            except ReplayIdInvalidError as exc:
                # Never resubscribe at LATEST: that would lose every event in between (docs/design.md, "What we
                # refuse"). Capture the position now, extract everything again, then stream from it.
                log.error("stream.replay_id_invalid", object=self.name, topic=self.topic, error=str(exc),
                          action="capture the current position, resync from a fresh Bulk extract, stream on")
                await self.resync(reason="replay id expired or invalid", capture=True)
            except TerminalError as exc:
                if exc.code != "INVALID_ARGUMENT" or (captured_after_refusal and position == refused_at):
                    raise  # not about the position, or refused even from a freshly captured one: stop loudly
                if position != refused_at:  # the first refusal of this position: once more, after a pause
                    refused_at, captured_after_refusal = position, False
                    log.warning("stream.subscription_refused", object=self.name, topic=self.topic, error=str(exc),
                                replay_id=(position or b"").hex(), action="subscribe again from the same position")
                    await sleep_or_stop(stop, restart_delay(exc, 1))
                    continue
                # Refused again without a replay-id error code (docs/pubsub-cdc.md §4): the stored
                # position is what Pub/Sub will not take. Same answer as an invalid replay id: resync, loudly.
                log.error("stream.replay_position_refused", object=self.name, topic=self.topic, error=str(exc),
                          replay_id=(position or b"").hex(),
                          action="capture the current position, resync from a fresh Bulk extract, stream on")
                await self.resync(reason="Pub/Sub refused the stored position twice (INVALID_ARGUMENT)", capture=True)
                refused_at, captured_after_refusal = await self.store.load_checkpoint(self.topic), True
            finally:
                h.connected = False

    async def capture_position(self) -> bytes | None:
        """Store the stream's current position as the checkpoint, before an extract (docs/design.md, contract 5):
        streaming from it afterwards leaves no hole, and the version guard makes the overlap harmless."""
        position = await self.pubsub.current_position(self.topic, self.settings.stream.position_timeout_s)
        if position is None:
            await self.store.drop_checkpoint(self.topic)
            log.warning("stream.position_unknown", object=self.name, topic=self.topic,
                        action="the stream will start from the earliest retained event")
        else:
            await self.store.save_checkpoint(Checkpoint(self.topic, position, None))
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
        await self.store.begin_resync(self.name, reason)
        self.health.phase, self.health.connected = Phase.RESYNCING, False
        if capture:
            await until_stopped(self._stop, self.capture_position())
        backfill = Backfill(self.client, self.store, self.settings, self.name, self.obj,
                            self.metrics.backfill_progress)
        await until_stopped(self._stop, backfill.run())
        await self.store.set_phase(self.name, Phase.STREAMING)
        self.health.phase = Phase.STREAMING
        await self.applier.load_schema()

    async def _stream(self, position: bytes | None, stop: asyncio.Event) -> None:
        sub = self.pubsub.subscribe(self.topic, replay_id=position, max_pending=self.settings.stream.num_requested,
                                    buffer=self.settings.stream.batch_max_events)
        batcher = Batcher(self.settings.stream.batch_max_events, self.settings.stream.batch_max_wait_s,
                          max_transaction_events=self.settings.stream.max_transaction_events)
        h = self.health
        poll_every = self.settings.service.control_poll_s
        next_poll = time.monotonic() + poll_every
        decoded = 0.0  # the subscription's decode seconds already counted
        try:
            while not stop.is_set():
                h.connected = sub.connected
                if time.monotonic() >= next_poll:
                    next_poll = time.monotonic() + poll_every
                    if await self.store.resync_requested(self.name):
                        break
                events = sub.take_ready(_TAKE)
                decoded = self._count_decode(sub, decoded)
                if not events:
                    timeout = batcher.next_deadline()
                    if timeout is None and sub.connected:  # nothing received that is not applied: caught up
                        h.idle, h.caught_up_at = True, time.time()
                    batch = batcher.complete() if timeout is not None else None
                    if batch:  # nothing more to read now: commit the complete transactions (group commit)
                        await self.apply_batch(batch)
                        continue
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
            rest = batcher.drain()  # stopping: commit the complete transactions only
            if rest:
                await self.apply_batch(rest)
        finally:
            await sub.close()
        if not stop.is_set():
            raise ResyncRequested("requested by an operator (replicator resync)")

    def _count_decode(self, sub, counted: float) -> float:
        """Count the decode time the subscription added since `counted`; returns the new total."""
        total = getattr(sub, "decode_seconds", 0.0)
        self.applier.count_stage("decode", total - counted)
        return total

    async def apply_batch(self, batch: list[StreamEvent]) -> None:
        """Apply one batch; resync afterwards when it asked for one (GAP_OVERFLOW, a wildcard record id)."""
        resync_reason = await self.applier.apply(batch)
        if resync_reason:
            await self.resync(resync_reason)

