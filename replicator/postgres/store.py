"""The one door to Postgres: `Store` owns the connection pool, and every call through it leaves with database
failures mapped to the project's error kinds (postgres/errors.py). Nothing outside `postgres/` acquires a
connection or imports asyncpg.

Each method is one unit of work on a connection of its own from the pool (never shared between tasks); the
sinks (`page_sink`, `stream_sink`) and `comparison` hold what a longer unit needs (a table's description, one
connection for a comparison's temporary tables).
"""

from __future__ import annotations

import contextlib
import datetime as dt
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, Concatenate, ParamSpec, TypeVar

import asyncpg

from ..model import Checkpoint, DeadLetter, RowOp, TableInfo, TableSpec
from ..position import Position, StreamPosition
from . import dead_letters, events, history, leases, refresh, repairs, state, status
from .apply import ApplyResult, StreamSink, apply_objects
from .compare import Comparison
from .ddl import quote_ident
from .errors import map_error, mapped
from .migrate import STATE_SCHEMA, require_migrated
from .migrate import migrate as apply_migrations
from .refresh import Refresh
from .server import resolve_database
from .sink import DeltaSink, PageSink
from .state import ObjectState

P = ParamSpec("P")
T = TypeVar("T")
_Job = TypeVar("_Job", Comparison, Refresh)  # a job held on one connection (`Store._held`)


