"""The state tables (`objects`, `backfill_pages`, `checkpoints`,
`dead_letters` inserts): read and written in the caller's connection and transaction."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Any

import asyncpg
import orjson
import structlog

from .. import lifecycle
from ..lifecycle import Phase
from ..model import VERSION_COLUMN, Checkpoint, DeadLetter
from ..position import Position, StreamPosition
from . import ddl

log = structlog.get_logger(__name__)

EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)


def ms_to_datetime(ms: int) -> dt.datetime:
    return EPOCH + dt.timedelta(milliseconds=ms)


@dataclass(frozen=True, slots=True)
class ObjectState:
    object: str
    phase: str
    job_id: str | None
    load_mode: str | None
    page_size: int | None
    pages_done: int
    rows_loaded: int
    rows_expected: int | None
    fingerprint: str | None
    last_error: str | None
    mode: str | None = None  # cdc | poll (lifecycle.Way with `channel`)
    channel: str | None = None  # the channel whose checkpoint carries its position (mode cdc)


async def get_object(conn: asyncpg.Connection, name: str) -> ObjectState | None:
    row = await conn.fetchrow(
        "SELECT object, phase, job_id, load_mode, page_size, pages_done, rows_loaded, rows_expected, fingerprint,"
        " last_error, mode, channel FROM objects WHERE object = $1",
        name,
    )
    return ObjectState(**dict(row)) if row else None


async def register_object(conn: asyncpg.Connection, name: str, schema: str, table: str, key: str, fp: str) -> None:
    await conn.execute(
        "INSERT INTO objects (object, table_schema, table_name, key_field, fingerprint)"
        " VALUES ($1, $2, $3, $4, $5)"
        " ON CONFLICT (object) DO UPDATE SET table_schema = $2, table_name = $3, key_field = $4, fingerprint = $5,"
        " updated_at = now()",
        name, schema, table, key, fp,
    )


async def change_phase(conn: asyncpg.Connection, name: str, phase: Phase, sets: str = "", *args: Any) -> None:
    """Write `name`'s phase (and `sets`, more assignments using parameters $3 on, `args`), checked against the
    lifecycle's table of allowed changes (lifecycle.PHASES): a change it does not allow is still written (the
    process goes on) but logged at error level and kept in `lifecycle.UNEXPECTED` (the tests fail on one)."""
    old = await conn.fetchval(
        f"UPDATE objects o SET phase = $2, updated_at = now(){', ' + sets if sets else ''}"
        " FROM (SELECT phase FROM objects WHERE object = $1 FOR UPDATE) AS old"
        " WHERE o.object = $1 RETURNING old.phase",
        name, phase, *args)
    if not lifecycle.allowed(old, phase):
        lifecycle.UNEXPECTED.append((name, old, str(phase)))
        log.error("lifecycle.unexpected_phase_change", object=name, old=old, new=str(phase),
                  action="a defect: the change is not in lifecycle.PHASES")


async def start_job(conn: asyncpg.Connection, name: str, job_id: str, load_mode: str, page_size: int,
                    created_in_org: dt.datetime | None = None) -> None:
    """A new extract begins: forget the previous job's page counts (its committed pages stay as history) and the
    keys its pages held (`extract_keys`: the key set is always the running job's). `created_in_org`: the
    job's createdDate (Salesforce's clock), for the removal of rows the extract lacks (`ddl.remove_unseen`)."""
    async with conn.transaction():
        await change_phase(
            conn, name, Phase.BACKFILLING,
            "job_id = $3, job_created_at = now(), load_mode = $4, page_size = $5, pages_done = 0, last_locator = NULL,"
            " rows_loaded = 0, rows_expected = NULL, backfill_started_at = now(), backfill_finished_at = NULL,"
            " last_error = NULL, job_created_in_org = $6",
            job_id, load_mode, page_size, created_in_org,
        )
        await forget_extract_keys(conn, name)


async def forget_extract_keys(conn: asyncpg.Connection, name: str) -> None:
    await conn.execute("DELETE FROM extract_keys WHERE object = $1", name)


async def set_expected(conn: asyncpg.Connection, name: str, rows: int) -> None:
    await conn.execute(
        "UPDATE objects SET rows_expected = $2, updated_at = now() WHERE object = $1", name, rows
    )


async def committed_pages(conn: asyncpg.Connection, name: str, job_id: str) -> set[str]:
    rows = await conn.fetch(
        "SELECT locator FROM backfill_pages WHERE object = $1 AND job_id = $2", name, job_id
    )
    return {r["locator"] for r in rows}


async def record_page(
    conn: asyncpg.Connection, name: str, job_id: str, locator: str, rows: int, dead_letters: int
) -> None:
    """Must run in the transaction that loaded the page's rows (docs/design.md, contract 4)."""
    await conn.execute(
        "INSERT INTO backfill_pages (object, job_id, locator, rows, dead_letters) VALUES ($1,$2,$3,$4,$5)",
        name, job_id, locator, rows, dead_letters,
    )
    await conn.execute(
        "UPDATE objects SET pages_done = pages_done + 1, last_locator = $2,"
        " rows_loaded = rows_loaded + $3, updated_at = now() WHERE object = $1",
        name, locator, rows,
    )


