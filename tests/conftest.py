"""Shared fixtures: a real Postgres database of the session's own, made anew and dropped at the end."""

from __future__ import annotations

import os
import urllib.parse
import uuid

import asyncpg
import pytest

from replicator import lifecycle
from replicator.postgres.server import LOCAL_URL


def _server_url() -> str:
    return os.environ.get("DATABASE_URL") or LOCAL_URL


def _with_database(url: str, database: str) -> str:
    return urllib.parse.urlunsplit(urllib.parse.urlsplit(url)._replace(path="/" + database))


@pytest.fixture
async def pg_url():
    """A fresh database for one test on the test server (DATABASE_URL, else 127.0.0.1:5432), dropped after.

    replicator keeps one deployment's state per database, so every test gets its own.
    """
    server = _server_url()
    name = f"replicator_test_{os.getpid()}_{uuid.uuid4().hex[:8]}"
    conn = await asyncpg.connect(server)
    await conn.execute(f'CREATE DATABASE "{name}"')
    await conn.close()
    yield _with_database(server, name)
    conn = await asyncpg.connect(server)
    await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    await conn.close()


@pytest.fixture
async def pg(pg_url):
    conn = await asyncpg.connect(pg_url)
    yield conn
    await conn.close()


@pytest.fixture(autouse=True)
def phase_changes_allowed():
    """Every test: no stored phase change outside the lifecycle's table (lifecycle.PHASES) was written by a service
    or command running in this process (postgres/state.py `change_phase` keeps each in lifecycle.UNEXPECTED)."""
    lifecycle.UNEXPECTED.clear()
    yield
    unexpected, lifecycle.UNEXPECTED[:] = list(lifecycle.UNEXPECTED), []
    assert not unexpected, f"phase changes not in lifecycle.PHASES (object, from, to): {unexpected}"
