"""A PostgreSQL server of a test's own, for tests that stop, restart or crash the database.

Never do that to the shared server at 127.0.0.1:5432: other tests use it. This one lives in a temporary
directory on a free port and is gone after the test.

Use it as a fixture (import it into the test module: `from .pg_server import own_postgres  # noqa: F401`):

    async def test_something(own_postgres):
        url = await own_postgres.create_database("mine")
        own_postgres.restart(mode="fast")
        own_postgres.stop(mode="immediate"); own_postgres.start()

It needs the server binaries `initdb` and `pg_ctl` on PATH (Debian: `apt-get install postgresql`, then put
/usr/lib/postgresql/<version>/bin on PATH). PostgreSQL refuses to run as root (PostgreSQL documentation, "18.1.
The PostgreSQL User Account", https://www.postgresql.org/docs/current/postgres-user.html), so as root every
command runs as the `postgres` system user (`runuser -u postgres --`), in a directory that user owns.
Authentication is `trust` on loopback only, and `fsync=off` (PostgreSQL documentation, "20.5. Write Ahead Log",
https://www.postgresql.org/docs/current/runtime-config-wal.html): a crash of the machine may lose this throwaway
server's data, an `immediate` stop of the server does not (the WAL is still written; only the flush to disk is
skipped).

The server itself is bench/own_postgres.py's (the transitions bench restarts one too): one implementation, whose
refusals (binaries missing, root without a `postgres` user) fail the test here in one line.
"""

from __future__ import annotations

import pytest

from bench.own_postgres import PostgresServer

__all__ = ["PostgresServer", "own_postgres"]


@pytest.fixture
def own_postgres():
    """A started PostgreSQL server of this test's own (see the module docstring), removed afterwards."""
    try:
        server = PostgresServer()
    except RuntimeError as exc:  # the machine cannot start one: say what to install, without a traceback
        pytest.fail(str(exc), pytrace=False)
    try:
        server.start()
        yield server
    finally:
        server.remove()
