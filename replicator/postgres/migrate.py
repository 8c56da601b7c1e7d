"""Applies the ordered, idempotent migrations in `sql/` to an org's state schema, once each.

The files name the state's tables unqualified: they land in the schema first on the connection's `search_path`,
which the Store sets to the org's state schema (`replicator` for the org named `default`, `replicator_<org>` for
the others; postgres/store.py). A schema's own `schema_migrations` says what it has."""

from __future__ import annotations

from importlib import resources

import asyncpg
import structlog

from ..model import TerminalError
from .ddl import quote_ident

log = structlog.get_logger(__name__)

# Any constant works; it keeps two processes from migrating at the same time.
_LOCK_KEY = 0x5F5E1A

# The state schema of the org named `default` (a configuration without `[orgs.<name>]`): where it has always been.
STATE_SCHEMA = "replicator"


def migration_files() -> list[tuple[int, str, str]]:
    """(version, name, sql) sorted by version; files are named NNN_description.sql."""
    out = []
    for entry in resources.files("replicator.postgres").joinpath("sql").iterdir():
        if entry.name.endswith(".sql"):
            out.append((int(entry.name.split("_", 1)[0]), entry.name, entry.read_text()))
    return sorted(out)


async def migrate(conn: asyncpg.Connection, schema: str = STATE_SCHEMA) -> list[str]:
    """Apply missing migrations to the state schema `schema`; returns the names applied. Safe to call again (and
    concurrently)."""
    applied: list[str] = []
    async with conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock($1)", _LOCK_KEY)
        await conn.execute(
            f"CREATE SCHEMA IF NOT EXISTS {quote_ident(schema)};"
            f"SET LOCAL search_path = {quote_ident(schema)};"  # the files name the state's tables unqualified
            "CREATE TABLE IF NOT EXISTS schema_migrations ("
            " version integer PRIMARY KEY, name text NOT NULL, applied_at timestamptz NOT NULL DEFAULT now())"
        )
        done = {r["version"] for r in await conn.fetch("SELECT version FROM schema_migrations")}
        for version, name, sql in migration_files():
            if version in done:
                continue
            await conn.execute(sql)
            await conn.execute("INSERT INTO schema_migrations (version, name) VALUES ($1, $2)", version, name)
            applied.append(name)
    if applied:
        log.info("postgres.migrated", applied=applied)
    return applied


async def require_migrated(conn: asyncpg.Connection, schema: str = STATE_SCHEMA) -> None:
    """For the read-only commands, which never migrate (a command that only reads must not create a schema in
    whatever database it reached): raise `TerminalError` with one line when the state schema is missing, or is
    from an earlier release with migrations still to apply."""
    database = await conn.fetchval("SELECT current_database()")
    if await conn.fetchval("SELECT to_regclass(format('%I.schema_migrations', $1::text))", schema) is None:
        raise TerminalError(f'postgres: database "{database}" has no replicator state (no schema {schema}): nothing '
                            "ran against it; check postgres.url (or DATABASE_URL), or `replicator run` / `replicator "
                            "backfill` first", code="NO_STATE")
    done = {r["version"] for r in await conn.fetch(f"SELECT version FROM {quote_ident(schema)}.schema_migrations")}
    pending = [name for version, name, _ in migration_files() if version not in done]
    if pending:
        raise TerminalError(f'postgres: the replicator state in database "{database}" is from an earlier release '
                            f"({', '.join(pending)} not applied): `replicator run` or `replicator backfill` applies "
                            "them; read-only commands do not", code="STATE_OUTDATED")
