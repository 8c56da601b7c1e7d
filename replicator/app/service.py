"""`replicator run`: for every configured object, backfill when needed, then stream; objects run concurrently
and one failing object retries with backoff without stopping the others. SIGINT/SIGTERM stop it cleanly:
batches in flight are committed with their checkpoints before the process exits (within
`service.shutdown_timeout_s`; a backfill in progress stops at once, it resumes page by page); a second
signal exits at once. Metrics and health endpoints are served on `service.port` (observe/endpoints.py).
"""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections.abc import Awaitable, Callable

import structlog

from ..config import Settings
from ..model import ConfigError, Stopped
from ..observe.endpoints import Endpoints
from ..observe.metrics import Metrics
from ..pipeline.backfill import Backfill
from ..pipeline.channel import ChannelStream, backfill_members, capture_channel_position, for_each
from ..pipeline.platform_events import PlatformEventStream
from ..pipeline.poll import ObjectPoller
from ..pipeline.refresh import RefreshSchedule
from ..pipeline.stopping import sleep_or_stop, until_stopped
from ..pipeline.stream import ObjectStream
from ..postgres.store import Store
from ..retry import restart_delay
from ..salesforce.pubsub import PubSubClient, event_allocation_exhausted
from ..salesforce.topics import topic_for
from .limits import OrgLimits
from .modes import (
    ALLOCATION,
    ALLOCATION_REASON,
    TOPIC,
    choose_mode,
    no_topic_reason,
    to_cdc,
    to_poll,
    topic_exists,
)
from .runtime import open_store, salesforce_client
from .units import Units

log = structlog.get_logger(__name__)

# An attempt that ran this long before failing counts as a recovery (the backoff's ceiling, retry.restart_delay).
HEALTHY_RUN_S = 60.0

# How long storing an object's error in Postgres may take before the supervisor gives up on it and retries the
# object: a few round trips on a healthy database; a connect to an unreachable one otherwise waits asyncpg's
# 60 s connect timeout.
_REPORT_TIMEOUT_S = 5.0

async def _report(on_error: Callable[[str], Awaitable[None]], error: str) -> str | None:
    """Run an error handler that may fail itself: storing an error in Postgres fails exactly when the database
    is what failed. Returns why it failed (None when it did not); the supervisor goes on either way, and the error
    stays visible in the log, in /readyz and in the metrics. Bounded, so that a database that does not answer
    (a failover in progress) cannot hold up the retry."""
    try:
        async with asyncio.timeout(_REPORT_TIMEOUT_S):
            await on_error(error)
    except TimeoutError:
        return f"no answer within {_REPORT_TIMEOUT_S:g} s"
    except Exception as exc:
        return f"{type(exc).__name__}: {exc}"
    return None


# Objects streamed on subscriptions of their own past which one channel serves better: measured, 500 objects at
# 1,000 changes/s keep a lag p99 of 0.18 s on one channel and fall behind one subscription each (bench/RESULTS.md,
# "Many objects"); a Salesforce transaction touching many objects is then also one Postgres transaction.
MANY_SUBSCRIPTIONS = 50


def subscription_advice(settings: Settings) -> dict | None:
    """The start-up warning's fields when many objects may stream without `stream.channel`, else None."""
    if settings.stream.channel:
        return None
    streamed = sum(1 for obj in settings.objects.values() if obj.mode != "poll")
    if streamed <= MANY_SUBSCRIPTIONS:
        return None
    return {"objects": streamed, "action": 'set [stream] channel = "/data/ChangeEvents" (or a custom channel with '
            'these members): one subscription and one transaction per batch for all of them (README "One channel '
            'for many objects"); each object on its own subscription costs a stream, a batch transaction and a '
            'keepalive checkpoint of its own'}


async def _all_or_none(*steps: Awaitable[None]) -> None:
    """Run the steps together until all end; when one fails (a configuration error stops the service), the others
    are cancelled before the error propagates, so none goes on using a store or client its caller then closes."""
    tasks = [asyncio.ensure_future(step) for step in steps]
    try:
        await asyncio.gather(*tasks)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


