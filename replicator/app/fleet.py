"""Several replicas on one database share the units (docs/replicas.md).

Each process renews a row of its own in `replicator.replicas` (sql/014_replicas.sql) with the units it runs and how
many it holds, expiring after `service.lease_s`; a clean stop deletes it. Every `service.lease_poll_s` it reads
that table and the leases of its units (`Fleet._tick`, on the database's clock), and:

- takes a free unit (its lease expired or released) only while it holds fewer than its fair share, the number of
  units the live replicas run divided by the number of live replicas, rounded up; a unit it handed back itself is
  not taken again for `service.lease_s` unless it is alone, or until another replica took it (`cooling`). A unit nobody took for `service.lease_s` is taken by any
  replica that runs it, share or not: no unit stays unowned while a replica runs it.
- hands back the units it holds beyond its share (the newest first) when another live replica that holds fewer
  than its share runs them: the one that started first and took everything hands back extras once the second is
  seen. Handing back is a drain (app/units.py `Units.drain`): the batch in flight commits with its checkpoint, then
  the lease is released and the other replica takes the unit at its next read.

The table is a signal for balancing (and for a channel's plan: app/channel_unit.py) only: who writes a unit is its lease and fence (postgres/leases.py). A replica
that reads stale counts takes one unit too many or too few for a moment, never a unit another holds.
"""

from __future__ import annotations

import asyncio
import time
import zlib
from typing import TYPE_CHECKING

import structlog

from ..model import Stopped
from ..pipeline.stopping import sleep_or_stop, until_stopped

if TYPE_CHECKING:
    from .units import Units

log = structlog.get_logger(__name__)


