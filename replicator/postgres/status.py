"""Read-only views of the state tables, for `replicator status` (works against a service running elsewhere)."""

from __future__ import annotations

import asyncpg

from .ddl import quote_ident


async def object_rows(conn: asyncpg.Connection) -> list[dict]:
    rows = await conn.fetch(
        "SELECT o.object, o.phase, o.table_schema, o.table_name, o.key_field, o.job_id, o.load_mode,"
        " o.pages_done, o.rows_loaded, o.rows_expected, o.backfill_started_at, o.backfill_finished_at,"
        " o.last_error, o.updated_at, o.resyncs, o.last_resync_at, o.last_resync_reason, o.resync_requested,"
        " e.replay_id, e.committed_at AS last_event_committed_at, e.applied_at AS last_event_applied_at,"
        " e.events_applied,"
        " o.channel, o.mode, o.mode_reason, p.poll_systemmodstamp, p.poll_id, p.poll_deleted_through,"
        " p.events_applied AS rows_polled,"
        " r.finished_at AS refreshed_at, r.rows_compared AS refresh_rows_compared,"
        " r.rows_changed AS refresh_rows_changed, r.rows_skipped AS refresh_rows_skipped,"
        " r.duration_s AS refresh_duration_s, r.columns AS refresh_columns, r.last_error AS refresh_error,"
        " round(extract(epoch FROM e.applied_at - e.committed_at)::numeric, 3)::float8 AS lag_s,"
        " round(extract(epoch FROM now() - coalesce(m.updated_at, c.updated_at))::numeric, 1)::float8"
        "   AS checkpoint_age_s,"
        " (SELECT count(*) FROM dead_letters d WHERE d.object = o.object AND d.resolved_at IS NULL)"
        "   AS dead_letters,"
        # Who writes the object (docs/operating.md "One writer"): its own lease while live, else its channel's (its
        # members are written under the channel's lease); NULL when no live process holds it. `owner` is `held_by` (the
        # holder's service.replica_id) under the name of the lease's column; lease_age_s: since its last renewal.
        " h.unit AS held_unit, h.owner AS held_by, h.owner, h.fence, h.expires_at AS lease_expires_at,"
        " round(extract(epoch FROM now() - h.renewed_at)::numeric, 1)::float8 AS lease_age_s"
        " FROM objects o LEFT JOIN checkpoints c ON c.topic = '/data/' ||"
        "   CASE WHEN o.object LIKE '%\\_\\_c' THEN left(o.object, -1) ELSE o.object END || 'ChangeEvent'"
        " LEFT JOIN checkpoints m ON m.topic = o.channel"
        # The event figures' one source: a channel's member its own (sql/015_member_events.sql), not the channel's
        # checkpoint's, which counts every member; an object on its own subscription its topic's checkpoint.
        " CROSS JOIN LATERAL (SELECT c.replay_id, c.commit_timestamp AS committed_at, c.applied_at, c.events_applied"
        "   WHERE o.channel IS NULL UNION ALL SELECT m.replay_id, o.member_committed_at, o.member_applied_at,"
        "   o.member_events_applied WHERE o.channel IS NOT NULL) e"
        " LEFT JOIN checkpoints p ON p.topic = 'poll:' || o.object"
        " LEFT JOIN refreshes r ON r.object = o.object"
        " LEFT JOIN LATERAL (SELECT unit, owner, fence, expires_at, renewed_at FROM leases l"
        "   WHERE l.expires_at > now() AND (l.unit = 'object:' || o.object OR l.unit = 'channel:' || o.channel"
        # no channel stored yet (a first start's members extract, joiners poll past the channel's position): a
        # live channel's, the process that will store it
        "   OR (o.channel IS NULL AND l.unit LIKE 'channel:%'))"
        "   ORDER BY l.unit LIKE 'channel:%', l.unit LIMIT 1) h ON true"
        " ORDER BY o.object"
    )
    return [dict(r) for r in rows]


async def table_rows(conn: asyncpg.Connection, schema: str, table: str) -> int | None:
    """Rows in `schema.table`, or None when the table does not exist (yet)."""
    qualified = f"{quote_ident(schema)}.{quote_ident(table)}"
    if await conn.fetchval("SELECT to_regclass($1)", qualified) is None:
        return None
    return await conn.fetchval(f"SELECT count(*) FROM {qualified}")
