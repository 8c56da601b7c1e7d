"""The units this process holds: one writer per unit of work (docs/operating.md "One writer"; docs/design.md, contract 10).

A unit is an object (`object:Account`, run by the service's per-object supervisor) or a channel
(`channel:/data/ChangeEvents`, whose members are written under the channel's lease). `Units.hold(unit)` waits,
standing by, until this process holds the unit's lease (postgres/leases.py), then runs the caller's work with the
lease's fence in its context, so every commit of that work checks the fence in its own transaction. Which units
this process takes is the fleet's decision (app/fleet.py: at most a fair share of them while other replicas are
live; it acquires them and hands extras back). One renewer task renews every lease this process holds in one
statement every third of `service.lease_s` (docs/scale.md); when a renewal finds one lost (this process was paused,
partitioned or slow past the lease, and another took the unit), the unit's keeper task cancels its work and the unit
stands by again. Cancelling is an economy, not the guard:
the fence refuses whatever the work would still commit. The work is given a third of the lease to reach such a
commit first (a batch in flight is refused and counted in `replicator_fenced_commits_total`, rather than cut at a
random await), then cancelled.

Handing a unit back (`drain`: the fleet balancing, or the service stopping) stops its work cleanly: the work
receives the unit's own stop event (set on a hand-back and when the service stops; every wait under the unit ends
on it, retry.waits_end_on), commits the batch in flight with its checkpoint and ends; then the keeper releases the
lease (expires it now), so another process takes the unit at once. Work that has not ended within
`service.shutdown_timeout_s` is cancelled (its open transaction rolls back) before the release.

Several tasks of this process may hold one unit at once (an object's supervisor, and beside it its refresh, which
`follow`s without acquiring): they share the unit's lease, fence and stop.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable

import structlog

from ..config import ServiceSettings
from ..model import LeaseLost, Stopped
from ..observe.metrics import Metrics
from ..postgres.leases import Fence, fenced
from ..postgres.store import Store
from ..retry import wait_event, waits_end_on
from .fleet import Fleet

log = structlog.get_logger(__name__)

_FAILED = object()  # a lease call the database did not answer

Work = Callable[[asyncio.Event], Awaitable[None]]  # work under a unit, given the unit's stop


def replica_id(settings: ServiceSettings) -> str:
    """`service.replica_id`, else this host's name and process id (unique per process)."""
    return settings.replica_id or f"{socket.gethostname()}:{os.getpid()}"


class _Lease:
    """One unit: its fence while this process holds it, and the tasks working under it."""

    def __init__(self, unit: str):
        self.unit = unit
        self.fence: Fence | None = None
        self.held = asyncio.Event()
        self.holders: set[asyncio.Task] = set()
        self.cut: set[asyncio.Task] = set()  # holders this module cancelled (the lease lost, a drain overran)
        self.idle = asyncio.Event()  # set while no task works under the unit
        self.idle.set()
        self.keeper: asyncio.Task | None = None
        self.refused = False  # standing by: another process holds it, or this one leaves it to another (its share)
        self.stop = asyncio.Event()  # the work under this hold ends (handed back, or the service stops)
        self.draining: str | None = None  # why the unit is being handed back, until released
        self.drain_until = 0.0  # monotonic time: the work still running then is cancelled
        self.wake = asyncio.Event()  # the keeper looks again (a drain asked for, the work ended, the lease lost)
        self.renewed = 0.0  # monotonic time of the acquisition or the last renewal
        self.lost: Fence | None = None  # a renewal found this fence lost: the keeper ends the work under it
        self.acquired = 0.0


