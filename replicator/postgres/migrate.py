"""Applies the ordered, idempotent migrations in `sql/` to the `replicator` state schema, once each."""

from __future__ import annotations

from importlib import resources

import asyncpg
import structlog

log = structlog.get_logger(__name__)

# Any constant works; it keeps two processes from migrating at the same time.
_LOCK_KEY = 0x5F5E1A


def migration_files() -> list[tuple[int, str, str]]:
    """(version, name, sql) sorted by version; files are named NNN_description.sql."""
    out = []
    for entry in resources.files("replicator.postgres").joinpath("sql").iterdir():
        if entry.name.endswith(".sql"):
            out.append((int(entry.name.split("_", 1)[0]), entry.name, entry.read_text()))
    return sorted(out)


async def migrate(conn: asyncpg.Connection) -> list[str]:
    """Apply missing migrations; returns the names applied. Safe to call again (and concurrently)."""
    applied: list[str] = []
    async with conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock($1)", _LOCK_KEY)
        await conn.execute(
            "CREATE SCHEMA IF NOT EXISTS replicator;"
            "CREATE TABLE IF NOT EXISTS replicator.schema_migrations ("
            " version integer PRIMARY KEY, name text NOT NULL, applied_at timestamptz NOT NULL DEFAULT now())"
        )
        done = {r["version"] for r in await conn.fetch("SELECT version FROM replicator.schema_migrations")}
        for version, name, sql in migration_files():
            if version in done:
                continue
            await conn.execute(sql)
            await conn.execute("INSERT INTO replicator.schema_migrations (version, name) VALUES ($1, $2)", version, name)
            applied.append(name)
    if applied:
        log.info("postgres.migrated", applied=applied)
    return applied