async def finish_backfill(conn: asyncpg.Connection, name: str, counts_as_refresh: bool = False) -> None:
    """The extract is loaded. It read every column, formula fields and LastViewedDate included, as of when it began:
    with `counts_as_refresh` (the object has such columns) it is stored as the object's last refresh
    (refreshes: its job, started_at, rows compared, no row changed), so the next scheduled refresh is due
    `formula_refresh_s` after it, not at once (docs/refresh.md)."""
    async with conn.transaction():
        await change_phase(conn, name, Phase.BACKFILLED, "backfill_finished_at = now(), last_error = NULL")
        # Kept until now, not dropped with the removal: a crash between the two resumes the job, whose removal
        # runs again and needs them.
        await forget_extract_keys(conn, name)
        if not counts_as_refresh:
            return
        await conn.execute(
            "INSERT INTO refreshes AS r (object, job_id, started_at, finished_at, rows_compared)"
            " SELECT object, job_id, backfill_started_at, now(), rows_loaded FROM objects WHERE object = $1"
            " ON CONFLICT (object) DO UPDATE SET job_id = EXCLUDED.job_id, started_at = EXCLUDED.started_at,"
            " finished_at = now(), rows_compared = EXCLUDED.rows_compared, rows_changed = 0, rows_skipped = 0,"
            " duration_s = NULL, last_error = NULL, failed_at = NULL",
            name,
        )


async def fail_object(conn: asyncpg.Connection, name: str, error: str) -> None:
    """The object stopped on an error no retry fixes (lifecycle Phase.FAILED, allowed from any phase), with the
    error: `replicator status` shows it. An object never described has no row yet (a name Salesforce does not
    know): it gets one."""
    await conn.execute(
        "INSERT INTO objects (object, phase, last_error) VALUES ($1, $3, $2)"
        " ON CONFLICT (object) DO UPDATE SET phase = $3, last_error = $2, updated_at = now()",
        name, without_nul(error)[:2000], Phase.FAILED,
    )


