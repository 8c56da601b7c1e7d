"""The derivation repairs' side in Postgres (pipeline/repairs.py): which repairs an object has settled
(`repairs`, sql/017_repairs.sql), and what the database knows about who wrote its rows.

A repair's columns are compared with the org by a refresh (postgres/refresh.py) whose UPDATE records the repair in
its own transaction (`recorder`), so a repair cut short records nothing and runs again.
"""

from __future__ import annotations

import datetime as dt

import asyncpg

from ..model import TableInfo
from . import ddl

REPAIRED, NOT_NEEDED = "repaired", "not_needed"


async def settled(conn: asyncpg.Connection, name: str) -> set[str]:
    """The ids of the repairs `name` has settled (repaired, or recorded as not needed)."""
    return {r["repair"] for r in await conn.fetch("SELECT repair FROM repairs WHERE object = $1", name)}


async def not_needed(conn: asyncpg.Connection, name: str, reasons: dict[str, str]) -> None:
    """Record repairs `name` does not need ({repair id: why}). A repair settled already keeps its row."""
    await conn.executemany(
        "INSERT INTO repairs (repair, object, outcome, reason) VALUES ($1, $2, $3, $4)"
        " ON CONFLICT (repair, object) DO NOTHING",
        [(repair, name, NOT_NEEDED, reason) for repair, reason in reasons.items()])


async def repaired(conn: asyncpg.Connection, name: str, repairs: dict[str, list[str]], job_id: str,
                   compared: int, changed: int, skipped: int) -> None:
    """Record `repairs` ({repair id: its columns}) done for `name`, in the transaction of the refresh that did them
    (one extract for all of them: the rows figures are its own)."""
    await conn.executemany(
        "INSERT INTO repairs (repair, object, outcome, columns, job_id, rows_compared, rows_changed,"
        " rows_skipped) VALUES ($1, $2, $3, $4, $5, $6, $7, $8) ON CONFLICT (repair, object) DO NOTHING",
        [(repair, name, REPAIRED, columns, job_id, compared, changed, skipped) for repair, columns in repairs.items()])


async def list_repairs(conn: asyncpg.Connection) -> list[dict]:
    rows = await conn.fetch("SELECT * FROM repairs ORDER BY object, repair")
    return [dict(r) for r in rows]


async def migrated_at(conn: asyncpg.Connection, version: int) -> dt.datetime | None:
    """When migration `version` was applied to this database (None: not yet)."""
    return await conn.fetchval("SELECT applied_at FROM schema_migrations WHERE version = $1", version)


async def created_with(conn: asyncpg.Connection, version: int) -> bool:
    """The state schema was created with migration `version` in it: one transaction applied 001 and `version`
    (postgres/migrate.py applies every missing migration in one transaction, so they share its now()). Then every
    row of the database was written by a release that had that migration."""
    return bool(await conn.fetchval(
        "SELECT a.applied_at = b.applied_at FROM schema_migrations a, schema_migrations b"
        " WHERE a.version = 1 AND b.version = $1", version))


async def first_loaded_after(conn: asyncpg.Connection, name: str, version: int) -> bool:
    """The object's last extract loaded its empty table (load_mode copy: every row from the extract) and began
    after migration `version` was applied: every row of its table was written by a release that had it."""
    return bool(await conn.fetchval(
        "SELECT o.load_mode = 'copy' AND o.backfill_finished_at IS NOT NULL AND o.backfill_started_at > m.applied_at"
        " FROM objects o, schema_migrations m WHERE o.object = $1 AND m.version = $2",
        name, version))


async def any_row(conn: asyncpg.Connection, table: TableInfo, predicate: str) -> bool:
    """Some row of the table matches `predicate` (SQL over the table's columns, built from quoted identifiers and
    literals only: pipeline/repairs.py)."""
    return bool(await conn.fetchval(f"SELECT EXISTS (SELECT 1 FROM {ddl.qualified(table.spec)} WHERE {predicate})"))
