"""A simulator shared by the integration tests of a module: real HTTPS on a loopback port; a role without
privileges."""

from __future__ import annotations

import uuid

import asyncpg
import pytest

from replicator.sim.server import SimulatorThread


@pytest.fixture(scope="module")
def sim():
    with SimulatorThread(records=1500, seed=7) as thread:
        yield thread.info


@pytest.fixture
async def role_without_create(pg_url):
    """`pg_url` as a new role that may connect (PUBLIC may) and may not create schemas; the role dropped after."""
    role = f"nocreate_{uuid.uuid4().hex[:8]}"

    async def sql(statement: str) -> None:
        conn = await asyncpg.connect(pg_url)
        try:
            await conn.execute(statement)
        finally:
            await conn.close()

    await sql(f'CREATE ROLE "{role}" LOGIN')
    try:
        as_role = pg_url.replace("://postgres@", f"://{role}@", 1)
        assert as_role != pg_url
        yield as_role
    finally:
        await sql(f'DROP ROLE "{role}"')
