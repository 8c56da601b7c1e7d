"""What `replicator check` asks of Postgres before anything runs: the server answers, and the configured role may
create what the first start creates (the state schema `replicator`, the target schema, tables in both). Read-only:
it creates nothing."""

from __future__ import annotations

from dataclasses import dataclass

import asyncpg

from .errors import map_error
from .server import resolve_database


@dataclass(frozen=True, slots=True)
class Probe:
    check: str
    ok: bool
    detail: str


async def probe(url: str | None, schemas: list[str]) -> list[Probe]:
    """One `Probe` for the server, then one per schema (in order): exists and the role may create tables in it, or
    does not exist yet and the role may create it. A failure to connect is the first probe's, and the last."""
    try:
        async with resolve_database(url) as dsn:
            conn = await asyncpg.connect(dsn, timeout=10)
            try:
                return await _probe(conn, schemas)
            finally:
                await conn.close()
    except Exception as exc:
        error = map_error(exc)
        if error is exc and not isinstance(exc, OSError):
            raise
        return [Probe("Postgres", False, str(error))]


async def _probe(conn: asyncpg.Connection, schemas: list[str]) -> list[Probe]:
    user, database, server = await conn.fetchrow(
        "SELECT current_user, current_database(), current_setting('server_version')")
    out = [Probe("Postgres", True, f'database "{database}" as {user} (server {server})')]
    may_create_schema = await conn.fetchval("SELECT has_database_privilege(current_database(), 'CREATE')")
    for schema in schemas:
        exists = await conn.fetchval("SELECT to_regnamespace($1) IS NOT NULL", schema)
        if exists:
            usage, create = await conn.fetchrow(
                "SELECT has_schema_privilege($1, 'USAGE'), has_schema_privilege($1, 'CREATE')", schema)
            ok = usage and create
            detail = (f"exists; {user} may create tables in it" if ok else
                      f"exists, but {user} may not create tables in it: GRANT USAGE, CREATE ON SCHEMA "
                      f'"{schema}" TO "{user}"')
        else:
            ok = may_create_schema
            detail = (f"created at the first start ({user} may create schemas in {database})" if ok else
                      f'does not exist and {user} may not create it: GRANT CREATE ON DATABASE "{database}" TO '
                      f'"{user}", or create the schema for it')
        out.append(Probe(f"schema {schema}", ok, detail))
    return out
