"""Platform event topics (`/event/X__e`): every event appended to a table, keyed by replay id, with the
checkpoint in the same transaction, so a redelivery or a restart adds nothing twice."""

from __future__ import annotations

import asyncio

import structlog

from ..model import Checkpoint, ConfigError, DeadLetter, StreamEvent, TerminalError
from ..postgres.store import Store
from ..retry import stop_ends_waits
from ..salesforce.values import strip_nul
from .batcher import Batcher

log = structlog.get_logger(__name__)


class PlatformEventStream:
    def __init__(self, pubsub, store: Store, settings, name: str):
        self.pubsub, self.store, self.settings, self.name = pubsub, store, settings, name
        self.topic = f"/event/{name}"
        self.schema, self.table = settings.postgres.schema_, name.lower()
        self.appended = 0

    async def run(self, stop: asyncio.Event) -> None:
        """Append the topic's events until `stop`. A topic the org lacks (Pub/Sub NOT_FOUND, docs/pubsub-cdc.md §4)
        is a configuration error: no retry fixes it (the service stops this topic, FAILED)."""
        try:
            await self._run(stop)
        except TerminalError as exc:
            if exc.code != "TOPIC_NOT_FOUND":
                raise
            raise ConfigError(f"stream.platform_events: {self.name}: the org has no topic {self.topic}: check the "
                              "event's API name (ending __e) and that the integration user may read it") from exc

    @stop_ends_waits
    async def _run(self, stop: asyncio.Event) -> None:
        await self.store.prepare_events(self.schema, self.table)
        position = await self.store.load_checkpoint(self.topic)
        sub = self.pubsub.subscribe(self.topic, replay_id=position)
        batcher = Batcher(self.settings.stream.batch_max_events, self.settings.stream.batch_max_wait_s, hold_s=0)
        it = sub.__aiter__()
        pending: asyncio.Task | None = None
        try:
            while not stop.is_set():
                if pending is None:
                    pending = asyncio.ensure_future(it.__anext__())
                done, _ = await asyncio.wait({pending}, timeout=batcher.next_deadline() or 0.5)
                if done:
                    event = pending.result()
                    pending = None
                    batch = batcher.add(event)
                else:
                    batch = batcher.due()
                if batch:
                    await self._append(batch)
        finally:
            if pending is not None:
                pending.cancel()
            await sub.close()

    async def _append(self, batch: list[StreamEvent]) -> None:
        rows, dead = [], []
        for e in batch:
            if e.error:
                dead.append(DeadLetter(self.name, f"undecodable event: {e.error}", source="stream",
                                       payload={"replay_id": e.replay_id.hex(), "payload_hex": e.payload.hex()}))
            elif not e.keepalive:
                # stored as jsonb, which cannot hold NUL (salesforce/values.py)
                rows.append((e.replay_id, e.schema_id, None, strip_nul(e.record or {})))
        events = sum(1 for e in batch if not e.keepalive)
        checkpoint = Checkpoint(self.topic, batch[-1].replay_id, None)
        self.appended += await self.store.append_events(self.schema, self.table, rows, checkpoint, events, dead)
        if events:
            log.info("platform_events.batch", topic=self.topic, events=events, appended=len(rows),
                     dead_letters=len(dead))