def _stuck_tasks() -> list[str]:
    """Where each unfinished task waits: what an operator needs when a drain overruns its bound."""
    out = []
    for task in asyncio.all_tasks():
        if task is asyncio.current_task():
            continue
        chain, coro = [], task.get_coro()
        while coro is not None and len(chain) < 12:  # follow the awaits down to where it waits
            frame = getattr(coro, "cr_frame", None) or getattr(coro, "gi_frame", None)
            if frame is not None:
                chain.append(f"{frame.f_code.co_name}:{frame.f_lineno}")
            coro = getattr(coro, "cr_await", None) or getattr(coro, "gi_yieldfrom", None)
        out.append(f"{task.get_name()}: {' > '.join(chain) or '?'}")
    return out


class Service:
    def __init__(self, settings: Settings):
        self.settings = settings
        self.stop = asyncio.Event()
        self.streams: dict[str, ObjectStream] = {}
        self.metrics = Metrics(retention_s=settings.service.retention_hours * 3600)
        for name in settings.objects:
            self.metrics.object(name)
        self.endpoints: Endpoints | None = None
        self.limits: OrgLimits | None = None  # the org's allocations and the API budget, once connected
        self._polled_for_allocation: set[str] = set()  # objects polled while the event allocation is used up
        self._signals = 0

    def _on_signal(self, sig: signal.Signals) -> None:
        self._signals += 1
        if self._signals > 1:  # the operator insists: exit now; open transactions roll back in Postgres
            log.error("service.abort", signal=sig.name, action="exiting at once; uncommitted batches roll back")
            os._exit(1)
        log.info("service.stopping", signal=sig.name, bound_s=self.settings.service.shutdown_timeout_s)
        if self.endpoints is not None:
            self.endpoints.stopping = True
        self.stop.set()

    async def run(self) -> int:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            try:
                loop.add_signal_handler(sig, self._on_signal, sig)
            except (NotImplementedError, RuntimeError):  # not the main thread (tests drive stop directly)
                pass
        svc = self.settings.service
        if svc.metrics:
            self.endpoints = Endpoints(self.metrics, svc.host, svc.port, svc.ready_max_lag_s)
            await self.endpoints.start()
        try:
            work = asyncio.ensure_future(self._work())
            stopping = asyncio.ensure_future(self.stop.wait())
            await asyncio.wait({work, stopping}, return_when=asyncio.FIRST_COMPLETED)
            stopping.cancel()
            if not work.done():  # stopping: batches in flight commit within the bound, or roll back
                _, pending = await asyncio.wait({work}, timeout=svc.shutdown_timeout_s)
                if pending:
                    log.error("service.drain_stuck", tasks=_stuck_tasks())
                    work.cancel()
                    await asyncio.gather(work, return_exceptions=True)
                    log.error("service.drain_timeout", bound_s=svc.shutdown_timeout_s,
                              action="uncommitted batches rolled back; they are applied again after a restart")
                    return 1
            await work
        finally:
            if self.endpoints is not None:
                await self.endpoints.stop()
        log.info("service.stopped")
        return 0

    async def _work(self) -> None:
        if advice := subscription_advice(self.settings):
            log.warning("service.many_subscriptions", **advice)
        async with salesforce_client(self.settings) as client, open_store(self.settings) as store:
            self.metrics.client, self.metrics.store = client, store
            self.units = Units(store, self.settings.service, self.metrics, self.stop)  # one writer per unit
            sf = self.settings.salesforce
            self.limits = self.metrics.limits = OrgLimits(client, sf.api_reserve, sf.limits_interval_s)
            pubsub = PubSubClient(sf.pubsub_endpoint, client.tokens, ca_file=str(sf.ca_file) if sf.ca_file else None,
                                  tls=sf.pubsub_tls)
            try:
                objects = ([self._channel_mode(client, pubsub, store)] if self.settings.stream.channel  # one
                           # subscription for many objects (pipeline/channel.py), else one per object
                           else [self._supervise(client, pubsub, store, n) for n in self.settings.objects])
                await _all_or_none(
                    self._keep_running("limits", lambda: self.limits.run(self.stop)),
                    *objects,
                    *(self._supervise_events(pubsub, store, n) for n in self.settings.stream.platform_events),
                    # beside each object's stream or poll rounds: the refresh of what events never carry
                    *(self.units.follow([f"object:{n}", f"channel:{self.settings.stream.channel}"], lambda n=n:
                      RefreshSchedule(client, store, self.settings, n, self.metrics, gate=self._api_budget).run(self.stop))
                      for n in self.settings.objects),
                )
            finally:
                await self.units.close()  # after the drain: a standby takes the units over at once
                self.metrics.store = None
                close = getattr(pubsub, "close", None)
                if close is not None:
                    await close()

    async def _api_budget(self, name: str) -> None:
        """The refresh's gate: wait while the org's remaining daily API requests are below `salesforce.api_reserve`
        (app/limits.py logs entering and leaving that state); the service's stop ends the wait."""
        while self.limits is not None and not self.limits.allows() and not self.stop.is_set():
            await sleep_or_stop(self.stop, self.settings.service.control_poll_s)

    async def _keep_running(self, what: str, once: Callable[[], Awaitable[None]],
                            on_error: Callable[[str], Awaitable[None]] | None = None) -> None:
        """Run `once` until the service stops; a failure runs it again after `retry.restart_delay` (1 s doubling
        to 60 s, jittered) and never stops the other objects. A configuration error stops the service."""
        failures = 0
        while not self.stop.is_set():
            started = time.monotonic()
            try:
                await once()
                failures = 0
            except Stopped:
                return
            except ConfigError:
                raise
            except Exception as exc:
                # An attempt that ran a while (a stream runs until it fails) was a recovery: start the backoff
                # over, so a new outage hours later waits 1 s, not the ceiling.
                failures = 1 if time.monotonic() - started >= HEALTHY_RUN_S else failures + 1
                error = f"{type(exc).__name__}: {exc}"
                delay = restart_delay(exc, failures)
                self.metrics.errors.labels(object=what, kind=type(exc).__name__).inc()
                unrecorded = await _report(on_error, error) if on_error is not None else None
                # One line per failure, without a traceback: the error says what failed (a database outage is
                # `DatabaseUnavailableError: postgres: …`), and when it could not be stored, why.
                log.error("service.failed", what=what, error=error, retry_in_s=round(delay, 1), failures=failures,
                          **({"not_recorded": unrecorded} if unrecorded else {}))
                await sleep_or_stop(self.stop, delay)

    async def _supervise(self, client, pubsub, store: Store, name: str, detached: str | None = None) -> None:
        """One object, in the mode app/modes.py decides; a watcher ends the running mode when the other one is
        due (topic gained or lost, event allocation used up or back), and the next round switches. `detached`: the
        reason a channel member left the channel (pipeline/channel.py); it resyncs from its own topic's position
        captured first, unless it already has one."""
        obj = self.settings.objects[name]
        health = self.metrics.object(name)

        async def once() -> None:
            if detached and await store.load_checkpoint(topic_for(name)) is None:
                stream = ObjectStream(client, pubsub, store, self.settings, name, obj, self.metrics)
                await stream.applier.load_schema()
                await stream.resync(detached, capture=True)
            halt = asyncio.Event()  # set by the watcher: the service stops, or the other mode is due
            watcher = None
            mode = "cdc"
            try:
                mode, reason, cause = await choose_mode(pubsub, name, obj.mode, self.limits)
                await self._enter_mode(client, pubsub, store, name, mode, reason, cause)
                watcher = asyncio.ensure_future(self._watch_mode(pubsub, name, mode, halt))
                if mode == "poll":
                    await self._poll(client, store, name, halt)
                else:
                    await self._stream(client, pubsub, store, name, halt)
            except Stopped:
                if self.stop.is_set():
                    raise
                # halted for a switch during a resumable step (a resync's extract): the next round goes on
            except Exception as exc:
                if mode != "cdc" or self.limits is None or not event_allocation_exhausted(exc):
                    raise
                self.limits.events_exhausted(f"{type(exc).__name__}: {exc}")  # the next round polls, loudly
            finally:
                if watcher is not None:
                    watcher.cancel()
                    await asyncio.gather(watcher, return_exceptions=True)

        async def record(error: str) -> None:
            health.phase, health.connected, health.last_error = "RETRYING", False, error
            await store.record_error(name, error)

        await self._keep_running(name, self.units.holding(f"object:{name}", once), record)

    async def _channel_mode(self, client, pubsub, store: Store) -> None:
        """`stream.channel` set: the objects in cdc mode without a subscription of their own share ONE subscription
        to the channel; the others run as usual (README "One channel for many objects").

        Members: at the first start (no channel checkpoint), every cdc object without a checkpoint of its own; later,
        those that are known (a row in replicator.objects) and have none. An object added to the configuration later
        runs on its own subscription with the usual handoff, as does one that left the channel for a resync."""
        channel = self.settings.stream.channel
        known = {n for n in self.settings.objects if await store.get_object(n) is not None}  # before modes add rows
        modes = await _choose_modes(pubsub, store, self.settings, self.metrics)
        topics = await store.checkpoint_topics()
        first_start = channel not in topics
        carried = set(self.settings.stream.channel_objects or modes)  # the channel's members in Salesforce
        members, alone = [], []
        for name, mode in modes.items():
            on_channel = (mode == "cdc" and name in carried and (first_start or name in known)
                          and topic_for(name) not in topics)
            (members if on_channel else alone).append(name)
        log.info("service.channel", channel=channel, members=len(members), own_subscriptions=len(alone))
        extra: list[asyncio.Task] = []

        async def detach(name: str, reason: str) -> None:
            extra.append(asyncio.ensure_future(self._supervise(client, pubsub, store, name, detached=reason)))

        async def once() -> None:
            if not members:  # every member left the channel (resyncs, the event allocation used up)
                await self.stop.wait()
                return
            streams = {n: ObjectStream(client, pubsub, store, self.settings, n, self.settings.objects[n], self.metrics)
                       for n in members}
            if channel not in await store.checkpoint_topics():
                # Describe first (a configuration the org refuses stops here), then capture the channel's position
                # before any extract: the channel replays every change after it (docs/design.md, contract 5).
                await for_each(list(streams.values()), lambda s: s.applier.load_schema())
                await until_stopped(self.stop, capture_channel_position(pubsub, store, self.settings))
            await backfill_members(store, self.settings, list(streams.values()), self.stop)
            channel_stream = running["stream"] = ChannelStream(pubsub, store, self.settings, streams, self.metrics,
                                                               detach)
            try:
                await channel_stream.run(self.stop)
            except Exception as exc:
                if self.limits is None or not event_allocation_exhausted(exc):
                    raise
                self.limits.events_exhausted(f"{type(exc).__name__}: {exc}")
                for name in list(channel_stream.members):  # each polls now, and streams on its own topic after
                    await self._enter_mode(client, pubsub, store, name, "poll", ALLOCATION_REASON, ALLOCATION,
                                           stream_topic=channel)
                    channel_stream.members.pop(name)
                    extra.append(asyncio.ensure_future(self._supervise(client, pubsub, store, name)))
            finally:
                members[:] = list(channel_stream.members)
                running.pop("stream", None)

        running: dict[str, ChannelStream] = {}

        async def watch_topics() -> None:
            """A member in `auto` mode whose change-event topic went away (deselected from Change Data Capture)
            gets no more events on the channel: it polls from the channel's checkpoint, and `_supervise` streams it
            on its own topic if the topic comes back (one GetTopic per member every `stream.topic_check_s`)."""
            while not self.stop.is_set():
                await sleep_or_stop(self.stop, self.settings.stream.topic_check_s)
                channel_stream = running.get("stream")
                for name in list(channel_stream.members) if channel_stream is not None else []:
                    if self.settings.objects[name].mode != "auto":
                        continue
                    try:
                        exists = await topic_exists(pubsub, topic_for(name))
                    except Exception as exc:  # the channel reports its own failures; look again next time
                        log.debug("service.topic_check_failed", object=name, error=str(exc))
                        continue
                    if not exists and channel_stream.members.pop(name, None) is not None:
                        log.info("service.topic_changed", object=name, topic=topic_for(name), exists=False)
                        await self._enter_mode(client, pubsub, store, name, "poll", no_topic_reason(name), TOPIC,
                                               stream_topic=channel)
                        extra.append(asyncio.ensure_future(self._supervise(client, pubsub, store, name)))

        watcher = asyncio.ensure_future(watch_topics())
        try:
            await _all_or_none(self._keep_running(channel, self.units.holding(f"channel:{channel}", once)),
                               *(self._supervise(client, pubsub, store, n) for n in alone))
        finally:
            watcher.cancel()
            await asyncio.gather(watcher, *extra, return_exceptions=True)

    async def _enter_mode(self, client, pubsub, store: Store, name: str, mode: str, reason: str, cause: str,
                          stream_topic: str | None = None) -> None:
        """Store the decided mode; when it differs from the stored one, hand the object over first (app/modes.py):
        the stored mode changes only once the handoff is stored, so a crash repeats it. `stream_topic`: a channel
        member going to poll takes its position from the channel's checkpoint (no hole, no extract); `_supervise`
        runs it from then on, and streams it on its own topic once events flow again (a channel cannot take one
        object back at a position of its own: README "One channel for many objects")."""
        health = self.metrics.object(name)
        stored = await store.get_mode(name)
        st = await store.get_object(name)
        if mode == "poll" and cause == ALLOCATION:
            self._polled_for_allocation.add(name)
        elif mode == "cdc" and name in self._polled_for_allocation:
            self._polled_for_allocation.discard(name)
            cause = ALLOCATION  # back to the stream because the allocation has room again
        if stored is not None and stored != mode and st is not None and st.phase != "NEW":
            if mode == "poll":
                await to_poll(store, name, self.settings.poll.lookback_s, stream_topic)
            else:
                obj = self.settings.objects[name]
                stream = ObjectStream(client, pubsub, store, self.settings, name, obj, self.metrics)
                poller = ObjectPoller(client, store, self.settings, name, obj, self.metrics)
                await to_cdc(stream, poller, self.stop)
            self.metrics.mode_switches.labels(object=name, mode=mode, cause=cause).inc()
            (log.error if cause == ALLOCATION else log.warning)(
                "service.mode_switch", object=name, mode=mode, previous=stored, reason=reason,
                **({"channel": stream_topic} if stream_topic else {}))
        elif health.mode == mode:
            return  # decided before in this process, nothing changed
        else:
            log.info("service.mode", object=name, mode=mode, reason=reason)
        await store.set_mode(name, mode, reason)
        health.mode = mode

    async def _watch_mode(self, pubsub, name: str, mode: str, halt: asyncio.Event) -> None:
        """Set `halt` when the service stops or the object should run in the other mode: in `auto` mode its
        change-event topic appeared or went away (one GetTopic every `stream.topic_check_s`); a poll for want of
        event allocation once /limits shows room again."""
        configured = self.settings.objects[name].mode
        tick = min(self.settings.service.control_poll_s, self.settings.stream.topic_check_s)
        next_topic_check = time.monotonic() + self.settings.stream.topic_check_s
        limits = self.limits
        while not self.stop.is_set():
            await sleep_or_stop(self.stop, tick)
            waiting_for_events = limits is not None and limits.events_exhausted_at is not None
            if mode == "poll" and configured != "poll" and waiting_for_events:
                if limits.events_available():
                    break
                continue
            if configured == "auto" and time.monotonic() >= next_topic_check:
                next_topic_check = time.monotonic() + self.settings.stream.topic_check_s
                try:
                    exists = await topic_exists(pubsub, topic_for(name))
                except Exception as exc:  # the running mode reports its own failures; look again next time
                    log.debug("service.topic_check_failed", object=name, error=str(exc))
                    continue
                if exists != (mode == "cdc"):
                    log.info("service.topic_changed", object=name, topic=topic_for(name), exists=exists)
                    break
        halt.set()

    async def _stream(self, client, pubsub, store: Store, name: str, halt: asyncio.Event) -> None:
        """A streamed object: backfill when needed (its stream position captured first), then stream until
        `halt`."""
        obj, health = self.settings.objects[name], self.metrics.object(name)
        st = await store.get_object(name)
        stream = self.streams[name] = ObjectStream(client, pubsub, store, self.settings, name, obj, self.metrics)
        if st is None or st.phase not in ("BACKFILLED", "STREAMING"):
            health.phase = "RESYNCING" if st is not None and st.phase == "RESYNCING" else "BACKFILLING"
            if st is None or st.phase == "NEW" or not st.job_id:  # a resumed backfill keeps its position
                # Describe first: a configuration the org refuses (a key that is not unique) stops here, in
                # one line, before a stream position is captured and stored.
                await stream.applier.load_schema()
                await until_stopped(self.stop, stream.capture_position())
            log.info("service.backfill", object=name)
            backfill = Backfill(client, store, self.settings, name, obj, self.metrics.backfill_progress)
            await until_stopped(self.stop, backfill.run())
        await store.set_phase(name, "STREAMING")
        health.last_error = None
        await stream.run(halt)

    async def _poll(self, client, store: Store, name: str, halt: asyncio.Event | None = None) -> None:
        """A polled object (pipeline/poll.py): the same backfill, its poll position captured before it, then
        rounds until `halt` (the service stops, or the object switches mode), each only while the API budget
        allows (app/limits.py)."""
        obj, health = self.settings.objects[name], self.metrics.object(name)
        poller = ObjectPoller(client, store, self.settings, name, obj, self.metrics, budget=self.limits)
        st = await store.get_object(name)
        has_position = await store.load_poll_position(poller.topic) is not None
        if st is not None and st.phase != "NEW" and not has_position:
            # Replicated (or extracted) before without a poll position, and no stream checkpoint to start one
            # from (app/modes.py): extract it again from a fresh position, an extract begun earlier would leave
            # a hole.
            await store.begin_resync(name, "polled without a stored poll position")
            st = await store.get_object(name)
        if st is None or st.phase not in ("BACKFILLED", "STREAMING"):
            health.phase = "RESYNCING" if st is not None and st.phase == "RESYNCING" else "BACKFILLING"
            # A resync always starts a new Bulk job (Backfill resumes only a BACKFILLING one): the position is
            # captured before it; a resumed backfill keeps the position captured before its job.
            if st is None or st.phase in ("NEW", "RESYNCING") or not st.job_id:
                await poller.applier.load_schema()  # describe first, as for a streamed object
                await poller.capture_position()
            log.info("service.backfill", object=name)
            backfill = Backfill(client, store, self.settings, name, obj, self.metrics.backfill_progress)
            await until_stopped(self.stop, backfill.run())
        await store.set_phase(name, "STREAMING")
        health.last_error = None
        await poller.run(halt if halt is not None else self.stop)

    async def _supervise_events(self, pubsub, store: Store, name: str) -> None:
        await self._keep_running(f"/event/{name}", self.units.holding(
            f"events:{name}", lambda: PlatformEventStream(pubsub, store, self.settings, name).run(self.stop)))


async def _choose_modes(pubsub, store: Store, settings: Settings, metrics: Metrics) -> dict[str, str]:
    """Every object's mode (as _supervise decides it, which logs it again), a few GetTopic calls at a time; stored."""
    gate, modes = asyncio.Semaphore(8), {}

    async def one(name: str) -> None:
        async with gate:
            mode, reason, _ = await choose_mode(pubsub, name, settings.objects[name].mode)
        await store.set_mode(name, mode, reason)
        metrics.object(name).mode = modes[name] = mode

    await asyncio.gather(*(one(n) for n in settings.objects))
    return {name: modes[name] for name in settings.objects}


async def run_command(settings: Settings) -> int:
    return await Service(settings).run()
