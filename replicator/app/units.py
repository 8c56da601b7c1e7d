"""The units this process holds: one writer per unit of work (README "One writer"; docs/design.md, contract 10).

A unit is an object (`object:Account`, run by the service's per-object supervisor) or a channel
(`channel:/data/ChangeEvents`, whose members are written under the channel's lease). `Units.hold(unit)` waits,
standing by, until this process acquires the unit's lease (postgres/leases.py), then runs the caller's work with
the lease's fence in its context, so every commit of that work checks the fence in its own transaction. A keeper
task per unit renews the lease every third of `service.lease_s`; when a renewal finds it lost (this process was
paused, partitioned or slow past the lease, and another took the unit), the unit's work is cancelled and stands by
again. Cancelling is an economy, not the guard: the fence refuses whatever the work would still commit. The work is
given a third of the lease to reach such a commit first (a batch in flight is refused and counted in
`replicator_fenced_commits_total`, rather than cut at a random await), then cancelled.

Several tasks of this process may hold one unit at once (an object's supervisor, and beside it its refresh, which
`follow`s without acquiring): they share the unit's lease and fence. Leases are released (expired now, so a standby
takes over at once) by `close`, after the service's drain.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
from collections.abc import AsyncIterator, Awaitable, Callable

import structlog

from ..config import ServiceSettings
from ..model import LeaseLost, Stopped
from ..observe.metrics import Metrics
from ..postgres.leases import Fence, fenced
from ..postgres.store import Store

log = structlog.get_logger(__name__)

_FAILED = object()  # a lease call the database did not answer


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
        self.cut: set[asyncio.Task] = set()  # holders this module cancelled because the lease was lost
        self.idle = asyncio.Event()  # set while no task works under the unit
        self.idle.set()
        self.keeper: asyncio.Task | None = None
        self.refused = False  # the last acquire found another process holding it (not merely: not yet asked)


class Units:
    def __init__(self, store: Store, settings: ServiceSettings, metrics: Metrics, stop: asyncio.Event):
        self.store, self.metrics, self.stop = store, metrics, stop
        self.owner = replica_id(settings)
        self.lease_s = settings.lease_s
        self._leases: dict[str, _Lease] = {}
        self._changed = asyncio.Event()  # set (and replaced) whenever a unit is taken or lost: `follow` looks again
        self._cutting: set[asyncio.Task] = set()
        metrics.units = self

    def standby(self) -> list[str]:
        """The units this process waits for because another process holds them (a unit whose first acquire has
        not answered yet is starting, not standing by)."""
        return sorted(u for u, lease in self._leases.items() if lease.fence is None and lease.refused)

    def held(self) -> dict[str, int]:
        """{unit: fence} of the units this process holds."""
        return {u: lease.fence.number for u, lease in self._leases.items() if lease.fence is not None}

    def holding(self, unit: str, work: Callable[[], Awaitable[None]]) -> Callable[[], Awaitable[None]]:
        """`work` as one round of a supervisor (`Service._keep_running`): run while holding `unit`. A lost lease
        ends the round quietly; the next round stands by until the unit is held again."""

        async def round_() -> None:
            async with self.hold(unit):
                await work()

        return round_

    @contextlib.asynccontextmanager
    async def hold(self, unit: str) -> AsyncIterator[None]:
        """Wait (standing by) until this process holds `unit`, then run the body under its fence. The lease
        lost: the body is refused at its next commit or cancelled, and `hold` ends without an error. Raises
        Stopped when the service stops while standing by."""
        lease = self._leases.get(unit)
        if lease is None:
            lease = self._leases[unit] = _Lease(unit)
            lease.keeper = asyncio.ensure_future(self._keep(lease))
        while lease.fence is None:
            await self._until(lease.held.wait())
        async with self._under(lease):
            yield

    async def follow(self, units: list[str], work: Callable[[], Awaitable[None]]) -> None:
        """Run `work` whenever this process holds one of `units` (the first held, in order), under that unit's
        fence, without acquiring any: a refresh beside its object's stream. Returns when the service stops."""
        while not self.stop.is_set():
            changed = self._changed
            lease = next((self._leases[u] for u in units if u in self._leases and self._leases[u].fence), None)
            try:
                if lease is None:
                    await self._until(changed.wait())
                    continue
                finished = False
                async with self._under(lease):
                    await work()
                    finished = True
                if finished:
                    return
                # the lease was lost under it: follow again once this process holds one of the units
            except Stopped:
                return

    async def close(self) -> None:
        """Stop renewing and release every unit held (after the service's drain): a standby takes over at once."""
        for lease in self._leases.values():
            if lease.keeper is not None:
                lease.keeper.cancel()
        await asyncio.gather(*(lease.keeper for lease in self._leases.values() if lease.keeper), return_exceptions=True)
        for lease in self._leases.values():
            if lease.fence is not None:
                try:
                    await self.store.release_lease(lease.unit, self.owner, lease.fence.number)
                    log.info("lease.released", unit=lease.unit, fence=lease.fence.number)
                except Exception as exc:  # it expires by itself within service.lease_s
                    log.warning("lease.release_failed", unit=lease.unit, error=f"{type(exc).__name__}: {exc}")
                lease.fence = None

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
    async def _under(self, lease: _Lease) -> AsyncIterator[None]:
        """The body under `lease`'s fence, as one of its holders; ends quietly when the lease was lost."""
        fence = lease.fence
        assert fence is not None
        task = asyncio.current_task()
        assert task is not None
        lease.holders.add(task)
        lease.idle.clear()
        try:
            with fenced(fence):
                yield
        except asyncio.CancelledError:
            if task not in lease.cut:
                raise
            task.uncancel()
            log.warning("lease.work_cancelled", unit=lease.unit, fence=fence.number)
        except LeaseLost as exc:  # a commit was refused before a renewal found the lease lost (a pause)
            log.warning("lease.fenced", unit=lease.unit, fence=fence.number, error=str(exc))
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

    async def _keep(self, lease: _Lease) -> None:
        """Acquire the unit (standing by while another holds it), renew it every third of the lease, and when a
        renewal finds it lost, end the work under it and stand by again."""
        loop = asyncio.get_running_loop()
        every = self.lease_s / 3
        waited = False
        while True:
            if lease.fence is None:
                number = await self._try(self.store.acquire_lease(lease.unit, self.owner, self.lease_s), "acquire")
                if number is _FAILED:
                    await asyncio.sleep(every)
                    continue
                if number is None:
                    lease.refused = True
                    if not waited:
                        await self._log_standing_by(lease.unit)
                        waited = True
                    await asyncio.sleep(every)
                    continue
                lease.fence = Fence(lease.unit, self.owner, number, on_refused=self._refused)
                lease.refused = False
                renewed = loop.time()
                log.info("lease.taken_over" if waited else "lease.acquired", unit=lease.unit, owner=self.owner,
                         fence=number, lease_s=self.lease_s)
                waited = False
                lease.held.set()
                self._signal()
            await asyncio.sleep(every)
            fence = lease.fence
            if fence is None:  # the work's commit was refused first (`_under`)
                waited = True
                continue
            ok = await self._try(self.store.renew_lease(lease.unit, self.owner, fence.number, self.lease_s), "renew")
            if ok is True:
                renewed = loop.time()
                continue
            if ok is _FAILED and loop.time() - renewed < self.lease_s:
                continue  # the database did not answer; the lease still runs: try again
            if lease.fence is fence:
                self._drop(lease, fence)
                await self._cut(lease)
            waited = True

    def _drop(self, lease: _Lease, fence: Fence) -> None:
        """The lease is lost: every further check of its fence refuses at once; new work stands by."""
        fence.lost = True
        lease.fence = None
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
        for task in list(lease.holders):
            lease.cut.add(task)
            task.cancel()

    async def _try(self, aw: Awaitable, what: str):
        """`aw`'s answer, or _FAILED when the database failed (logged; the keeper tries again)."""
        try:
            return await aw
        except Exception as exc:
            log.warning(f"lease.{what}_failed", error=f"{type(exc).__name__}: {exc}")
            return _FAILED

    async def _log_standing_by(self, unit: str) -> None:
        rows = await self._try(self.store.leases(), "read")
        row = next((r for r in rows if r["unit"] == unit), None) if rows is not _FAILED else None
        log.info("lease.standing_by", unit=unit, owner=self.owner, held_by=row["owner"] if row else None,
                 fence=row["fence"] if row else None,
                 action="another process holds this unit; this one takes over when its lease expires")

    def _refused(self, unit: str) -> None:
        self.metrics.fenced_commits.labels(unit=unit).inc()

    def _signal(self) -> None:
        self._changed.set()
        self._changed = asyncio.Event()
