"""Leases and fences: one writer per unit of work (docs/operating.md "One writer"; docs/design.md, contract 10).

A unit (`object:Account`, `channel:/data/ChangeEvents`) is held through its row in `leases`
(sql/009_leases.sql). Acquiring takes a lease that expired or that this owner already holds, and adds one to its
`fence`; the holder (app/units.py) renews it every third of its length, every lease it holds in one statement
(`renew_all`), and expires it on a clean stop. Every time
is the database's clock (`now()`), so the replicas' clocks never matter.

A lease alone cannot stop a writer that does not know it lost it (paused, partitioned, slow). The fence does: the
unit's work runs with its `Fence` in a context variable (`fenced`), and every write transaction of rows or a
checkpoint is a `transaction`, which calls `check` as its last statement, inside it: the lease row must still carry the fence
this process acquired, else the transaction raises `LeaseLost` and rolls back. `FOR SHARE` holds the row until the
commit, so an acquisition (an UPDATE of the row) waits for commits already past their check and every commit after
it fails: there is no instant at which both owners can commit. A shared lock, so the unit's concurrent
transactions (a backfill's parallel pages) do not wait for each other; last in the transaction, so a renewal waits
at most for one commit. This is the fence of Estuary Flow's SQL materializations (github.com/estuary/connectors: a
new owner installs a bumped fence, a stale one fails "fenced off by another"). Advisory locks cannot do it: a pooler
in transaction mode (PgBouncer) hands their session to another client. A holder paused inside a write transaction
(SIGSTOP, a frozen VM) keeps its locks, the lease row's among them once past the check, and so the unit, until it
wakes: the service's sessions end a transaction idle for `service.lease_s` (postgres/store.py `Store.open`), which
rolls it back.

Work outside any unit (the one-shot commands: `backfill`, `refresh`, `verify --repair`, `dead-letters`) runs
without a fence and is not checked.

The context variable, rather than a fence passed down every call: every write path of `postgres/` checks it
without each pipeline and each Store method carrying a parameter, and asyncio copies it into the tasks a unit
starts (a backfill's page downloads, a channel's members), so they write under the unit's fence too.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextvars import ContextVar
from dataclasses import dataclass

import asyncpg

from ..model import LeaseLost

ASK_TIMEOUT_S = 5.0  # `Fence.stands`: longest wait for the answer (a new connection may be needed)


@dataclass(slots=True, eq=False)
class Fence:
    """A unit held by this process: the fence number its acquisition returned."""

    unit: str
    owner: str
    number: int
    on_refused: Callable[[str], None] | None = None  # called with the unit when a commit is refused (a metric)
    lost: bool = False  # a renewal found the lease taken: every check refuses without asking the database
    ask: Callable[[str, int], Awaitable[bool]] | None = None  # on a connection of its own: does (unit, number) stand?

    async def stands(self) -> bool:
        """Whether the lease still carries this fence, asked on another connection (`ask`: the session of the
        transaction that wants to know has ended); True when it cannot tell (no `ask`, or the database did not
        answer), so the caller keeps its own error, a transient one retried."""
        if self.lost:
            return False
        if self.ask is None:
            return True
        try:
            async with asyncio.timeout(ASK_TIMEOUT_S):  # a database that does not answer: the caller's error goes on
                return await self.ask(self.unit, self.number)
        except Exception:
            return True

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
            "SELECT true FROM leases WHERE unit = $1 AND fence = $2 FOR SHARE", fence.unit, fence.number):
        return
    raise fence.refuse()


@contextlib.asynccontextmanager
async def transaction(conn: asyncpg.Connection) -> AsyncIterator[asyncpg.Connection]:
    """A write transaction on `conn` that ends with `check`: committed only while this process holds the unit.

    A session that ends inside it (the server ends a transaction idle for `service.lease_s`, postgres/store.py
    `Store.open`: the process was paused in it; or the connection broke) is the fence's refusal too when the lease
    no longer carries the fence (`Fence.stands`, asked on another connection): LeaseLost, counted, what the check
    would have answered had the process been awake to ask. Otherwise the session's own error goes on (transient:
    retried, and the retry commits under the same fence). Without this, whether a process resumed after losing
    its unit counted its refused commit depended on which came first after the pause: the server ending the
    idle transaction, or the process's check."""
    fence = _current.get()
    try:
        async with conn.transaction():
            yield conn
            await check(conn)
    except Exception as exc:
        if fence is None or isinstance(exc, LeaseLost) or not _ended(conn) or await fence.stands():
            raise
        raise fence.refuse() from exc


def _ended(conn: asyncpg.Connection) -> bool:
    try:
        return conn.is_closed()
    except asyncpg.InterfaceError:  # a pool's connection, handed back to the pool once its session ended
        return True


async def stands(conn: asyncpg.Connection, unit: str, number: int) -> bool:
    """The lease of `unit` still carries fence `number` (expired or not: its holder may renew it yet)."""
    return bool(await conn.fetchval("SELECT EXISTS (SELECT 1 FROM leases WHERE unit = $1 AND fence = $2)",
                                    unit, number))


async def acquire(conn: asyncpg.Connection, unit: str, owner: str, lease_s: float) -> int | None:
    """Take `unit` when its lease expired or `owner` holds it already (a restart with the same replica id), with a
    new fence; None while another owner holds it."""
    return await conn.fetchval(
        "INSERT INTO leases AS l (unit, owner, fence, expires_at)"
        " VALUES ($1, $2, 1, now() + make_interval(secs => $3))"
        " ON CONFLICT (unit) DO UPDATE SET owner = EXCLUDED.owner, fence = l.fence + 1,"
        " expires_at = EXCLUDED.expires_at, acquired_at = now(), renewed_at = now()"
        " WHERE l.expires_at <= now() OR l.owner = EXCLUDED.owner"
        " RETURNING fence", unit, owner, float(lease_s))


