"""`replicator run`: for every configured object, backfill when needed, then stream; objects run concurrently
and one failing object retries with backoff without stopping the others. An error no retry fixes (model.ConfigError)
stops its object (phase FAILED) and the others go on; the service ends with exit code 2 when nothing is left that
can run, or at once when every unit shares the error (model.ServiceConfigError: the credentials, postgres.url).
SIGINT/SIGTERM stop it cleanly:
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
from ..model import ConfigError, PermanentError, ServiceConfigError, Stopped
from ..observe.endpoints import Endpoints
from ..observe.metrics import Metrics
from ..pipeline.history import prune_daily
from ..pipeline.platform_events import PlatformEventStream
from ..pipeline.refresh import RefreshSchedule
from ..pipeline.schema import history_names
from ..pipeline.stopping import sleep_or_stop
from ..pipeline.stream import ObjectStream
from ..postgres import leases
from ..postgres.store import Store
from ..retry import restart_delay, waits_end_on
from ..salesforce.pubsub import PubSubClient
from .channel_unit import ChannelUnit
from .handoffs import leave_unconfigured
from .limits import OrgLimits
from .object_unit import ObjectUnit
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
            'these members): one subscription and one transaction per batch for all of them (docs/channels.md); '
            'each object on its own subscription costs a stream, a batch transaction and a '
            'keepalive checkpoint of its own'}


def stop_on_signals(on_stop: Callable[[signal.Signals], None]) -> None:
    """SIGINT and SIGTERM: the first calls `on_stop` (a drain within `service.shutdown_timeout_s`), a second exits at
    once (the operator insists; open transactions roll back in Postgres). Not on the main thread (tests drive the
    stop directly): nothing is installed."""
    count = 0

    def handler(sig: signal.Signals) -> None:
        nonlocal count
        count += 1
        if count > 1:
            log.error("service.abort", signal=sig.name, action="exiting at once; uncommitted batches roll back")
            os._exit(1)
        on_stop(sig)

    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        try:
            loop.add_signal_handler(sig, handler, sig)
        except (NotImplementedError, RuntimeError):
            pass


def _first_error(group: BaseExceptionGroup) -> BaseException:
    """The error a unit group ended with: a configuration error first (it decides the exit code), else the first."""
    leaves: list[BaseException] = []

    def walk(exc: BaseException) -> None:
        if isinstance(exc, BaseExceptionGroup):
            for inner in exc.exceptions:
                walk(inner)
        else:
            leaves.append(exc)

    walk(group)
    return next((e for e in leaves if isinstance(e, ConfigError)), leaves[0])


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
    """The supervisor: the units of work (app/object_unit.py, app/channel_unit.py, platform events, refresh
    schedules, the limits watcher) run in one task group; a unit retries its own failures (`keep_running`). A
    configuration error stops an object on its own (phase FAILED), and the service once every object has stopped
    so; one every unit shares (the credentials, the database), or one in another unit (a channel), stops them all
    and the service (exit code 2)."""

    def __init__(self, settings: Settings):
        self.settings = settings
        self.stop = asyncio.Event()
        self.streams: dict[str, ObjectStream] = {}
        self.metrics = Metrics(retention_s=settings.service.retention_hours * 3600)
        for name in settings.objects:
            self.metrics.object(name)
        self.endpoints: Endpoints | None = None
        self.limits: OrgLimits | None = None  # the org's allocations and the API budget, once connected
        self.client = self.pubsub = None
        self.store: Store | None = None
        self._group: asyncio.TaskGroup | None = None
        self.failed: dict[str, str] = {}  # objects stopped on an error no retry fixes, with it (`keep_running`)

    def _on_signal(self, sig: signal.Signals) -> None:
        log.info("service.stopping", signal=sig.name, bound_s=self.settings.service.shutdown_timeout_s)
        if self.endpoints is not None:
            self.endpoints.stopping = True
        self.stop.set()

    async def run(self) -> int:
        stop_on_signals(self._on_signal)
        svc = self.settings.service
        if svc.metrics:
            self.endpoints = Endpoints(self.metrics, svc.host, svc.port, svc.ready_max_lag_s)
            await self.endpoints.start()
        try:
            return await self.serve()
        finally:
            if self.endpoints is not None:
                await self.endpoints.stop()

    async def serve(self) -> int:
        """The units until `stop` is set (or nothing is left to run), then the drain within
        `service.shutdown_timeout_s`: 0, or 1 when the drain overran. `run` adds the signals and the endpoints; a
        deployment of several orgs serves each org's Service beside the others' (app/deployment.py)."""
        svc = self.settings.service
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
        log.info("service.stopped")
        return 0

    async def _work(self) -> None:
        if advice := subscription_advice(self.settings):
            log.warning("service.many_subscriptions", **advice)
        async with salesforce_client(self.settings) as client, open_store(self.settings) as store:
            self.client, self.store = client, store
            self.metrics.client, self.metrics.store = client, store
            # one writer per unit; each org balanced on its own, its extra units on other replicas than the others'
            self.units = Units(store, self.settings.service, self.metrics, self.stop, self.settings.org_index)
            sf = self.settings.salesforce
            self.limits = self.metrics.limits = OrgLimits(client, sf.api_reserve, sf.limits_interval_s)
            self.pubsub = PubSubClient(sf.pubsub_endpoint, client.tokens,
                                       ca_file=str(sf.ca_file) if sf.ca_file else None, tls=sf.pubsub_tls)
            try:
                with waits_end_on(self.stop):  # every retry wait ends at once when the service stops
                    await self._run_units(client, store)
            except BaseExceptionGroup as group:
                raise _first_error(group) from None
            finally:
                self._group = None
                await self.units.close()  # after the drain: a standby takes the units over at once
                self.metrics.store = None
                close = getattr(self.pubsub, "close", None)
                if close is not None:
                    await close()

    async def _run_units(self, client, store: Store) -> None:
        """Every unit in one task group: a unit retries its own failures; an error that escapes one (a
        configuration error) cancels the others."""
        async with asyncio.TaskGroup() as self._group:
            self.spawn(self.keep_running("limits", lambda: self.limits.run(self.stop)))
            if self.settings.stream.channel:  # one subscription for many objects, else one unit each
                self.spawn(ChannelUnit(self).run())
            else:
                for name in self.settings.objects:
                    self.spawn(ObjectUnit(self, name).run())
            # tried again with backoff when the database or the org fails it, as a unit is; never the service's end
            self.spawn(self.keep_running("unconfigured", self._leave_unconfigured))
            for name in self.settings.stream.platform_events:
                self.spawn(self.keep_running(f"/event/{name}", self.units.holding(
                    f"events:{name}", lambda stop, n=name: PlatformEventStream(self.pubsub, store, self.settings,
                                                                               n).run(stop)),
                    on_failed=lambda error, n=name: self._event_failed(n, error)))
            for name in self.settings.objects:  # beside each object's way: what events never carry
                self.spawn(self.units.follow(
                    [f"object:{name}", f"channel:{self.settings.stream.channel}"],
                    lambda stop, n=name: RefreshSchedule(client, store, self.settings, n, self.metrics,
                                                         gate=self._budget_gate(stop)).run(stop)))
                if history_names(self.settings, self.settings.objects[name]) is not None \
                        and self.settings.history.retention_days:
                    self.spawn(self.units.follow(
                        [f"object:{name}", f"channel:{self.settings.stream.channel}"],
                        lambda stop, n=name: prune_daily(client, store, self.settings, n, stop)))

    def spawn(self, unit: Awaitable[None]) -> None:
        """Run a unit in the service's task group (a channel hands members to units of their own this way). The
        unit starts outside the spawner's lease: it writes under its own (app/units.py), never another's."""

        async def own() -> None:
            with leases.fenced(None):
                await unit

        assert self._group is not None, "units run inside Service._work"
        self._group.create_task(own())

    async def _leave_unconfigured(self) -> None:
        """An object out of the configuration whose position is a channel's checkpoint or its own topic's keeps its
        own position as a time position (lifecycle HANDOFFS CHANNEL -> NONE, TOPIC -> NONE), so that adding it back
        later polls past it, then streams; a poll position stays as it is. The configured channel's unit does this
        for its own members (app/channel_unit.py); here, under each other channel's lease for the channels no longer
        configured, and under each object's own lease for the objects that had a topic of their own."""
        stored: dict[str | None, list[str]] = {}
        for name, channel in (await self.store.streamed_objects()).items():
            if name not in self.settings.objects and (not channel or channel != self.settings.stream.channel):
                stored.setdefault(channel or None, []).append(name)
        try:
            for channel, names in stored.items():
                for unit, members in ([(f"channel:{channel}", names)] if channel else
                                      [(f"object:{name}", [name]) for name in names]):
                    async with self.units.hold(unit):
                        await leave_unconfigured(self.store, self.client, self.settings, channel, members)
                    # nothing of this process runs under it any more: released, not renewed for the process's life
                    await self.units.forget(unit, "no longer configured; its position kept as a time position")
        except Stopped:
            return
        await self.stop.wait()  # done: `keep_running` runs it again only after a failure

    def _budget_gate(self, stop: asyncio.Event) -> Callable[[str], Awaitable[None]]:
        """The refresh's gate: wait while the org's remaining daily API requests are below `salesforce.api_reserve`
        (app/limits.py logs entering and leaving that state); the unit's stop (handed back, or the service stops)
        ends the wait."""

        async def gate(name: str) -> None:
            while self.limits is not None and not self.limits.allows() and not stop.is_set():
                await sleep_or_stop(stop, self.settings.service.control_poll_s)

        return gate

    async def keep_running(self, what: str, once: Callable[[], Awaitable[None]],
                           on_error: Callable[[str], Awaitable[None]] | None = None,
                           on_failed: Callable[[str], Awaitable[None]] | None = None) -> None:
        """Run `once` until the service stops; a failure runs it again after `retry.restart_delay` (1 s doubling
        to 60 s, jittered) and never stops the other objects. An error no retry fixes (model.PermanentError: a
        configuration error, every job of an extract failed) ends this unit when it has `on_failed` (an object on
        its own, which records phase FAILED), and the service once every configured object has stopped so; a
        `ServiceConfigError` (every unit shares it), or a configuration error in a unit without `on_failed`, stops
        the service at once (exit code 2)."""
        failures = 0
        while not self.stop.is_set():
            started = time.monotonic()
            try:
                await once()
                failures = 0
            except Stopped:
                return
            except Exception as exc:
                if isinstance(exc, ConfigError) and (on_failed is None or isinstance(exc, ServiceConfigError)):
                    raise
                if isinstance(exc, PermanentError) and on_failed is not None:
                    await self._failed_for_good(what, exc, on_failed)
                    return
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

    async def _event_failed(self, name: str, error: str) -> None:
        """A platform event topic stopped on an error no retry fixes: FAILED in /readyz and the metrics."""
        self.metrics.object(f"/event/{name}").fail(error)

    async def _failed_for_good(self, what: str, exc: PermanentError, on_failed: Callable[[str], Awaitable[None]]) -> None:
        """An object stopped on an error no retry fixes: recorded by `on_failed` (phase FAILED, its error), logged
        once, not run again by this process. Raises the service's configuration error (exit code 2) when nothing
        is left to run: every configured object stopped so, and no platform event to keep."""
        error = f"{type(exc).__name__}: {exc}"
        self.metrics.errors.labels(object=what, kind=type(exc).__name__).inc()
        unrecorded = await _report(on_failed, error)
        self.failed[what] = str(exc)
        left = [n for n in self.settings.objects if n not in self.failed]
        events_left = [e for e in self.settings.stream.platform_events if f"/event/{e}" not in self.failed]
        nothing_left = not left and not events_left
        log.error("service.object_failed", object=what, error=error, objects_running=len(left),
                  action="stopped: no retry fixes this; fix it, then start the service again"
                         + ("; nothing is left to run" if nothing_left else ", the other objects go on"),
                  **({"not_recorded": unrecorded} if unrecorded else {}))
        if nothing_left:
            shown = [e if n in e else f"{n}: {e}" for n, e in list(self.failed.items())[:3]]
            more = len(self.failed) - len(shown)
            raise ConfigError("nothing left to run, every object stopped on an error no retry fixes: "
                              + "; ".join(shown) + (f"; and {more} more (replicator status shows each)" if more else ""))


async def run_command(settings: Settings) -> int:
    return await Service(settings).run()