def fair_share(units: int, replicas: int) -> int:
    """Units ÷ live replicas, rounded up: the most any replica's share is (`shares`)."""
    return -(-units // max(replicas, 1))


def shares(units: int, replicas: list[str], salt: int = 0) -> dict[str, int]:
    """Each live replica's fair share: units ÷ replicas rounded down, and one more for as many replicas as the
    division leaves units over, the first in the replicas' sorted order counted from place `salt`. The shares add up
    to the units, none is above `fair_share`, and every replica computes the same ones from the same `replicas` rows.
    `salt` is the org's place among the deployment's orgs (config.py `org_index`): each org balanced on its own
    gives its extra units to other replicas than the others', so 3 orgs of 4 units on 3 replicas end 4 + 4 + 4, not
    6 + 3 + 3."""
    names = sorted(replicas)
    count = max(len(names), 1)
    base, extra = divmod(units, count)
    return {name: base + (1 if (place - salt) % count < extra else 0) for place, name in enumerate(names)}


def cooling(handed: dict[str, tuple[float, int]], seen: dict[str, dict], now: float) -> dict[str, tuple[float, int]]:
    """Of the units this replica handed back ({unit: (until, fence it released)}), the ones it still leaves to
    others: until `service.lease_s` after the hand-back, and only while nobody took the unit since (its lease,
    as last read in `seen`, carries no newer fence). A unit another replica took and released again (it stopped
    right after the rebalance: a rolling update) is free like any other, taken at the next read."""
    return {u: (until, fence) for u, (until, fence) in handed.items()
            if until > now and ((row := seen.get(u)) is None or row["fence"] <= fence)}


def plan(share: int, active: list[str], draining: int, free: list[str], free_for: dict[str, float],
         cooling: set[str], wanted: set[str], alone: bool, grace: float) -> tuple[list[str], list[str]]:
    """(units to take, units to hand back) for a replica that holds `active` (oldest first) and hands back
    `draining` more, given the units free now (in the order to take them), how long each has been seen free, the
    ones it handed back lately (`cooling`), which of its own another replica with room runs (`wanted`), and whether
    it is the only live replica."""
    room = share - len(active) - draining
    take = []
    for unit in free:
        if room > 0 and (alone or unit not in cooling):
            take.append(unit)
            room -= 1
        elif free_for.get(unit, 0.0) >= grace:  # nobody else took it: no unit stays unowned
            take.append(unit)
    excess = len(active) - share
    drain = [u for u in reversed(active) if u in wanted][:max(excess, 0)]
    return take, drain


class Fleet:
    """This process's view of the replicas, and its decisions: which free units to take, which to hand back."""

    def __init__(self, units: Units, poll_s: float, salt: int = 0):
        self.units, self.poll_s, self.salt = units, poll_s, salt
        self.replicas, self.total, self.share = 1, 0, 0
        self.seen: dict[str, dict] = {}  # the last read of this process's units' leases: {unit: row}
        self.seen_at = 0.0
        self._free_since: dict[str, float] = {}
        self._cooling: dict[str, tuple[float, int]] = {}  # units handed back: {unit: (until, fence)}, `cooling`
        self._beat: tuple | None = None
        self._beat_at = float("-inf")
        self._task: asyncio.Task | None = None

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.ensure_future(self._run())

    def released(self, unit: str, fence: int) -> None:
        self._cooling[unit] = (time.monotonic() + self.units.lease_s, fence)

    def rows(self) -> list[tuple[str, str, int, float, bool]]:
        """(unit, owner, fence, seconds since the lease's last renewal, held here) of every unit this process runs
        and knows a live holder of (`/metrics`)."""
        now = time.monotonic()
        out = []
        for unit, lease in sorted(self.units._leases.items()):
            if lease.fence is not None:
                out.append((unit, lease.fence.owner, lease.fence.number, now - lease.renewed, True))
            elif (row := self.seen.get(unit)) is not None and row["live"]:
                out.append((unit, row["owner"], row["fence"], row["age_s"] + now - self.seen_at, False))
        return out

    async def close(self) -> None:
        """Leave `replicator.replicas`: the others count one replica fewer at once."""
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        units = self.units
        try:
            await units.store.leave(units.owner)
        except Exception as exc:  # its row expires by itself within service.lease_s
            log.warning("fleet.leave_failed", error=f"{type(exc).__name__}: {exc}")

    async def _run(self) -> None:
        units = self.units
        while not units.stop.is_set():
            try:
                await until_stopped(units.stop, self._tick())
            except Stopped:
                break
            except Exception as exc:  # the database failed: look again at the next read
                log.warning("fleet.read_failed", error=f"{type(exc).__name__}: {exc}")
            await sleep_or_stop(units.stop, self.poll_s)
        try:  # the others count one replica fewer while this one's units drain (Units._stopping)
            await units.store.leave(units.owner)
        except Exception as exc:
            log.warning("fleet.leave_failed", error=f"{type(exc).__name__}: {exc}")

    async def beat(self) -> None:
        """Renew this replica's row when the units it runs or holds changed, or a third of the lease went by. Also
        before a channel is released (app/units.py), so that the process taking it over sees every unit this one
        runs now: the objects the channel just handed to units of their own (app/channel_unit.py `plan`)."""
        units = self.units
        leases = units._leases
        names = sorted(leases)
        held = [n for n in names if leases[n].fence is not None]
        beat = (tuple(names), len(held))
        if beat != self._beat or time.monotonic() - self._beat_at >= units.lease_s / 3:
            await units.store.heartbeat(units.owner, names, len(held), units.lease_s)
            self._beat, self._beat_at = beat, time.monotonic()

    async def _tick(self) -> None:
        units = self.units
        leases = units._leases
        names = sorted(leases)
        held = [n for n in names if leases[n].fence is not None]
        await self.beat()
        seen = await units.store.survey(units.owner, names)
        now = time.monotonic()
        self.seen, self.seen_at = seen["leases"], now
        others = seen["others"]
        total = len(set(names).union(*(o["units"] for o in others)))  # the units the live replicas run
        share_of = shares(total, [units.owner, *(o["replica"] for o in others)], self.salt)
        share, replicas = share_of[units.owner], len(others) + 1
        # which of its units another live replica with room (fewer than its share) runs too: it would take them
        wanted = {u for o in others if o["held"] < share_of[o["replica"]] for u in o["units"]} & set(held)
        if (replicas, total, share) != (self.replicas, self.total, self.share):
            log.info("fleet.share", owner=units.owner, replicas=replicas, units=total, share=share, held=len(held))
        self.replicas, self.total, self.share = replicas, total, share
        free = [n for n in names if leases[n].fence is None and self._free(self.seen.get(n))]
        self._free_since = {n: self._free_since.get(n, now) for n in free}
        self._cooling = cooling(self._cooling, self.seen, now)
        active = sorted((n for n in held if not leases[n].draining), key=lambda n: leases[n].acquired)
        # Each replica tries the free units in an order of its own, so that two taking at once rarely collide.
        order = sorted(free, key=lambda n: zlib.crc32(f"{units.owner}\0{n}".encode()))
        take, drain = plan(share, active, len(held) - len(active), order,
                           {n: now - t for n, t in self._free_since.items()}, set(self._cooling), wanted,
                           replicas == 1, units.lease_s)
        for name in drain:
            units.drain(leases[name], f"fair share: {share} of {total} units for {replicas} replicas")
        for name in take:
            if units.stop.is_set():
                break
            await units.take(leases[name])
        for name in names:
            if leases[name].fence is None and name not in take:  # another holds it, or is to take it
                units.stand_by(leases[name], self.seen.get(name))

    def _free(self, row: dict | None) -> bool:
        """Nobody holds the unit: no lease yet, expired or released, or this replica's own name on it (a restart
        with the same `service.replica_id`)."""
        return row is None or not row["live"] or row["owner"] == self.units.owner
