"""Read-only views of the state tables, for `replicator status` (works against a service running elsewhere)."""

from __future__ import annotations

import asyncpg


async def object_rows(conn: asyncpg.Connection) -> list[dict]:
    rows = await conn.fetch(
        "SELECT o.object, o.phase, o.table_schema, o.table_name, o.key_field, o.job_id, o.load_mode,"
        " o.pages_done, o.rows_loaded, o.rows_expected, o.backfill_started_at, o.backfill_finished_at,"
        " o.last_error, o.updated_at, o.resyncs, o.last_resync_at, o.last_resync_reason,"
        " (SELECT replay_id FROM replicator.checkpoints c WHERE c.topic = '/data/' ||"
        "   CASE WHEN o.object LIKE '%\\_\\_c' THEN left(o.object, -1) ELSE o.object END || 'ChangeEvent') AS replay_id,"
        " (SELECT count(*) FROM replicator.dead_letters d WHERE d.object = o.object AND d.resolved_at IS NULL)"
        "   AS dead_letters"
        " FROM replicator.objects o ORDER BY o.object"
    )
    return [dict(r) for r in rows]


async def table_rows(conn: asyncpg.Connection, schema: str, table: str) -> int:
    from .ddl import quote_ident

    return await conn.fetchval(f"SELECT count(*) FROM {quote_ident(schema)}.{quote_ident(table)}")
