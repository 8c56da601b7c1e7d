"""The refresh's side in Postgres (pipeline/refresh.py): an extract of Id plus the refreshed columns is COPied into
a temporary staging table, page by page, then ONE `UPDATE … FROM` staging writes the rows whose refreshed values
differ, and only those columns, in the transaction that records the refresh in `refreshes`.

The columns the stream owns are never written: the UPDATE sets the refreshed columns alone (not the version, the
stream position nor `_sf_synced_at`, so the version guard, `verify --repair` and a resync's removal of rows the
extract lacks see the row as the stream left it).

A refresh racing with the stream: a row written after the refresh's job was created (`_sf_synced_at` at or after
`started_at`, both on the database's clock) is left alone and counted as skipped. Every write of a row carries
what Salesforce held before its transaction began (a change event already committed, a record fetched or polled
before the write), so a row written before the job began holds nothing newer than the extract, which Salesforce
takes after the job is created: the extract's values may replace it. A row written later may hold a record fetched
after the extract (a gap healed, a poll round) whose refreshed values are newer: the extract must not replace them.
The next refresh compares it again. The condition sits in the UPDATE's own WHERE, so a concurrent stream write is
re-checked under the row lock (READ COMMITTED re-evaluates the WHERE of an updated row).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import AsyncIterable, Awaitable, Callable

import asyncpg

from ..model import SYNCED_COLUMN, TableInfo
from . import ddl, history, leases
from .errors import mapped
from .sink import strip_nul_chunks

_STAGING = "_refresh_extract"


# Records a finished refresh in its UPDATE's transaction: (conn, compared, changed, skipped). The scheduled refresh
# records itself in refreshes (`record`); a derivation repair in repairs (postgres/repairs.py).
Recorder = Callable[[asyncpg.Connection, int, int, int], Awaitable[None]]


class Refresh:
    """One refresh of one table, on one connection held for its staging table (`Store.refresh`).

    `lower_only`: columns of `columns` whose extract value replaces the row's only when it is lower (a timestamp
    an earlier release wrote too late: never moved forward, which would run ahead of changes the stream has still
    to apply: postgres/repairs.py)."""

    def __init__(self, conn: asyncpg.Connection, table: TableInfo, columns: list[str],
                 lower_only: frozenset[str] = frozenset()):
        self.conn = conn
        self.t = table
        self.columns = columns  # lower-cased column names, in the extract's order after Id
        self.lower_only = lower_only

    @property
    def staged(self) -> list[str]:
        return ["id", *self.columns]

    @mapped
    async def start(self) -> None:
        types = {c.name: c.pg_type for c in self.t.spec.columns}
        cols = ", ".join(f"{ddl.quote_ident(c)} {types[c]}" for c in self.staged)
        await self.conn.execute(f"DROP TABLE IF EXISTS {ddl.quote_ident(_STAGING)}")
        await self.conn.execute(f"CREATE TEMP TABLE {ddl.quote_ident(_STAGING)} ({cols})")

    @mapped
    async def load(self, chunks: AsyncIterable[bytes]) -> int:
        """COPY one result page (CSV bytes, header line first) into staging. One statement: a page cut short by
        the network loads nothing, and the caller loads it again."""
        status = await self.conn.copy_to_table(
            _STAGING, source=strip_nul_chunks(chunks), columns=self.staged, format="csv", header=True,
            force_null=self.columns)
        return int(status.rsplit(" ", 1)[-1])

    def _differs(self, a: str, b: str) -> str:
        """SQL: row `a` holds a value of a refreshed column that `b`'s (the extract's) replaces."""
        return " OR ".join(
            f"{b}.{q} < {a}.{q}" if c in self.lower_only else f"{a}.{q} IS DISTINCT FROM {b}.{q}"
            for c in self.columns for q in [ddl.quote_ident(c)])

    def _set(self, c: str) -> str:
        q = ddl.quote_ident(c)
        if c in self.lower_only:
            return f"{q} = CASE WHEN s.{q} < t.{q} THEN s.{q} ELSE t.{q} END"
        return f"{q} = s.{q}"

    @mapped
    async def apply(self, started_at: dt.datetime, job_id: str, duration_s: float,
                    recorder: Recorder | None = None) -> tuple[int, int, int]:
        """Write the differing rows and record the refresh (`recorder`, default the scheduled refresh's row), in one
        transaction. Returns (rows compared, rows changed, rows skipped because they were written after
        `started_at`). Safe to call again: a second call finds nothing differing."""
        t, s = ddl.qualified(self.t.spec), ddl.quote_ident(_STAGING)
        synced = ddl.quote_ident(SYNCED_COLUMN)
        sets = ", ".join(self._set(c) for c in self.columns)
        async with leases.transaction(self.conn):
            if self.t.history is not None:  # the refreshed columns are written into the current versions
                await history.mark(self.conn, "refresh")
            compared = await self.conn.fetchval(f"SELECT count(*) FROM {s}")
            status = await self.conn.execute(
                f'UPDATE {t} AS t SET {sets} FROM {s} AS s WHERE t."id" = s."id" AND t.{synced} < $1 '
                f"AND ({self._differs('t', 's')})", started_at)
            changed = int(status.rsplit(" ", 1)[-1])
            skipped = await self.conn.fetchval(
                f'SELECT count(*) FROM {t} AS t JOIN {s} AS s ON t."id" = s."id" WHERE {self._differs("t", "s")}')
            if recorder is None:
                await record(self.conn, self.t.spec.object, self.columns, job_id, started_at, compared, changed,
                             skipped, duration_s)
            else:
                await recorder(self.conn, compared, changed, skipped)
        return compared, changed, skipped

    @mapped
    async def close(self) -> None:
        await self.conn.execute(f"DROP TABLE IF EXISTS {ddl.quote_ident(_STAGING)}")


async def record(conn: asyncpg.Connection, name: str, columns: list[str], job_id: str, started_at: dt.datetime,
                 compared: int, changed: int, skipped: int, duration_s: float) -> None:
    await conn.execute(
        "INSERT INTO refreshes AS r (object, columns, job_id, started_at, finished_at, rows_compared,"
        " rows_changed, rows_skipped, duration_s, refreshes) VALUES ($1, $2, $3, $4, now(), $5, $6, $7, $8, 1)"
        " ON CONFLICT (object) DO UPDATE SET columns = $2, job_id = $3, started_at = $4, finished_at = now(),"
        " rows_compared = $5, rows_changed = $6, rows_skipped = $7, duration_s = $8, refreshes = r.refreshes + 1,"
        " last_error = NULL, failed_at = NULL",
        name, columns, job_id, started_at, compared, changed, skipped, duration_s)


async def record_error(conn: asyncpg.Connection, name: str, error: str) -> None:
    await conn.execute(
        "INSERT INTO refreshes AS r (object, last_error, failed_at) VALUES ($1, $2, now())"
        " ON CONFLICT (object) DO UPDATE SET last_error = $2, failed_at = now()", name, error)


async def last_refresh(conn: asyncpg.Connection, name: str) -> dict | None:
    """The object's row of `refreshes` (finished_at is NULL while none has finished), or None."""
    row = await conn.fetchrow("SELECT * FROM refreshes WHERE object = $1", name)
    return dict(row) if row else None