async def renew_all(conn: asyncpg.Connection, owner: str, fences: dict[str, int], lease_s: float) -> set[str]:
    """Extend by `lease_s` from now, in one statement, every lease of `fences` ({unit: fence}) that still carries
    its fence and `owner`: the units renewed. A unit missing from the answer carries another fence (lost)."""
    return {r["unit"] for r in await conn.fetch(
        "UPDATE leases l SET expires_at = now() + make_interval(secs => $4), renewed_at = now()"
        " FROM unnest($2::text[], $3::bigint[]) AS u(unit, fence)"
        " WHERE l.unit = u.unit AND l.owner = $1 AND l.fence = u.fence RETURNING l.unit",
        owner, list(fences), list(fences.values()), float(lease_s))}


async def renew(conn: asyncpg.Connection, unit: str, owner: str, fence: int, lease_s: float) -> bool:
    """Extend one lease by `lease_s` from now; False when it carries another fence (lost). One statement per unit:
    how app/units.py renewed before `renew_all` (bench/lease_scale.py measures both)."""
    return bool(await conn.fetchval(
        "UPDATE leases SET expires_at = now() + make_interval(secs => $4), renewed_at = now()"
        " WHERE unit = $1 AND owner = $2 AND fence = $3 RETURNING true", unit, owner, fence, float(lease_s)))


async def release(conn: asyncpg.Connection, unit: str, owner: str, fence: int) -> None:
    """Expire the lease now (a clean stop), so a standby takes the unit over at once."""
    await conn.execute("UPDATE leases SET expires_at = now() WHERE unit = $1 AND owner = $2 AND fence = $3",
                       unit, owner, fence)


async def list_leases(conn: asyncpg.Connection) -> list[dict]:
    """Every lease, with whether it is live now (on the database's clock)."""
    rows = await conn.fetch("SELECT unit, owner, fence, expires_at, acquired_at, renewed_at, expires_at > now() AS live"
                            " FROM leases ORDER BY unit")
    return [dict(r) for r in rows]


async def run_elsewhere(conn: asyncpg.Connection, owner: str, units: list[str]) -> set[str]:
    """Which of `units` another process runs now: it holds the unit's live lease, or it is a live replica that runs
    the unit (standing by for it: `replicas`). A channel leaves such an object to its own unit
    (app/channel_unit.py `plan`): an object is written under one lease at a time."""
    return set(await conn.fetchval(
        "SELECT array(SELECT unit FROM leases WHERE unit = ANY($2::text[]) AND owner <> $1"
        " AND expires_at > now()"
        " UNION SELECT u FROM replicas r, unnest(r.units) AS u"
        " WHERE r.replica <> $1 AND r.expires_at > now() AND u = ANY($2::text[]))", owner, units))


# ---- replicas (sql/014_replicas.sql): how many processes share the units (app/fleet.py) -----------------------
# A signal for balancing (and for a channel's plan, which leaves an object another replica runs to it:
# `run_elsewhere`): who writes a unit is decided by its lease and fence above, never here.

async def heartbeat(conn: asyncpg.Connection, replica: str, units: list[str], held: int, lease_s: float) -> None:
    """This replica is live for `lease_s` more, runs `units` and holds `held` of them."""
    await conn.execute(
        "INSERT INTO replicas AS r (replica, units, held, expires_at)"
        " VALUES ($1, $2, $3, now() + make_interval(secs => $4))"
        " ON CONFLICT (replica) DO UPDATE SET units = EXCLUDED.units, held = EXCLUDED.held,"
        " expires_at = EXCLUDED.expires_at, renewed_at = now(),"
        " started_at = CASE WHEN r.expires_at <= now() THEN now() ELSE r.started_at END",
        replica, units, held, float(lease_s))


async def leave(conn: asyncpg.Connection, replica: str) -> None:
    """This replica stops: the others count one fewer at once, rather than after its row expires."""
    await conn.execute("DELETE FROM replicas WHERE replica = $1", replica)


async def survey(conn: asyncpg.Connection, replica: str, units: list[str]) -> dict:
    """What a replica balances by, on the database's clock: `others`, the other live replicas (replica, held, the
    units each runs), and `leases`: {unit: row} of this replica's `units` (owner, fence, live, age_s since the
    last renewal). app/fleet.py decides from them."""
    others = await conn.fetch("SELECT replica, held, units FROM replicas WHERE expires_at > now() AND replica <> $1"
                              " ORDER BY replica", replica)
    rows = await conn.fetch(
        "SELECT unit, owner, fence, expires_at > now() AS live,"
        " extract(epoch FROM now() - renewed_at)::float8 AS age_s"
        " FROM leases WHERE unit = ANY($1::text[])", units)
    return {"others": [dict(r) for r in others], "leases": {r["unit"]: dict(r) for r in rows}}


async def list_replicas(conn: asyncpg.Connection) -> list[dict]:
    """The live replicas (`replicator status`): each one's name, units held, and seconds since its last renewal."""
    rows = await conn.fetch(
        "SELECT replica, held, cardinality(units) AS units, started_at,"
        " extract(epoch FROM now() - renewed_at)::float8 AS age_s"
        " FROM replicas WHERE expires_at > now() ORDER BY replica")
    return [dict(r) for r in rows]