class Units:
    def __init__(self, store: Store, settings: ServiceSettings, metrics: Metrics, stop: asyncio.Event,
                 salt: int = 0):
        """`salt`: the org's place among the deployment's orgs (app/fleet.py `shares`)."""
        self.store, self.metrics, self.stop = store, metrics, stop
        self.owner = replica_id(settings)
        self.lease_s = settings.lease_s
        self.drain_s = settings.shutdown_timeout_s
        self.fleet = Fleet(self, settings.lease_poll_s, salt)
        self._leases: dict[str, _Lease] = {}
        self._changed = asyncio.Event()  # set (and replaced) whenever a unit is taken or lost: `follow` looks again
        self._cutting: set[asyncio.Task] = set()
        self._releasing: set[asyncio.Task] = set()  # releases in flight: `close` waits for them
        self._renewer: asyncio.Task | None = None  # renews every lease held, in one statement a tick
        self._no_renewal = asyncio.Event()  # cleared while a renewal is in flight: a release waits, so that the
        self._no_renewal.set()  # renewal cannot land after it and extend the released lease again
        self._stopper: asyncio.Task | None = None  # hands every unit back when the service stops
        metrics.units = self

    def standby(self) -> list[str]:
        """The units this process waits for because another process holds them or is to take them (a unit the
        fleet has not looked at yet is starting, not standing by)."""
        return sorted(u for u, lease in self._leases.items() if lease.fence is None and lease.refused)

    def held(self) -> dict[str, int]:
        """{unit: fence} of the units this process holds."""
        return {u: lease.fence.number for u, lease in self._leases.items() if lease.fence is not None}

    def holding(self, unit: str, work: Work) -> Callable[[], Awaitable[None]]:
        """`work` as one round of a supervisor (`Service._keep_running`): run while holding `unit`. A lost or
        handed-back lease ends the round quietly; the next round stands by until the unit is held again."""

        async def round_() -> None:
            async with self.hold(unit) as stop:
                await work(stop)

        return round_

    @contextlib.asynccontextmanager
    async def hold(self, unit: str) -> AsyncIterator[asyncio.Event]:
        """Wait (standing by) until this process holds `unit`, then run the body under its fence; yields the unit's
        stop, set when the unit is handed back or the service stops (the body then ends at its next resumable point;
        a `Stopped` it raises then ends `hold` quietly). The lease lost: the body is refused at its next commit or
        cancelled, and `hold` ends without an error. Raises Stopped when the service stops while standing by."""
        lease = self._lease(unit)
        while True:
            changed = self._changed
            if lease.fence is not None and not lease.draining:
                break
            await self._until(changed.wait())
        async with self._under(lease) as stop:
            yield stop

    async def follow(self, units: list[str], work: Work) -> None:
        """Run `work` whenever this process holds one of `units` (the first held, in order), under that unit's
        fence and with its stop, without acquiring any: a refresh beside its object's stream. Returns when the
        service stops, or when `work` returns of its own accord."""
        while not self.stop.is_set():
            changed = self._changed
            lease = next((self._leases[u] for u in units
                          if u in self._leases and self._leases[u].fence and not self._leases[u].draining), None)
            try:
                if lease is None:
                    await self._until(changed.wait())
                    continue
                finished = False
                async with self._under(lease) as stop:
                    await work(stop)
                    finished = True
                if finished and not stop.is_set():
                    return
                # the lease was lost or handed back under it: follow again once this process holds one of the units
            except Stopped:
                return

    def _lease(self, unit: str) -> _Lease:
        lease = self._leases.get(unit)
        if lease is None:
            lease = self._leases[unit] = _Lease(unit)
            lease.keeper = asyncio.ensure_future(self._keep(lease))
            self.fleet.start()
            if self._renewer is None:
                self._renewer = asyncio.ensure_future(self._renewing())
            if self._stopper is None:
                self._stopper = asyncio.ensure_future(self._stopping())
        return lease

    async def take(self, lease: _Lease) -> bool:
        """Acquire `lease` (the fleet's decision); False when another process got it first or the database failed."""
        number = await self._try(self.store.acquire_lease(lease.unit, self.owner, self.lease_s), "acquire")
        if number is _FAILED or number is None:
            if number is None:  # another process took it first
                self.stand_by(lease, None)
            return False
        lease.fence = Fence(lease.unit, self.owner, number, on_refused=self._refused, ask=self.store.fence_stands)
        lease.stop, lease.draining, lease.refused = asyncio.Event(), None, False
        lease.renewed = lease.acquired = time.monotonic()
        log.info("lease.taken_over" if number > 1 else "lease.acquired", unit=lease.unit, owner=self.owner,
                 fence=number, lease_s=self.lease_s)
        lease.held.set()
        self._signal()
        if self.stop.is_set():  # acquired while the service stops: handed back at once
            self.drain(lease, "the service stops")
        return True

    def stand_by(self, lease: _Lease, row: dict | None) -> None:
        """This process leaves the unit to another: one that holds it (`row`, its lease), or one to take it."""
        if not lease.refused:
            lease.refused = True
            health = self.metrics.objects.get(lease.unit.removeprefix("object:"))
            if health is not None:  # what this process showed of it (a channel's member before it was handed to its
                # own unit) is stale: the holder shows it (/readyz, status, the gauges). An object this process only
                # stands by for to hand it off (out of its configuration: Service._leave_unconfigured) shows nothing.
                health.reset()
            holder = {"held_by": row["owner"], "fence": row["fence"]} if row and row["live"] else {}
            log.info("lease.standing_by", unit=lease.unit, owner=self.owner, **holder,
                     action="another process holds this unit; this one takes over when it is released or expires"
                     if holder else "left to a replica under its fair share; taken here if nobody takes it")

    def drain(self, lease: _Lease, why: str) -> None:
        """Hand `lease` back: stop the work under it; its keeper releases the lease once the work has ended."""
        if lease.fence is None or lease.draining:
            return
        lease.draining = why
        lease.drain_until = time.monotonic() + self.drain_s
        lease.stop.set()
        lease.wake.set()
        self._signal()
        log.info("lease.draining", unit=lease.unit, owner=self.owner, fence=lease.fence.number, why=why)

    async def _stopping(self) -> None:
        """The service stops: every unit held is handed back as soon as its work has ended (the work of each
        ends on its unit's stop, set here)."""
        await self.stop.wait()
        for lease in self._leases.values():
            self.drain(lease, "the service stops")

    async def forget(self, unit: str, why: str) -> None:
        """This process no longer runs `unit` (a channel no longer configured, once its members left it: app/service.py
        `_leave_unconfigured`): its lease released when held, its keeper ended, and the unit out of the fleet's count
        and of this replica's `replicas` row (the others' fair shares count it no more). Call it once no work runs
        under the unit."""
        lease = self._leases.pop(unit, None)
        if lease is None:
            return
        if lease.keeper is not None:
            lease.keeper.cancel()
            await asyncio.gather(lease.keeper, return_exceptions=True)
        if lease.fence is not None:
            await self._release(lease, lease.fence, why)
        self._signal()

    async def close(self) -> None:
        """Stop renewing and release every unit still held (after the service's drain): a standby takes over at
        once; this replica leaves `replicator.replicas`."""
        await self.fleet.close()
        if self._stopper is not None:
            self._stopper.cancel()
        if self._renewer is not None:  # no renewal after the releases below
            self._renewer.cancel()
            await asyncio.gather(self._renewer, return_exceptions=True)
        for lease in self._leases.values():
            if lease.keeper is not None:
                lease.keeper.cancel()
        await asyncio.gather(*(lease.keeper for lease in self._leases.values() if lease.keeper), return_exceptions=True)
        await asyncio.gather(*self._releasing, return_exceptions=True)  # a keeper's release outlives the keeper
        for lease in self._leases.values():
            if lease.fence is not None:
                await self._release(lease, lease.fence, "closed")

    async def _release(self, lease: _Lease, fence: Fence, why: str) -> None:
        """Expire the lease now (its work has ended): another process takes the unit at once."""
        lease.fence, lease.draining, lease.refused = None, None, True
        lease.held.clear()
        self.fleet.released(lease.unit, fence.number)
        self._signal()
        task = asyncio.ensure_future(self._expire(lease.unit, fence.number, why))
        self._releasing.add(task)
        task.add_done_callback(self._releasing.discard)
        await asyncio.shield(task)

    async def _expire(self, unit: str, fence: int, why: str) -> None:
        try:
            if unit.startswith("channel:") and not self.stop.is_set():  # the units its members were handed to
                await self.fleet.beat()
            await self._no_renewal.wait()  # one that started before the release carries this lease
            await self.store.release_lease(unit, self.owner, fence)
            log.info("lease.released", unit=unit, owner=self.owner, fence=fence, why=why)
        except Exception as exc:  # it expires by itself within service.lease_s
            log.warning("lease.release_failed", unit=unit, error=f"{type(exc).__name__}: {exc}")

    async def _until(self, aw: Awaitable) -> None:
        """Await `aw` unless the service stops first (then Stopped)."""
        task = asyncio.ensure_future(aw)
        stopping = asyncio.ensure_future(self.stop.wait())
        try:
            await asyncio.wait({task, stopping}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for t in (task, stopping):
                t.cancel()
        if not task.done() or task.cancelled():
            raise Stopped("the service is stopping")

    @contextlib.asynccontextmanager
    async def _under(self, lease: _Lease) -> AsyncIterator[asyncio.Event]:
        """The body under `lease`'s fence and stop, as one of its holders; ends quietly when the lease was lost,
        and on a `Stopped` once the unit's stop is set."""
        fence, stop = lease.fence, lease.stop
        assert fence is not None
        task = asyncio.current_task()
        assert task is not None
        lease.holders.add(task)
        lease.idle.clear()
        try:
            with fenced(fence), waits_end_on(stop):
                yield stop
        except asyncio.CancelledError:
            if task not in lease.cut:
                raise
            task.uncancel()
            log.warning("lease.work_cancelled", unit=lease.unit, fence=fence.number)
        except LeaseLost as exc:  # a commit was refused before a renewal found the lease lost (a pause)
            log.warning("lease.fenced", unit=lease.unit, fence=fence.number, error=str(exc))
        except Stopped:
            if not stop.is_set():
                raise
            # handed back: the work ended at a resumable point; the next round stands by
        finally:
            if fence.lost and lease.fence is fence:  # refused (whatever the work made of LeaseLost): stand by
                self._drop(lease, fence)
                cut = asyncio.ensure_future(self._cut(lease))  # any other work under it (a refresh)
                self._cutting.add(cut)
                cut.add_done_callback(self._cutting.discard)
            lease.holders.discard(task)
            lease.cut.discard(task)
            if not lease.holders:
                lease.idle.set()
                lease.wake.set()

    async def _renewing(self) -> None:
        """Every third of the lease, renew every lease this process holds in one statement (a draining one too: its
        work may still commit). A lease the statement did not renew is lost: its keeper ends the work under it.
        When the database fails, each lease still runs until `lease_s` after its own last renewal (lost then), and
        the next tick tries again."""
        while True:
            await asyncio.sleep(self.lease_s / 3)
            held = {lease: lease.fence for lease in self._leases.values() if lease.fence is not None}
            if not held:
                continue
            self._no_renewal.clear()
            try:
                renewed = await self._try(self.store.renew_leases(
                    self.owner, {lease.unit: fence.number for lease, fence in held.items()}, self.lease_s), "renew")
            finally:
                self._no_renewal.set()
            now = time.monotonic()
            for lease, fence in held.items():
                if lease.fence is not fence:  # released or lost while the statement ran
                    continue
                if renewed is not _FAILED and lease.unit in renewed:
                    lease.renewed = now
                elif renewed is not _FAILED or now - lease.renewed >= self.lease_s:
                    lease.lost = fence
                    lease.wake.set()
                # else the database did not answer and the lease still runs: the next tick tries again

    async def _keep(self, lease: _Lease) -> None:
        """While the unit is held: release it once handed back and its work ended (cancelling the work still running
        after `service.shutdown_timeout_s`); when a renewal found it lost (`_renewing`), end the work under it."""
        while True:
            lease.wake.clear()
            fence = lease.fence
            if lease.lost is not None:
                lost, lease.lost = lease.lost, None
                if lost is fence:  # not already dropped (a commit refused) nor released
                    self._drop(lease, fence)
                    await self._cut(lease)
                continue
            if fence is None:
                await lease.held.wait()
                continue
            if lease.draining and lease.idle.is_set():
                await self._release(lease, fence, lease.draining)
                continue
            wait = None  # until woken
            if lease.draining and lease.drain_until != float("inf"):
                wait = lease.drain_until - time.monotonic()
                if wait <= 0:
                    lease.drain_until = float("inf")
                    log.warning("lease.drain_overran", unit=lease.unit, bound_s=self.drain_s,
                                action="the work still running is cancelled; its open transaction rolls back")
                    self._cancel(lease)
                    continue
            await wait_event(lease.wake, wait)

    def _drop(self, lease: _Lease, fence: Fence) -> None:
        """The lease is lost: every further check of its fence refuses at once; new work stands by."""
        fence.lost = True
        lease.fence, lease.draining = None, None
        lease.stop.set()
        lease.held.clear()
        self._signal()
        log.warning("lease.lost", unit=lease.unit, owner=self.owner, fence=fence.number,
                    action="the work under it ends (its commits are refused) and the unit stands by")

    async def _cut(self, lease: _Lease) -> None:
        """End the work under a lost lease: its next commit is refused (which ends it), or it is cancelled after a
        third of the lease. `asyncio.timeout`, not `wait_for`: on Python 3.11 wait_for swallows a cancellation that
        arrives as the work ends (a stop's `close` right after its drain), and the keeper would go on standing by."""
        try:
            async with asyncio.timeout(self.lease_s / 3):
                await lease.idle.wait()
        except TimeoutError:
            pass
        self._cancel(lease)

    def _cancel(self, lease: _Lease) -> None:
        for task in list(lease.holders):
            lease.cut.add(task)
            task.cancel()

    async def _try(self, aw: Awaitable, what: str):
        """`aw`'s answer, or _FAILED when the database failed (logged; the caller tries again)."""
        try:
            return await aw
        except Exception as exc:
            log.warning(f"lease.{what}_failed", error=f"{type(exc).__name__}: {exc}")
            return _FAILED

    def _refused(self, unit: str) -> None:
        self.metrics.fenced_commits.labels(unit=unit).inc()

    def _signal(self) -> None:
        self._changed.set()
        self._changed = asyncio.Event()