def without_nul(value: Any) -> Any:
    """`value` (a string, or strings inside dicts and lists) without NUL, which Postgres stores in neither text nor
    jsonb."""
    if isinstance(value, str):
        return value.replace("\x00", "") if "\x00" in value else value
    if isinstance(value, dict):
        return {without_nul(k): without_nul(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [without_nul(v) for v in value]
    return value


async def add_dead_letters(conn: asyncpg.Connection, dead: list[DeadLetter]) -> None:
    """Store dead letters in the caller's transaction (with the rows or checkpoint they accompany).

    A dead letter must always be storable, or what it carries is lost and the batch or page it belongs to is
    refused again and again (docs/design.md, contract 9). Its payload holds whatever the caller had: a raw CSV row,
    event values, an error that quotes a value. Postgres stores NUL in neither `text` nor `jsonb`
    (docs/baselines.md, "Salesforce-style CSV straight into COPY"), so this writer, the one every dead letter goes
    through, strips NUL from the key, the reason and every string of the payload (keys included). Values that
    came from Salesforce have lost theirs already (salesforce/values.py); this covers the rest."""
    if dead:
        await conn.executemany(
            "INSERT INTO dead_letters (object, record_key, source, reason, payload)"
            " VALUES ($1, $2, $3, $4, $5::jsonb)",
            [(d.object, without_nul(d.key), d.source, without_nul(d.reason),
              orjson.dumps(without_nul(d.payload)).decode()) for d in dead],
        )


async def set_phase(conn: asyncpg.Connection, name: str, phase: Phase, error: str | None = None) -> None:
    await change_phase(conn, name, phase, "last_error = $3", without_nul(error)[:2000] if error else None)


async def record_error(conn: asyncpg.Connection, name: str, error: str) -> None:
    await conn.execute(
        "UPDATE objects SET last_error = $2, updated_at = now() WHERE object = $1", name,
        without_nul(error)[:2000]
    )


async def begin_resync(conn: asyncpg.Connection, name: str, reason: str) -> None:
    """Mark the object RESYNCING (so a restart extracts it again), clear an operator's request, count it."""
    await change_phase(conn, name, Phase.RESYNCING, "resync_requested = false, resyncs = resyncs + 1,"
                       " last_resync_at = now(), last_resync_reason = $3", reason[:500])


async def resync_requested(conn: asyncpg.Connection, name: str) -> bool:
    return bool(await conn.fetchval("SELECT resync_requested FROM objects WHERE object = $1", name))


async def request_resync(conn: asyncpg.Connection, name: str) -> str:
    """`replicator resync`: raise the flag a running (or the next) service picks up, for an object extracted before
    (a finished backfill, a resync begun, or live now). Returns "requested", "unknown" (no state), or the phase of
    an object whose first extract never finished (the flag stays down: the backfill is its extract)."""
    async with conn.transaction():
        row = await conn.fetchrow(
            "SELECT phase, backfill_finished_at IS NOT NULL OR resyncs > 0 OR phase = ANY($2::text[]) AS extracted"
            " FROM objects WHERE object = $1 FOR UPDATE",
            name, [Phase.BACKFILLED, Phase.STREAMING, Phase.RESYNCING],
        )
        if row is None:
            return "unknown"
        if not row["extracted"]:
            return row["phase"]
        await conn.execute(
            "UPDATE objects SET resync_requested = true, updated_at = now() WHERE object = $1", name
        )
        return "requested"


async def request_refill(conn: asyncpg.Connection, name: str) -> None:
    """A field's column was just added to the table of `name` (postgres/sink.py `PageSink.prepare`, whoever
    prepared it: the poller, a refresh, a verify --repair, a channel describing its joiners). A polled object
    streaming its rounds never reads the values set before: its rounds read only records changed since their
    position, and the column's absence was the poller's only sign of the field (pipeline/poll.py `fields_added`).
    So its resync is requested here, in the transaction that adds the column; an object being extracted
    (BACKFILLING, RESYNCING) reads every value anyway, and events carry every value set once the field exists."""
    await conn.execute(
        "UPDATE objects SET resync_requested = true, updated_at = now() WHERE object = $1 AND mode = 'poll'"
        " AND phase = $2 AND NOT resync_requested", name, Phase.STREAMING)


# Checkpoints: one row per Pub/Sub topic, written in the transaction of the batch it covers.


async def save_checkpoint(conn: asyncpg.Connection, cp: Checkpoint, events: int = 0) -> None:
    if cp.poll_modstamp is not None or cp.poll_deleted_through is not None:
        await _save_poll_position(conn, cp, events)
        return
    await conn.execute(
        "INSERT INTO checkpoints (topic, replay_id, commit_timestamp, events_applied, updated_at,"
        " applied_at) VALUES ($1, $2, $3, $4, now(), CASE WHEN $4::bigint > 0 THEN now() END)"
        " ON CONFLICT (topic) DO UPDATE SET replay_id = EXCLUDED.replay_id,"
        " commit_timestamp = coalesce(EXCLUDED.commit_timestamp, checkpoints.commit_timestamp),"
        " events_applied = checkpoints.events_applied + EXCLUDED.events_applied, updated_at = now(),"
        " applied_at = coalesce(EXCLUDED.applied_at, checkpoints.applied_at)",
        cp.topic, cp.replay_id, ms_to_datetime(cp.commit_timestamp) if cp.commit_timestamp is not None else None, events,
    )


async def add_member_events(conn: asyncpg.Connection, members: list[tuple[str, int, int | None]]) -> None:
    """A channel batch's figures for each member it applied events of: (object, events, newest commit time in epoch
    ms or None), added to the member's row (sql/015_member_events.sql) in the batch's transaction."""
    if not members:
        return
    names, counts, commits = zip(*members, strict=True)
    await conn.execute(
        "UPDATE objects o SET member_events_applied = o.member_events_applied + m.events,"
        " member_committed_at = greatest(o.member_committed_at, m.committed), member_applied_at = now()"
        " FROM unnest($1::text[], $2::bigint[], $3::timestamptz[]) AS m(object, events, committed)"
        " WHERE o.object = m.object",
        list(names), list(counts), [ms_to_datetime(c) if c is not None else None for c in commits])


async def _save_poll_position(conn: asyncpg.Connection, cp: Checkpoint, rows: int) -> None:
    """A polled object's position (sql/005_polling.sql); `rows`: records applied, counted in events_applied."""
    await conn.execute(
        "INSERT INTO checkpoints (topic, replay_id, poll_systemmodstamp, poll_id, poll_deleted_through,"
        " events_applied, updated_at, applied_at) VALUES ($1, NULL, $2, $3, $4, $5, now(),"
        " CASE WHEN $5::bigint > 0 THEN now() END)"
        " ON CONFLICT (topic) DO UPDATE SET"
        " poll_systemmodstamp = coalesce(EXCLUDED.poll_systemmodstamp, checkpoints.poll_systemmodstamp),"
        " poll_id = coalesce(EXCLUDED.poll_id, checkpoints.poll_id),"
        " poll_deleted_through = coalesce(EXCLUDED.poll_deleted_through, checkpoints.poll_deleted_through),"
        " events_applied = checkpoints.events_applied + EXCLUDED.events_applied, updated_at = now(),"
        " applied_at = coalesce(EXCLUDED.applied_at, checkpoints.applied_at)",
        cp.topic, _maybe_ts(cp.poll_modstamp), cp.poll_id, _maybe_ts(cp.poll_deleted_through), rows,
    )


def _maybe_ts(ms: int | None) -> dt.datetime | None:
    return ms_to_datetime(ms) if ms is not None else None


async def load_poll_position(conn: asyncpg.Connection, topic: str) -> Checkpoint | None:
    row = await conn.fetchrow(
        "SELECT poll_systemmodstamp, poll_id, poll_deleted_through FROM checkpoints WHERE topic = $1",
        topic)
    if row is None or row["poll_systemmodstamp"] is None:
        return None
    return Checkpoint(topic, None, poll_modstamp=_epoch_ms(row["poll_systemmodstamp"]), poll_id=row["poll_id"],
                      poll_deleted_through=_epoch_ms(row["poll_deleted_through"]))


def _epoch_ms(value: dt.datetime | None) -> int | None:
    return None if value is None else round((value - EPOCH).total_seconds() * 1000)


async def set_mode(conn: asyncpg.Connection, name: str, mode: str, reason: str, channel: str | None = None) -> None:
    """How the object is kept current (cdc or poll; with cdc, the channel carrying its position, else NULL) and
    why: stored once its handoff is stored (app/handoffs.py), so a crash in between repeats the handoff."""
    await conn.execute(
        "INSERT INTO objects (object, mode, mode_reason, channel) VALUES ($1, $2, $3, $4)"
        " ON CONFLICT (object) DO UPDATE SET mode = $2, mode_reason = $3, channel = $4, updated_at = now()",
        name, mode, reason[:500], channel,
    )


async def streamed_objects(conn: asyncpg.Connection) -> dict[str, str | None]:
    """Every object stored as kept current by change events, with its channel (None: a subscription of its own)."""
    return {r[0]: r[1] for r in await conn.fetch("SELECT object, channel FROM objects WHERE mode = 'cdc'")}


async def own_position(conn: asyncpg.Connection, name: str) -> Position | None:
    """The newest time position (Salesforce's clock where it can be) before which every change of the object is in
    its table: the latest of its newest change applied from events (its rows' stream versions: commit times), its
    stored poll position, and the creation of its last extract's job (every row the extract lacked was changed
    after it). Never another object's events (a channel's checkpoint), a keepalive's save time or this host's clock
    (docs/design.md, contract 5). None when the object has neither table nor extract."""
    row = await conn.fetchrow(
        "SELECT o.table_schema, o.table_name, coalesce(o.job_created_in_org, o.job_created_at) AS job_created,"
        " p.poll_systemmodstamp FROM objects o"
        " LEFT JOIN checkpoints p ON p.topic = 'poll:' || o.object WHERE o.object = $1", name)
    if row is None:
        return None
    # the job's createdDate in Salesforce's clock; the database's when a job older than that column was recorded
    candidates = [row["job_created"], row["poll_systemmodstamp"]]
    if row["table_name"]:
        table = f"{ddl.quote_ident(row['table_schema'])}.{ddl.quote_ident(row['table_name'])}"
        if await conn.fetchval("SELECT to_regclass($1)", table) is not None:
            # A scan at a handoff only (rare); events' rows carry their commit time as the stream version.
            candidates.append(await conn.fetchval(
                f"SELECT max({ddl.quote_ident(ddl.STREAM_VERSION_COLUMN)}) FROM {table}"))
    known = [c for c in candidates if c is not None]
    return Position(_epoch_ms(max(known))) if known else None


async def poll_from_stream(conn: asyncpg.Connection, name: str, position: Checkpoint) -> int:
    """events → poll (app/handoffs.py), in one transaction: store the poll position, and forget the stream positions
    of the rows the first rounds read again (version at or after the position). A polled record is read after
    every change the stream applied, but stamped in whole seconds: without this, a change made in the same second
    as the last streamed one, and never streamed, would lose the version guard's tie to the streamed row
    (`ddl.newer_than_row`). Returns the rows whose position was forgotten."""
    since = ms_to_datetime(position.poll_modstamp or 0)
    async with conn.transaction():
        await save_checkpoint(conn, position)
        row = await conn.fetchrow("SELECT table_schema, table_name FROM objects WHERE object = $1", name)
        if row is None or not row["table_name"]:
            return 0
        table = f"{ddl.quote_ident(row['table_schema'])}.{ddl.quote_ident(row['table_name'])}"
        p, v = ddl.quote_ident(ddl.STREAM_POSITION_COLUMN), ddl.quote_ident(VERSION_COLUMN)
        status = await conn.execute(f"UPDATE {table} SET {p} = NULL WHERE {p} IS NOT NULL AND {v} >= $1", since)
    return int(status.split()[-1])


async def load_checkpoint(conn: asyncpg.Connection, topic: str) -> bytes | None:
    return await conn.fetchval("SELECT replay_id FROM checkpoints WHERE topic = $1", topic)


async def stream_position(conn: asyncpg.Connection, topic: str) -> StreamPosition | None:
    """A stream's stored position: its replay id and the commit time of its newest applied event."""
    row = await conn.fetchrow("SELECT replay_id, commit_timestamp FROM checkpoints WHERE topic = $1", topic)
    return StreamPosition(row["replay_id"], _epoch_ms(row["commit_timestamp"])) if row is not None else None


async def drop_checkpoint(conn: asyncpg.Connection, topic: str) -> None:
    await conn.execute("DELETE FROM checkpoints WHERE topic = $1", topic)


async def checkpoint_times(conn: asyncpg.Connection, topic: str) -> tuple[float | None, float, float] | None:
    """(commit time of the newest applied event, age basis of the stored position, when it was saved), in
    epoch seconds, or None without a checkpoint. A position saved from a keepalive is as old as its saving."""
    row = await conn.fetchrow(
        "SELECT extract(epoch FROM commit_timestamp) AS c, extract(epoch FROM updated_at) AS u"
        " FROM checkpoints WHERE topic = $1", topic)
    if row is None:
        return None
    commit = float(row["c"]) if row["c"] is not None else None
    saved = float(row["u"])
    return commit, (commit if commit is not None else saved), saved
