"""`stream.channel` set: the objects that stream change events share ONE subscription to the channel
(pipeline/channel.py); the others run as units of their own (app/object_unit.py). docs/channels.md and
docs/lifecycle.md.

Who is a member, from the stored way (lifecycle.Way) and the configured one:
- stored on this channel: stays a member (its position is the channel's checkpoint);
- never replicated: a member at the channel's first start (its extract follows the channel's captured position),
  later a unit of its own (the channel does not wait for a new object's extract);
- polled before (configured `poll` then, or removed from the configuration, or polled for want of allocation):
  joins through one poll round after the channel's position (lifecycle HANDOFFS POLL -> CHANNEL);
- on a subscription of its own: stays there;
- run by another process as a unit of its own (it holds `object:X`, or stands by for it: the channel handed it over
  while that process held the channel): stays that unit, whatever its stored way (one writer per object: taking it
  as a joiner or member would write it under the channel's lease beside the other's `object:X`); this process stands
  by for it (docs/replicas.md).
A member leaves the channel as a time position of its own (app/handoffs.py `leave_events`): deselected from Change
Data Capture, the event allocation used up, configured `poll`, removed from the configuration; a resync leaves it
for a subscription of its own.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

import structlog

from ..lifecycle import Way
from ..model import ConfigError
from ..pipeline.channel import ChannelStream, backfill_members, capture_channel_position, for_each
from ..pipeline.repairs import repair_object
from ..pipeline.stopping import sleep_or_stop, until_stopped
from ..pipeline.stream import ObjectStream
from ..position import Position
from ..salesforce.pubsub import event_allocation_exhausted
from ..salesforce.topics import topic_for
from .handoffs import (
    ALLOCATION,
    ALLOCATION_REASON,
    TOPIC,
    choose_mode,
    enter_events,
    leave_events,
    leave_unconfigured,
    no_topic_reason,
    stored_way,
    topic_exists,
)
from .object_unit import ObjectUnit

if TYPE_CHECKING:
    from .service import Service

log = structlog.get_logger(__name__)


class ChannelUnit:
    def __init__(self, svc: Service):
        self.svc = svc
        self.channel = svc.settings.stream.channel
        self.members: list[str] = []
        self.joiners: list[str] = []  # polled before: one poll round, then members
        self.own: set[str] = set()  # objects this process runs as units of their own (left the channel, or never on it)
        self.running: ChannelStream | None = None
        self.stop = svc.stop  # the channel unit's stop while a round runs: handed back, or the service stops

    async def run(self) -> None:
        svc = self.svc
        await svc.keep_running(self.channel, svc.units.holding(f"channel:{self.channel}", self.once))

    async def plan(self) -> list[str]:
        """Split the configured objects this process does not already run on their own into members, joiners and
        units of their own (see the module's rules), from the stored state as it is now: run at every held round,
        since another process may have held the channel meanwhile. Returns the new units of their own."""
        svc = self.svc
        modes = await _choose_modes(svc)
        topics = await svc.store.checkpoint_topics()
        first_start = self.channel not in topics
        carried = set(svc.settings.stream.channel_objects or modes)  # the channel's members in Salesforce
        # Objects another process runs as units of their own (it holds or stands by for `object:X`: the channel
        # handed them over while that process held it): one writer per object, so they stay units of their own and
        # this process stands by for them.
        elsewhere = await svc.store.run_elsewhere(svc.units.owner, [f"object:{n}" for n in modes if n not in self.own])
        self.members, self.joiners, alone = [], [], []
        for name, mode in modes.items():
            if name in self.own:
                continue
            source, channel = await stored_way(svc.store, name)
            if mode != "cdc" or name not in carried or f"object:{name}" in elsewhere:
                alone.append(name)
            elif source == Way.CHANNEL and channel == self.channel:
                self.members.append(name)
            elif source == Way.TOPIC and topic_for(name) not in topics and not first_start:
                self.members.append(name)  # a member stored before channels were (sql/012_lifecycle.sql)
            elif source == Way.NONE:
                (self.members if first_start else alone).append(name)
            elif source in (Way.POLL, Way.CHANNEL):  # another channel: its own position first
                if source == Way.CHANNEL:
                    await leave_events(svc.store, svc.client, name, svc.settings.poll,
                                       f"left channel {channel}")
                self.joiners.append(name)
            else:
                alone.append(name)
        self.own.update(alone)
        return alone

    async def leave_unconfigured(self) -> None:
        """Members out of the configuration keep their position as their own (app/handoffs.py), also those stored
        before channels were (mode cdc, no channel, no checkpoint of their own)."""
        svc = self.svc
        topics = await svc.store.checkpoint_topics()
        gone = [name for name, channel in (await svc.store.streamed_objects()).items()
                if name not in svc.settings.objects
                and (channel == self.channel or (channel is None and topic_for(name) not in topics))]
        await leave_unconfigured(svc.store, svc.client, svc.settings, self.channel, gone)

    async def once(self, stop: asyncio.Event) -> None:
        self.stop = stop
        try:
            await self._round()
        finally:
            if stop.is_set() and not self.svc.stop.is_set():  # handed back: the members run elsewhere now
                for name in self.members + self.joiners:
                    self.svc.metrics.object(name).reset()

    async def _round(self) -> None:
        svc, channel = self.svc, self.channel
        await self.leave_unconfigured()
        alone = await self.plan()
        log.info("service.channel", channel=channel, members=len(self.members), joining=len(self.joiners),
                 own_units=len(alone))
        for name in alone:
            svc.spawn(ObjectUnit(svc, name).run())
        if not self.members and not self.joiners:  # every member left the channel (resyncs, allocation used up)
            await self.stop.wait()
            return
        streams = {n: ObjectStream(svc.client, svc.pubsub, svc.store, svc.settings, n, svc.settings.objects[n],
                                   svc.metrics) for n in self.members + self.joiners}
        try:
            await self.stream(streams)
        except Exception as exc:
            if svc.limits is None or not event_allocation_exhausted(exc):
                raise
            # The allocation used up, while streaming or already when the channel starts (capturing its position
            # subscribes too): every member and joiner polls on a unit of its own, and streams on its own topic once
            # the allocation has room.
            svc.limits.events_exhausted(f"{type(exc).__name__}: {exc}")
            # the time of the channel's stream position: every member's events up to it are applied
            stream = await svc.store.stream_position(channel)
            floor = stream.time() if stream is not None else None
            members = list(self.running.members) if self.running is not None else list(self.members)
            for name in members:
                await self.to_poll(name, ALLOCATION_REASON, floor, ALLOCATION)
            for name in members + self.joiners:
                self.own.add(name)
                svc.spawn(ObjectUnit(svc, name, cause=ALLOCATION).run())
            self.members, self.joiners = [], []
        finally:
            if self.running is not None:
                self.members[:] = list(self.running.members)
            self.running = None

    async def stream(self, streams: dict[str, ObjectStream]) -> None:
        """The channel's position (captured at its first start), the joiners' poll rounds past it, the members'
        extracts, then the channel's stream until the unit stops."""
        svc, channel = self.svc, self.channel
        await self.describe(streams)
        if not self.members and not self.joiners:  # every one refused: each stops on its own unit
            await self.stop.wait()
            return
        # The members' way stored before the first start's capture and extracts, as an object's own unit stores its
        # way before its own (app/object_unit.py `enter`): a stop anywhere after this finds them members at the next
        # start, which captures the channel's position if it is still missing and resumes their extracts (their
        # phase) before the channel streams. Stored after them, a stop in between left the channel's checkpoint
        # stored and their way not: the next start took them for objects added later, each on a subscription of its
        # own (docs/channels.md, "First start").
        for name in self.members:
            await svc.store.set_mode(name, "cdc", f"member of channel {channel}", channel=channel)
        if channel not in await svc.store.checkpoint_topics():
            # Described first, then the channel's position captured before any extract or poll round: the channel
            # replays every change after it (contract 5).
            await until_stopped(self.stop, capture_channel_position(svc.pubsub, svc.store, svc.settings))
        for name in list(self.joiners):  # POLL -> CHANNEL: one round past the channel's position
            poller = ObjectUnit(svc, name).poller()
            await poller.prepare(self.stop)
            await enter_events(poller, self.stop)
            await svc.store.set_mode(name, "cdc", f"joined channel {channel} after a poll round", channel=channel)
            self.joiners.remove(name)
            self.members.append(name)
        await backfill_members(svc.store, svc.settings, [streams[n] for n in self.members], self.stop)
        # The derivation repairs each member's rows may need from an earlier release (pipeline/repairs.py), under
        # the channel's lease, before the channel streams over them.
        await for_each([streams[n] for n in self.members], lambda s: until_stopped(
            self.stop, repair_object(svc.client, svc.store, svc.settings, s.name)))
        for name in self.members:
            svc.metrics.object(name).mode = "cdc"
        self.running = ChannelStream(svc.pubsub, svc.store, svc.settings, {n: streams[n] for n in self.members},
                                     svc.metrics, self.detach)
        watcher = asyncio.ensure_future(self.watch_topics())  # under the channel's lease, as its handoffs write
        try:
            await self.running.run(self.stop)
        finally:
            watcher.cancel()
            await asyncio.gather(watcher, return_exceptions=True)

    async def describe(self, streams: dict[str, ObjectStream]) -> None:
        """Describe every member and joiner. One whose configuration the org refuses (a key field it lacks, an
        object it does not know) leaves the channel for a unit of its own, which stops it on that error (FAILED,
        shown in status and /readyz) as it would without a channel; the others go on."""
        refused: list[str] = []

        async def one(stream: ObjectStream) -> None:
            try:
                await stream.applier.load_schema()
            except ConfigError as exc:
                log.error("service.channel_member_refused", object=stream.name, channel=self.channel, error=str(exc),
                          action="it runs alone, stopped on this error; the channel serves the others")
                refused.append(stream.name)

        await for_each([streams[n] for n in self.members + self.joiners], one)
        for name in refused:
            for group in (self.members, self.joiners):
                if name in group:
                    group.remove(name)
            self.own.add(name)
            self.svc.spawn(ObjectUnit(self.svc, name).run())

    async def to_poll(self, name: str, reason: str, floor: Position | None = None, cause: str = TOPIC) -> None:
        """A member leaves the channel for poll rounds, from its own position (never the channel's newest commit,
        which other objects' events move, but for `floor`: its time when the event allocation ran out;
        app/handoffs.py)."""
        svc = self.svc
        self.own.add(name)
        if self.running is not None:
            self.running.members.pop(name, None)
        if not await leave_events(svc.store, svc.client, name, svc.settings.poll, reason, floor):
            return  # never extracted: its own unit extracts it, polled
        svc.metrics.mode_switches.labels(object=name, mode="poll", cause=cause).inc()
        (log.error if cause == ALLOCATION else log.warning)("service.mode_switch", object=name, mode="poll", previous="cdc",
                                              reason=reason, channel=self.channel)
        svc.metrics.object(name).mode = "poll"

    async def detach(self, name: str, reason: str) -> None:
        """A member that needs a resync runs it on a subscription of its own (pipeline/channel.py)."""
        self.own.add(name)
        self.svc.spawn(ObjectUnit(self.svc, name, detached=reason).run())

    async def watch_topics(self) -> None:
        """A member in `auto` mode whose change-event topic went away (deselected from Change Data Capture) gets no
        more events on the channel: it polls from its own position, and its unit streams it on its own topic if
        the topic comes back (one GetTopic per member every `stream.topic_check_s`)."""
        svc = self.svc
        while not self.stop.is_set():
            await sleep_or_stop(self.stop, svc.settings.stream.topic_check_s)
            running = self.running
            for name in list(running.members) if running is not None else []:
                if svc.settings.objects[name].mode != "auto":
                    continue
                try:
                    exists = await topic_exists(svc.pubsub, topic_for(name))
                except Exception as exc:  # the channel reports its own failures; look again next time
                    log.debug("service.topic_check_failed", object=name, error=str(exc))
                    continue
                if not exists and name in running.members:
                    log.info("service.topic_changed", object=name, topic=topic_for(name), exists=False)
                    await self.to_poll(name, no_topic_reason(name))
                    svc.spawn(ObjectUnit(svc, name).run())


FAILING = "failing"  # a mode no configuration names: the object's own unit meets its configuration error


async def _choose_modes(svc: Service) -> dict[str, str]:
    """Every object's mode now, a few GetTopic calls at a time. Not stored: each object's handoff stores it. An
    object whose mode is a configuration error is `FAILING`: it runs as a unit of its own, which stops it (FAILED,
    app/service.py `keep_running`) while the channel serves the others."""
    gate, modes = asyncio.Semaphore(8), {}

    async def one(name: str) -> None:
        async with gate:
            try:
                modes[name], _, _ = await choose_mode(svc.pubsub, name, svc.settings.objects[name].mode)
            except ConfigError:  # e.g. mode = "cdc" without a topic: a unit of its own stops it (FAILED), alone
                modes[name] = FAILING

    await asyncio.gather(*(one(n) for n in svc.settings.objects))
    return {name: modes[name] for name in svc.settings.objects}