class Store:
    """Replication state, checkpoints, dead letters and target tables in one Postgres database."""

    def __init__(self, pool: asyncpg.Pool, state_schema: str = STATE_SCHEMA):
        self._pool = pool
        self.state_schema = state_schema

    @classmethod
    @contextlib.asynccontextmanager
    async def open(cls, url: str | None, pool_size: int, migrate: bool = True,
                   state_schema: str = STATE_SCHEMA, application_name: str | None = None,
                   idle_in_transaction_s: float | None = None) -> AsyncIterator[Store]:
        """A migrated store on `url` (or the local server, or a throwaway one: postgres/server.py). With `migrate`
        false (the read-only commands), nothing is created: a database without the current state schema raises
        `TerminalError` in one line (postgres/migrate.py `require_migrated`).

        `state_schema` holds one org's state (config.py `OrgSettings`: `replicator` for the org named `default`,
        `replicator_<org>` for the others): every connection of the pool has it as its `search_path`, and the
        state's SQL names its tables unqualified, so one org's Store never reads or writes another's state.
        `application_name`: what `pg_stat_activity` shows for its sessions (which replica and org).

        `idle_in_transaction_s`: a session whose transaction waits that long for its next statement is ended by
        the server, the transaction rolled back (`idle_in_transaction_session_timeout`). The service's stores get
        `service.lease_s` (app/runtime.py): a process paused inside a write transaction (SIGSTOP, a frozen VM)
        holds its locks, the lease row's among them once past the fence check (postgres/leases.py), and without
        this an acquisition of the unit would wait for it to wake, however long it sleeps. Every transaction of
        the state and the sinks is statements only, no network call between them: a healthy process never idles
        in one for long."""
        async with resolve_database(url) as dsn:
            pool = await _create_pool(dsn, pool_size, state_schema, application_name, idle_in_transaction_s)
            try:
                store = cls(pool, state_schema)
                await store._run(apply_migrations if migrate else require_migrated, state_schema)
                yield store
            finally:
                await pool.close()

    @mapped
    async def _run(self, fn: Callable[Concatenate[asyncpg.Connection, P], Awaitable[T]], *args: Any) -> T:
        async with self._pool.acquire() as conn:
            return await fn(conn, *args)

    @mapped
    async def _write(self, fn: Callable[Concatenate[asyncpg.Connection, P], Awaitable[T]], *args: Any) -> T:
        """`fn` in a transaction that ends with the fence check of the unit the caller works for (postgres/leases.py):
        a process that lost the unit commits nothing (LeaseLost)."""
        async with self._pool.acquire() as conn, leases.transaction(conn):
            return await fn(conn, *args)

    # ---- the sinks ------------------------------------------------------------------------------------------
    def page_sink(self, table: TableInfo) -> PageSink:
        return PageSink(self._pool, table)

    def delta_sink(self, table: TableInfo) -> DeltaSink:
        """A polled object's Bulk deltas and key reconciliation (pipeline/poll.py)."""
        return DeltaSink(self._pool, table)

    def stream_sink(self, table: TableInfo) -> StreamSink:
        return StreamSink(self._pool, table)

    async def apply_objects(self, parts: list[tuple[StreamSink, list[RowOp]]], dead: list[DeadLetter],
                            checkpoint: Checkpoint, events: int, must_find: bool = False,
                            members: list[tuple[str, int, int | None]] | None = None) -> list[ApplyResult]:
        """Several objects' rows, the dead letters and one checkpoint in ONE transaction (a channel's batch), with
        each member's figures (object, events, newest commit ms) when given."""
        return await apply_objects(self._pool, parts, dead, checkpoint, events, must_find, members)

    def comparison(self, spec: TableSpec, hard_deletes: bool) -> contextlib.AbstractAsyncContextManager[Comparison]:
        """A comparison of `spec`'s table with an extract, on one connection held for its temporary tables."""
        return self._held(lambda conn: Comparison(conn, spec, hard_deletes))

    def refresh(self, table: TableInfo, columns: list[str],
                lower_only: frozenset[str] = frozenset()) -> contextlib.AbstractAsyncContextManager[Refresh]:
        """A refresh of `columns` of `table` (postgres/refresh.py), on one connection held for its staging table."""
        return self._held(lambda conn: Refresh(conn, table, columns, lower_only))

    @contextlib.asynccontextmanager
    async def _held(self, make: Callable[[asyncpg.Connection], _Job]) -> AsyncIterator[_Job]:
        """A job on one connection held for its temporary tables: `start()`ed, and `close()`d whatever happens."""
        async with _acquire(self._pool) as conn:
            job = make(conn)
            await job.start()
            try:
                yield job
            finally:
                await job.close()

    async def check_history(self, table: TableInfo) -> dict[str, list[str]]:
        """`replicator verify --history` (postgres/history.py `check`)."""
        return await self._run(history.check, table)

    @mapped
    async def prune_history(self, table: TableInfo, days: float, batch: int) -> int:
        """Delete versions closed more than `days` ago, `batch` a transaction (postgres/history.py `prune`)."""
        return await history.prune(self._pool, table, days, batch)

    async def last_refresh(self, name: str) -> dict | None:
        return await self._run(refresh.last_refresh, name)

    async def record_refresh_error(self, name: str, error: str) -> None:
        await self._write(refresh.record_error, name, error)

    # ---- derivation repairs (pipeline/repairs.py, postgres/repairs.py) ------------------------------------
    async def repairs_settled(self, name: str) -> set[str]:
        return await self._run(repairs.settled, name)

    async def record_repairs_not_needed(self, name: str, reasons: dict[str, str]) -> None:
        await self._write(repairs.not_needed, name, reasons)

    async def created_with(self, version: int) -> bool:
        return await self._run(repairs.created_with, version)

    async def first_loaded_after(self, name: str, version: int) -> bool:
        return await self._run(repairs.first_loaded_after, name, version)

    async def any_row(self, table: TableInfo, predicate: str) -> bool:
        return await self._run(repairs.any_row, table, predicate)

    async def list_repairs(self) -> list[dict]:
        return await self._run(repairs.list_repairs)

    # ---- objects --------------------------------------------------------------------------------------------
    async def get_object(self, name: str) -> ObjectState | None:
        return await self._run(state.get_object, name)

    async def set_phase(self, name: str, phase: str, error: str | None = None) -> None:
        await self._write(state.set_phase, name, phase, error)

    async def record_error(self, name: str, error: str) -> None:
        await self._write(state.record_error, name, error)

    async def fail_object(self, name: str, error: str) -> None:
        await self._write(state.fail_object, name, error)

    async def begin_resync(self, name: str, reason: str) -> None:
        await self._write(state.begin_resync, name, reason)

    async def resync_requested(self, name: str) -> bool:
        return await self._run(state.resync_requested, name)

    async def resync_requests(self) -> set[str]:
        """Objects an operator asked to resync (one query for every object of a channel)."""
        return await self._run(_resync_requests)

    async def checkpoint_topics(self) -> set[str]:
        """The topics and channels that have a checkpoint."""
        return await self._run(_checkpoint_topics)

    async def request_resync(self, name: str) -> str:
        return await self._run(state.request_resync, name)

    # ---- backfill jobs --------------------------------------------------------------------------------------
    async def start_job(self, name: str, job_id: str, load_mode: str, page_size: int,
                        created_in_org: dt.datetime | None = None) -> None:
        await self._write(state.start_job, name, job_id, load_mode, page_size, created_in_org)

    async def set_expected(self, name: str, rows: int) -> None:
        await self._write(state.set_expected, name, rows)

    async def committed_pages(self, name: str, job_id: str) -> set[str]:
        return await self._run(state.committed_pages, name, job_id)

    async def finish_backfill(self, name: str, counts_as_refresh: bool = False) -> None:
        await self._write(state.finish_backfill, name, counts_as_refresh)

    # ---- checkpoints ----------------------------------------------------------------------------------------
    async def load_checkpoint(self, topic: str) -> bytes | None:
        return await self._run(state.load_checkpoint, topic)

    async def save_checkpoint(self, checkpoint: Checkpoint) -> None:
        await self._write(state.save_checkpoint, checkpoint)

    async def drop_checkpoint(self, topic: str) -> None:
        await self._write(state.drop_checkpoint, topic)

    async def load_poll_position(self, topic: str) -> Checkpoint | None:
        return await self._run(state.load_poll_position, topic)

    async def set_mode(self, name: str, mode: str, reason: str, channel: str | None = None) -> None:
        await self._write(state.set_mode, name, mode, reason, channel)

    async def streamed_objects(self) -> dict[str, str | None]:
        return await self._run(state.streamed_objects)

    async def own_position(self, name: str) -> Position | None:
        return await self._run(state.own_position, name)

    async def stream_position(self, topic: str) -> StreamPosition | None:
        return await self._run(state.stream_position, topic)

    async def poll_from_stream(self, name: str, position: Checkpoint) -> int:
        return await self._write(state.poll_from_stream, name, position)

    async def checkpoint_times(self, topic: str) -> tuple[float | None, float, float] | None:
        return await self._run(state.checkpoint_times, topic)

    # ---- dead letters ---------------------------------------------------------------------------------------
    async def open_dead_letters(self, object_: str | None = None, ids: list[int] | None = None,
                                due_only: bool = False, limit: int | None = None) -> list[dict]:
        return await self._run(dead_letters.list_open, object_, ids, due_only, limit)

    async def resolve_dead_letters(self, ids: list[int], resolution: str) -> None:
        await self._run(dead_letters.resolve, ids, resolution)

    async def dead_letters_failed_again(self, ids: list[int], reason: str) -> None:
        await self._run(dead_letters.failed_again, ids, reason)

    async def drop_dead_letters(self, object_: str | None, ids: list[int] | None) -> int:
        return await self._run(dead_letters.drop, object_, ids)

    # ---- platform events ------------------------------------------------------------------------------------
    async def prepare_events(self, schema: str, table: str) -> None:
        await self._run(events.prepare, schema, table)

    async def append_events(self, schema: str, table: str, rows: list[tuple[bytes, str, str | None, dict]],
                            checkpoint: Checkpoint, count: int, dead: list[DeadLetter]) -> int:
        return await self._write(events.append, schema, table, rows, checkpoint, count, dead)

    # ---- leases (postgres/leases.py) ----------------------------------------------------------------------------
    async def acquire_lease(self, unit: str, owner: str, lease_s: float) -> int | None:
        return await self._run(leases.acquire, unit, owner, lease_s)

    async def fence_stands(self, unit: str, number: int) -> bool:
        """`unit`'s lease still carries fence `number` (postgres/leases.py `Fence.stands`: the answer of a connection
        other than the one whose session ended)."""
        return await self._run(leases.stands, unit, number)

    async def renew_leases(self, owner: str, fences: dict[str, int], lease_s: float) -> set[str]:
        """Renew every lease of `fences` ({unit: fence}) in one statement: the units renewed (the others are lost)."""
        return await self._run(leases.renew_all, owner, fences, lease_s)

    async def release_lease(self, unit: str, owner: str, fence: int) -> None:
        await self._run(leases.release, unit, owner, fence)

    async def leases(self) -> list[dict]:
        return await self._run(leases.list_leases)

    async def run_elsewhere(self, owner: str, units: list[str]) -> set[str]:
        return await self._run(leases.run_elsewhere, owner, units)

    async def heartbeat(self, replica: str, units: list[str], held: int, lease_s: float) -> None:
        await self._run(leases.heartbeat, replica, units, held, lease_s)

    async def leave(self, replica: str) -> None:
        await self._run(leases.leave, replica)

    async def survey(self, replica: str, units: list[str]) -> dict:
        return await self._run(leases.survey, replica, units)

    async def replicas(self) -> list[dict]:
        return await self._run(leases.list_replicas)

    # ---- views ----------------------------------------------------------------------------------------------
    async def object_rows(self) -> list[dict]:
        """One dict per object for `replicator status`."""
        return await self._run(status.object_rows)

    async def table_rows(self, schema: str, table: str) -> int | None:
        """Rows in a target table, or None when it does not exist yet."""
        return await self._run(status.table_rows, schema, table)

    async def now(self) -> dt.datetime:
        """The database's clock (compared with `_sf_synced_at`, which the database stamps)."""
        return await self._run(_fetch_now)

    async def ping(self) -> None:
        """Raise unless the database answers a query (readiness)."""
        await self._run(_fetch_now)

    def usage(self) -> tuple[int, int, int]:
        """Pool connections: (open, idle, max)."""
        return self._pool.get_size(), self._pool.get_idle_size(), self._pool.get_max_size()


