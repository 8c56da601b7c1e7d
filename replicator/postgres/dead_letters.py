"""`dead_letters` for the operator commands: list, mark retried, resolve, drop."""

from __future__ import annotations

import asyncpg

from .state import without_nul

# A dead letter that fails again waits 1, 2, 4 … minutes before it is due again, at most a day.
_BACKOFF = "least(interval '1 minute' * power(2, least(attempts, 11)), interval '1 day')"


def _filter(object_: str | None, ids: list[int] | None, due_only: bool, open_only: bool = True) -> tuple[str, list]:
    where, args = [], []
    if open_only:
        where.append("resolved_at IS NULL")
    if object_:
        args.append(object_)
        where.append(f"object = ${len(args)}")
    if ids:
        args.append(ids)
        where.append(f"id = ANY(${len(args)}::bigint[])")
    if due_only:
        where.append("(next_retry_at IS NULL OR next_retry_at <= now())")
    return (" WHERE " + " AND ".join(where)) if where else "", args


async def list_open(conn: asyncpg.Connection, object_: str | None = None, ids: list[int] | None = None,
                    due_only: bool = False, limit: int | None = None) -> list[dict]:
    where, args = _filter(object_, ids, due_only)
    sql = ("SELECT id, object, record_key, source, reason, payload, first_seen, last_seen, attempts, next_retry_at"
           f" FROM dead_letters{where} ORDER BY id")
    if limit is not None:
        sql += f" LIMIT {int(limit)}"
    return [dict(r) for r in await conn.fetch(sql, *args)]


async def resolve(conn: asyncpg.Connection, ids: list[int], resolution: str) -> None:
    await conn.execute(
        "UPDATE dead_letters SET resolved_at = now(), resolution = $2, last_seen = now()"
        " WHERE id = ANY($1::bigint[])", ids, resolution)


async def failed_again(conn: asyncpg.Connection, ids: list[int], reason: str) -> None:
    """A retry failed: count the attempt and schedule the next one (exponential, at most daily)."""
    await conn.execute(
        f"UPDATE dead_letters SET attempts = attempts + 1, last_seen = now(), reason = $2,"
        f" next_retry_at = now() + {_BACKOFF} WHERE id = ANY($1::bigint[])", ids, without_nul(reason)[:2000])


async def drop(conn: asyncpg.Connection, object_: str | None, ids: list[int] | None) -> int:
    """Mark dead letters resolved as dropped (kept as history; they no longer count as open)."""
    where, args = _filter(object_, ids, due_only=False)
    status = await conn.execute(
        f"UPDATE dead_letters SET resolved_at = now(), resolution = 'dropped by an operator'{where}",
        *args)
    return int(status.rsplit(" ", 1)[-1])
