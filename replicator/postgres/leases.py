"""Leases and fences: one writer per unit of work (README "One writer"; docs/design.md, contract 10).

A unit (`object:Account`, `channel:/data/ChangeEvents`) is held through its row in `replicator.leases`
(sql/009_leases.sql). Acquiring takes a lease that expired or that this owner already holds, and adds one to its
`fence`; the holder (app/units.py) renews it every third of its length and expires it on a clean stop. Every time
is the database's clock (`now()`), so the replicas' clocks never matter.

A lease alone cannot stop a writer that does not know it lost it (paused, partitioned, slow). The fence does: the
unit's work runs with its `Fence` in a context variable (`fenced`), and every write transaction of rows or a
checkpoint calls `check` as its last statement, inside the transaction: the lease row must still carry the fence
this process acquired, else the transaction raises `LeaseLost` and rolls back. `FOR SHARE` holds the row until the
commit, so an acquisition (an UPDATE of the row) waits for commits already past their check and every commit after
it fails: there is no instant at which both owners can commit. A shared lock, so the unit's concurrent
transactions (a backfill's parallel pages) do not wait for each other; last in the transaction, so a renewal waits
at most for one commit. This is the fence of Estuary Flow's SQL materializations (github.com/estuary/connectors: a
new owner installs a bumped fence, a stale one fails "fenced off by another"). Advisory locks cannot do it: a pooler
in transaction mode (PgBouncer) hands their session to another client.

Work outside any unit (the one-shot commands: `backfill`, `refresh`, `verify --repair`, `dead-letters`) runs
without a fence and is not checked.

The context variable, rather than a fence passed down every call: every write path of `postgres/` checks it
without each pipeline and each Store method carrying a parameter, and asyncio copies it into the tasks a unit
starts (a backfill's page downloads, a channel's members), so they write under the unit's fence too.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from contextvars import ContextVar
from dataclasses import dataclass

import asyncpg

from ..model import LeaseLost


@dataclass(slots=True, eq=False)
class Fence:
    """A unit held by this process: the fence number its acquisition returned."""

    unit: str
    owner: str
    number: int
    on_refused: Callable[[str], None] | None = None  # called with the unit when a commit is refused (a metric)
    lost: bool = False  # a renewal found the lease taken: every check refuses without asking the database

    def refuse(self) -> LeaseLost:
        self.lost = True
        if self.on_refused is not None:
            self.on_refused(self.unit)
        return LeaseLost(f"{self.unit}: fenced off by another (this process's fence {self.number} is no longer the "
                         "lease's); nothing of the transaction was committed")


_current: ContextVar[Fence | None] = ContextVar("replicator_fence", default=None)


@contextlib.contextmanager
def fenced(fence: Fence | None) -> Iterator[None]:
    """Writes of the current task (and of the tasks it starts) are checked against `fence` (None: against none, a
    unit started outside its spawner's lease)."""
    token = _current.set(fence)
    try:
        yield
    finally:
        _current.reset(token)


def current() -> Fence | None:
    return _current.get()


async def check(conn: asyncpg.Connection) -> None:
    """The fence check: last statement of a write transaction (see the module docstring). Raises LeaseLost, which
    rolls the caller's transaction back, when the unit's lease carries another fence now."""
    fence = _current.get()
    if fence is None:
        return
    if not fence.lost and await conn.fetchval(
            "SELECT true FROM replicator.leases WHERE unit = $1 AND fence = $2 FOR SHARE", fence.unit, fence.number):
        return
    raise fence.refuse()


async def acquire(conn: asyncpg.Connection, unit: str, owner: str, lease_s: float) -> int | None:
    """Take `unit` when its lease expired or `owner` holds it already (a restart with the same replica id), with a
    new fence; None while another owner holds it."""
    return await conn.fetchval(
        "INSERT INTO replicator.leases AS l (unit, owner, fence, expires_at)"
        " VALUES ($1, $2, 1, now() + make_interval(secs => $3))"
        " ON CONFLICT (unit) DO UPDATE SET owner = EXCLUDED.owner, fence = l.fence + 1,"
        " expires_at = EXCLUDED.expires_at, acquired_at = now(), renewed_at = now()"
        " WHERE l.expires_at <= now() OR l.owner = EXCLUDED.owner"
        " RETURNING fence", unit, owner, float(lease_s))


async def renew(conn: asyncpg.Connection, unit: str, owner: str, fence: int, lease_s: float) -> bool:
    """Extend the lease by `lease_s` from now; False when it carries another fence (lost)."""
    return bool(await conn.fetchval(
        "UPDATE replicator.leases SET expires_at = now() + make_interval(secs => $4), renewed_at = now()"
        " WHERE unit = $1 AND owner = $2 AND fence = $3 RETURNING true", unit, owner, fence, float(lease_s)))


async def release(conn: asyncpg.Connection, unit: str, owner: str, fence: int) -> None:
    """Expire the lease now (a clean stop), so a standby takes the unit over at once."""
    await conn.execute("UPDATE replicator.leases SET expires_at = now() WHERE unit = $1 AND owner = $2 AND fence = $3",
                       unit, owner, fence)


async def list_leases(conn: asyncpg.Connection) -> list[dict]:
    """Every lease, with whether it is live now (on the database's clock)."""
    rows = await conn.fetch("SELECT unit, owner, fence, expires_at, acquired_at, renewed_at, expires_at > now() AS live"
                            " FROM replicator.leases ORDER BY unit")
    return [dict(r) for r in rows]
