"""Platform events: appended to a table of their own, keyed by replay id, with the checkpoint."""

from __future__ import annotations

import asyncpg
import orjson

from ..model import Checkpoint, DeadLetter
from . import ddl, leases, state


def table_sql(schema: str, table: str) -> str:
    q = f"{ddl.quote_ident(schema)}.{ddl.quote_ident(table)}"
    return (
        f"CREATE SCHEMA IF NOT EXISTS {ddl.quote_ident(schema)};"
        f"CREATE TABLE IF NOT EXISTS {q} (replay_id bytea PRIMARY KEY, schema_id text NOT NULL,"
        " event_id text, fields jsonb NOT NULL, received_at timestamptz NOT NULL DEFAULT now())"
    )


async def prepare(conn: asyncpg.Connection, schema: str, table: str) -> None:
    async with conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock(hashtext('replicator.ddl'))")
        await conn.execute(table_sql(schema, table))


async def append(conn: asyncpg.Connection, schema: str, table: str, rows: list[tuple[bytes, str, str | None, dict]],
                 checkpoint: Checkpoint, events: int, dead: list[DeadLetter]) -> int:
    """Insert events (replay id, schema id, event id, decoded fields); a replay id already there adds nothing."""
    q = f"{ddl.quote_ident(schema)}.{ddl.quote_ident(table)}"
    async with leases.transaction(conn):
        inserted = 0
        if rows:
            status = await conn.execute(
                f"INSERT INTO {q} (replay_id, schema_id, event_id, fields) "
                "SELECT * FROM unnest($1::bytea[], $2::text[], $3::text[], $4::jsonb[]) ON CONFLICT DO NOTHING",
                [r[0] for r in rows], [r[1] for r in rows], [r[2] for r in rows],
                [orjson.dumps(r[3], default=str).decode() for r in rows],
            )
            inserted = int(status.rsplit(" ", 1)[-1])
        await state.add_dead_letters(conn, dead)
        await state.save_checkpoint(conn, checkpoint, events)
    return inserted
