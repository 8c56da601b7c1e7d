"""One object kept current on its own: change events on a subscription of its own (`Way.TOPIC`) or poll rounds
(`Way.POLL`); a unit of the service (app/service.py), retried with backoff when it fails.

Each round: decide the way (app/handoffs.py `choose_mode`), run the handoffs from the stored way to it
(lifecycle.route), then extract when the object needs it (its position captured first) and run the way until a
watcher halts it (the service stops, the topic appeared or went away, the event allocation ran out or came back).
"""

from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING

import structlog

from ..lifecycle import Phase, Way, route
from ..model import Stopped
from ..pipeline.backfill import Backfill
from ..pipeline.poll import ObjectPoller
from ..pipeline.repairs import repair_object
from ..pipeline.stopping import sleep_or_stop, until_stopped
from ..pipeline.stream import ObjectStream
from ..salesforce.pubsub import event_allocation_exhausted
from ..salesforce.topics import topic_for
from .handoffs import ALLOCATION, choose_mode, enter_events, leave_events, stored_way, topic_exists

if TYPE_CHECKING:
    from .service import Service

log = structlog.get_logger(__name__)


class ObjectUnit:
    """One object on a subscription of its own or polled. `detached`: why it left a channel (a resync it runs from
    its own topic's position, captured first, unless it already has one). `cause`: why it polls when it was handed
    over polling (app/handoffs.py ALLOCATION: it streams again once the allocation has room)."""

    def __init__(self, svc: Service, name: str, detached: str | None = None, cause: str | None = None):
        self.svc, self.name, self.detached, self.cause = svc, name, detached, cause
        self.obj = svc.settings.objects[name]
        self.health = svc.metrics.object(name)
        self.stop = svc.stop  # the unit's stop while a round runs: handed back, or the service stops

    async def run(self) -> None:
        await self.svc.keep_running(self.name, self.svc.units.holding(f"object:{self.name}", self.once), self.record,
                                    self.failed)

    async def record(self, error: str) -> None:
        self.health.fail(error, Phase.RETRYING)
        await self.svc.store.record_error(self.name, error)

    async def failed(self, error: str) -> None:
        """Stopped on an error no retry fixes (a configuration error): FAILED in /readyz, the metrics and the stored
        state (`replicator status`) with the error, until the cause is fixed and the service started again; then it
        is extracted again (lifecycle FAILED -> BACKFILLING)."""
        self.health.fail(error)
        await self.svc.store.fail_object(self.name, error)

    def stream(self) -> ObjectStream:
        svc = self.svc
        return ObjectStream(svc.client, svc.pubsub, svc.store, svc.settings, self.name, self.obj, svc.metrics)

    def poller(self) -> ObjectPoller:
        svc = self.svc
        return ObjectPoller(svc.client, svc.store, svc.settings, self.name, self.obj, svc.metrics, budget=svc.limits)

    async def once(self, stop: asyncio.Event) -> None:
        svc = self.svc
        self.stop = stop
        try:
            await self._round()
        finally:
            if stop.is_set() and not svc.stop.is_set():  # handed back to another replica: nothing runs here now
                self.health.reset()

    async def _round(self) -> None:
        svc = self.svc
        if self.detached and await svc.store.load_checkpoint(topic_for(self.name)) is None:
            stream = self.stream()
            await stream.applier.load_schema()
            await stream.resync(self.detached, capture=True)
            await svc.store.set_mode(self.name, "cdc", f"left the channel: {self.detached}")
        halt = asyncio.Event()  # set by the watcher: the unit stops, or the other way is due
        watcher = None
        mode = "cdc"
        try:
            mode, reason, cause = await choose_mode(svc.pubsub, self.name, self.obj.mode, svc.limits)
            await self.enter(mode, reason, cause)
            watcher = asyncio.ensure_future(self.watch(mode, halt))
            await (self.poll(halt) if mode == "poll" else self.stream_events(halt))
        except Stopped:
            if self.stop.is_set() or svc.stop.is_set():
                raise
            # halted for a switch during a resumable step (a resync's extract): the next round goes on
        except Exception as exc:
            if mode != "cdc" or svc.limits is None or not event_allocation_exhausted(exc):
                raise
            svc.limits.events_exhausted(f"{type(exc).__name__}: {exc}")  # the next round polls, loudly
        finally:
            if watcher is not None:
                watcher.cancel()
                await asyncio.gather(watcher, return_exceptions=True)

    async def enter(self, mode: str, reason: str, cause: str) -> None:
        """Run the handoffs from the stored way to `mode`'s (lifecycle.route), then store the way: the stored way
        changes only once its handoff is stored, so a crash repeats it. An object never extracted needs none."""
        svc, name = self.svc, self.name
        if mode == "poll" and cause == ALLOCATION:
            self.cause = ALLOCATION
        elif mode == "cdc" and self.cause == ALLOCATION:
            self.cause, cause = None, ALLOCATION  # back to events because the allocation has room again
        source, _ = await stored_way(svc.store, name)
        target = Way.POLL if mode == "poll" else Way.TOPIC
        st = await svc.store.get_object(name)
        # Never replicated: NEW, or FAILED before its table was ever made (a name the org did not know then).
        never = st is None or st.phase == Phase.NEW or (st.phase == Phase.FAILED and st.fingerprint is None)
        steps = [] if never else route(source, target)
        for leaving, entering in steps:
            if entering == Way.POLL:
                await leave_events(svc.store, svc.client, name, svc.settings.poll, reason)
            elif leaving == Way.POLL:
                poller = self.poller()
                await poller.prepare(self.stop)
                await enter_events(poller, self.stop, self.stream())
        if steps:
            svc.metrics.mode_switches.labels(object=name, mode=mode, cause=cause).inc()
            (log.error if cause == ALLOCATION else log.warning)(
                "service.mode_switch", object=name, mode=mode, previous=source.value, reason=reason,
                handoffs=[f"{a}->{b}" for a, b in steps])
        elif self.health.mode == mode:
            return  # decided before in this process, nothing changed
        else:
            log.info("service.mode", object=name, mode=mode, reason=reason)
        await svc.store.set_mode(name, mode, reason)
        self.health.mode = mode

    async def watch(self, mode: str, halt: asyncio.Event) -> None:
        """Set `halt` when the unit stops or the object should run in the other mode: in `auto` mode its
        change-event topic appeared or went away (one GetTopic every `stream.topic_check_s`); polled for want of
        event allocation, once /limits shows room again (each object asks for itself: app/limits.py)."""
        svc = self.svc
        tick = min(svc.settings.service.control_poll_s, svc.settings.stream.topic_check_s)
        next_topic_check = time.monotonic() + svc.settings.stream.topic_check_s
        while not self.stop.is_set():
            await sleep_or_stop(self.stop, tick)
            if mode == "poll" and self.cause == ALLOCATION and svc.limits is not None:
                if svc.limits.events_available():
                    break
                continue
            if self.obj.mode == "auto" and time.monotonic() >= next_topic_check:
                next_topic_check = time.monotonic() + svc.settings.stream.topic_check_s
                try:
                    exists = await topic_exists(svc.pubsub, topic_for(self.name))
                except Exception as exc:  # the running mode reports its own failures; look again next time
                    log.debug("service.topic_check_failed", object=self.name, error=str(exc))
                    continue
                if exists != (mode == "cdc"):
                    log.info("service.topic_changed", object=self.name, topic=topic_for(self.name), exists=exists)
                    break
        halt.set()

    async def extract(self, capture) -> None:
        """Extract the object when it needs it (first backfill, a resync, a backfill to resume), its position
        captured first by `capture` unless a resumed backfill keeps the one captured before its job."""
        svc, health = self.svc, self.health
        st = await svc.store.get_object(self.name)
        if st is not None and Phase(st.phase).extracted:
            return
        health.phase = Phase.RESYNCING if st is not None and st.phase == Phase.RESYNCING else Phase.BACKFILLING
        # A resync, or an extract after a FAILED, always starts a new Bulk job (Backfill resumes only a BACKFILLING
        # one): the position is captured before it; a resumed backfill keeps the position captured before its job.
        if st is None or st.phase in (Phase.NEW, Phase.RESYNCING, Phase.FAILED) or not st.job_id:
            await capture()
        log.info("service.backfill", object=self.name)
        backfill = Backfill(svc.client, svc.store, svc.settings, self.name, self.obj, svc.metrics.backfill_progress)
        await until_stopped(self.stop, backfill.run())

    async def repair(self) -> None:
        """The derivation repairs the object's rows may need from an earlier release (pipeline/repairs.py), once:
        after its extract and before its way starts, under the unit's lease, so nothing of this process writes its
        rows meanwhile and no other replica runs them. A failure fails the round (retried with backoff): the way
        starts once they are settled."""
        svc = self.svc
        await until_stopped(self.stop, repair_object(svc.client, svc.store, svc.settings, self.name))

    async def stream_events(self, halt: asyncio.Event) -> None:
        """Backfill when needed (its stream position captured first), then stream until `halt`."""
        svc = self.svc
        stream = svc.streams[self.name] = self.stream()

        async def capture() -> None:
            # Describe first: a configuration the org refuses (a key that is not unique) stops here, in one line,
            # before a stream position is captured and stored.
            await stream.applier.load_schema()
            await until_stopped(self.stop, stream.capture_position())

        await self.extract(capture)
        await self.repair()
        await svc.store.set_phase(self.name, Phase.STREAMING)
        self.health.last_error = None
        await stream.run(halt)

    async def poll(self, halt: asyncio.Event) -> None:
        """The same backfill, its poll position captured before it, then rounds until `halt` (the service stops,
        or the object switches mode), each only while the API budget allows (app/limits.py)."""
        svc = self.svc
        poller = self.poller()
        st = await svc.store.get_object(self.name)
        if st is not None and st.phase not in (Phase.NEW, Phase.FAILED) \
                and await svc.store.load_poll_position(poller.topic) is None:
            # Replicated (or extracted) before without a poll position, and no position to start one from: extract
            # it again from a fresh position, an extract begun earlier would leave a hole. (FAILED extracts again
            # from a fresh position anyway: `extract`.)
            await svc.store.begin_resync(self.name, "polled without a stored poll position")

        async def capture() -> None:
            await poller.applier.load_schema()  # describe first, as for a streamed object
            await poller.capture_position()

        await self.extract(capture)
        await self.repair()
        await svc.store.set_phase(self.name, Phase.STREAMING)
        self.health.last_error = None
        await poller.run(halt)
