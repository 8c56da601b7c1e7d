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
from ..model import ConfigError, Stopped, TerminalError
from ..observe.endpoints import Endpoints
from ..observe.metrics import Metrics
from ..pipeline.backfill import Backfill
from ..pipeline.channel import ChannelStream, backfill_members, capture_channel_position, for_each
from ..pipeline.platform_events import PlatformEventStream
from ..pipeline.poll import ObjectPoller
from ..pipeline.stopping import sleep_or_stop, until_stopped
from ..pipeline.stream import ObjectStream
from ..postgres.store import Store
from ..retry import restart_delay
from ..salesforce.pubsub import PubSubClient
from ..salesforce.topics import topic_for
from .runtime import open_store, salesforce_client

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
        async with salesforce_client(self.settings) as client, open_store(self.settings) as store:
            self.metrics.client, self.metrics.store = client, store
            sf = self.settings.salesforce
            pubsub = PubSubClient(sf.pubsub_endpoint, client.tokens, ca_file=str(sf.ca_file) if sf.ca_file else None,
                                  tls=sf.pubsub_tls)
            try:
                if self.settings.stream.channel:  # one subscription for many objects (pipeline/channel.py)
                    await asyncio.gather(self._channel_mode(client, pubsub, store),
                                         *(self._supervise_events(pubsub, store, n)
                                           for n in self.settings.stream.platform_events))
                    return
                await asyncio.gather(
                    *(self._supervise(client, pubsub, store, n) for n in self.settings.objects),
                    *(self._supervise_events(pubsub, store, n) for n in self.settings.stream.platform_events),
                )
            finally:
                self.metrics.store = None
                close = getattr(pubsub, "close", None)
                if close is not None:
                    await close()

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
        """`detached`: the reason a channel member left the channel (pipeline/channel.py); it resyncs from its own
        topic's position captured first, unless it already has one."""
        obj = self.settings.objects[name]
        health = self.metrics.object(name)
        decided: list[str] = []  # the mode, decided once (a switch between modes is not handled yet: issue 12 §1)

        async def once() -> None:
            if detached and await store.load_checkpoint(topic_for(name)) is None:
                stream = ObjectStream(client, pubsub, store, self.settings, name, obj, self.metrics)
                await stream.applier.load_schema()
                await stream.resync(detached, capture=True)
            if not decided:
                mode, reason = await _choose_mode(pubsub, name, obj.mode)
                log.info("service.mode", object=name, mode=mode, reason=reason)
                await store.set_mode(name, mode, reason)
                decided.append(mode)
                health.mode = mode
            if decided[0] == "poll":
                await self._poll(client, store, name)
                return
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
            await stream.run(self.stop)

        async def record(error: str) -> None:
            health.phase, health.connected, health.last_error = "RETRYING", False, error
            await store.record_error(name, error)

        await self._keep_running(name, once, record)

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
            streams = {n: ObjectStream(client, pubsub, store, self.settings, n, self.settings.objects[n], self.metrics)
                       for n in members}
            if channel not in await store.checkpoint_topics():
                # Describe first (a configuration the org refuses stops here), then capture the channel's position
                # before any extract: the channel replays every change after it (docs/design.md, contract 5).
                await for_each(list(streams.values()), lambda s: s.applier.load_schema())
                await until_stopped(self.stop, capture_channel_position(pubsub, store, self.settings))
            await backfill_members(store, self.settings, list(streams.values()), self.stop)
            channel_stream = ChannelStream(pubsub, store, self.settings, streams, self.metrics, detach)
            try:
                await channel_stream.run(self.stop)
            finally:
                members[:] = list(channel_stream.members)

        try:
            await asyncio.gather(self._keep_running(channel, once),
                                 *(self._supervise(client, pubsub, store, n) for n in alone))
        finally:
            await asyncio.gather(*extra, return_exceptions=True)

    async def _poll(self, client, store: Store, name: str) -> None:
        """A polled object (pipeline/poll.py): the same backfill, its poll position captured before it, then
        rounds until the service stops."""
        obj, health = self.settings.objects[name], self.metrics.object(name)
        poller = ObjectPoller(client, store, self.settings, name, obj, self.metrics)
        st = await store.get_object(name)
        has_position = await store.load_poll_position(poller.topic) is not None
        if st is not None and st.phase != "NEW" and not has_position:
            # Replicated (or extracted) before without a poll position: it streamed change events. Extract it again
            # from a fresh position: an extract begun earlier would leave a hole. A switch without a new extract
            # (capture, then hand off) is issue 12 §1, not done yet.
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
        await poller.run(self.stop)

    async def _supervise_events(self, pubsub, store: Store, name: str) -> None:
        await self._keep_running(f"/event/{name}",
                                 lambda: PlatformEventStream(pubsub, store, self.settings, name).run(self.stop))


async def _choose_modes(pubsub, store: Store, settings: Settings, metrics: Metrics) -> dict[str, str]:
    """Every object's mode (as _supervise decides it, which logs it again), a few GetTopic calls at a time; stored."""
    gate, modes = asyncio.Semaphore(8), {}

    async def one(name: str) -> None:
        async with gate:
            mode, reason = await _choose_mode(pubsub, name, settings.objects[name].mode)
        await store.set_mode(name, mode, reason)
        metrics.object(name).mode = modes[name] = mode

    await asyncio.gather(*(one(n) for n in settings.objects))
    return {name: modes[name] for name in settings.objects}


async def _choose_mode(pubsub, name: str, configured: str) -> tuple[str, str]:
    """(mode, why) of an object: `poll` when configured; else `cdc` when its change-event topic exists (Pub/Sub
    GetTopic answers NOT_FOUND for an entity not selected for Change Data Capture: docs/pubsub-cdc.md
    §4, "Topic unknown, or CDC not enabled for the entity"; docs/salesforce-coverage.md §2), else `poll` for
    `auto`, and a configuration error for `cdc`."""
    if configured == "poll":
        return "poll", 'configured (mode = "poll")'
    topic = topic_for(name)
    try:
        await pubsub.get_topic(topic)
    except TerminalError as exc:
        if exc.code != "TOPIC_NOT_FOUND":
            raise
        if configured == "cdc":
            raise ConfigError(f'objects.{name}: mode = "cdc" but {name} has no change-event topic ({topic}): select '
                              'it for Change Data Capture in the org, or set mode = "auto" or "poll"') from None
        return "poll", f"no change-event topic {topic} (the entity is not selected for Change Data Capture)"
    return "cdc", ('configured (mode = "cdc"), ' if configured == "cdc" else "") + f"change-event topic {topic} exists"


async def run_command(settings: Settings) -> int:
    return await Service(settings).run()