@mapped
async def _create_pool(dsn: str, size: int, state_schema: str, application_name: str | None,
                       idle_in_transaction_s: float | None = None) -> asyncpg.Pool:
    # No floor of idle connections (min_size=0): a floor is restored by a background task of asyncpg's that logs a
    # traceback at every failed reconnect during an outage ("Failed to restore the pool connection floor"). Without
    # one, connections are made when work needs them and fail into that work's own retry; idle ones are kept for
    # max_inactive_connection_lifetime (300 s). asyncpg documentation, "Connection Pools",
    # https://magicstack.github.io/asyncpg/current/api/index.html#connection-pools
    # The org's state schema alone on the search path (pg_catalog is searched first implicitly, temporary tables
    # before it): the target tables are always named with their schema. PostgreSQL documentation, "The Schema
    # Search Path", https://www.postgresql.org/docs/current/ddl-schemas.html#DDL-SCHEMAS-PATH
    settings = {"search_path": quote_ident(state_schema)}
    if application_name:
        settings["application_name"] = application_name[:63]  # PostgreSQL keeps 63 bytes (NAMEDATALEN - 1)
    if idle_in_transaction_s:  # milliseconds; PostgreSQL documentation, "Client Connection Defaults",
        # https://www.postgresql.org/docs/current/runtime-config-client.html#GUC-IDLE-IN-TRANSACTION-SESSION-TIMEOUT
        settings["idle_in_transaction_session_timeout"] = str(max(int(idle_in_transaction_s * 1000), 1))
    return await asyncpg.create_pool(dsn, min_size=0, max_size=size, server_settings=settings)


@contextlib.asynccontextmanager
async def _acquire(pool: asyncpg.Pool) -> AsyncIterator[asyncpg.Connection]:
    try:
        conn = await pool.acquire()
    except Exception as exc:
        raise map_error(exc) from exc
    try:
        yield conn
    finally:
        await pool.release(conn)


async def _fetch_now(conn: asyncpg.Connection) -> dt.datetime:
    return await conn.fetchval("SELECT now()")



async def _resync_requests(conn: asyncpg.Connection) -> set[str]:
    return {r[0] for r in await conn.fetch("SELECT object FROM objects WHERE resync_requested")}


async def _checkpoint_topics(conn: asyncpg.Connection) -> set[str]:
    return {r[0] for r in await conn.fetch("SELECT topic FROM checkpoints")}
