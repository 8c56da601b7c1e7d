"""Applying a batch of folded changes, its dead letters and its checkpoint in ONE transaction.

Statements work on whole batches through `unnest` of typed arrays (one statement per kind of operation,
one per set of columns for partial updates), never one round trip per row. Every statement carries the
version guard: a change older than the row (`_sf_version`) is skipped (docs/design.md, contract 2). Rows are
found by their Salesforce Id (`id` column), whatever the table's key, because change events carry Ids.

Safe to call again with the same batch: a change is applied only when it is newer than the row (commit time,
then replay id: `ddl.newer_than_row`), so the same change again is skipped and leaves the same row.
"""

from __future__ import annotations

from dataclasses import dataclass

import asyncpg
import orjson
import structlog

from ..model import SYNCED_COLUMN, Checkpoint, DeadLetter, RowOp, TableInfo
from . import ddl, state
from .errors import mapped
from .state import ms_to_datetime as _ts

log = structlog.get_logger(__name__)

@dataclass(slots=True)
class ApplyResult:
    upserts: int = 0
    updates: int = 0
    deletes: int = 0
    skipped: int = 0  # older than the row (version guard) or, for updates/deletes, no such row


class StreamSink:
    def __init__(self, pool: asyncpg.Pool, table: TableInfo):
        self.pool = pool
        self.t = table
        spec = table.spec
        self.q = ddl.qualified(spec)
        self.types = {c.name: c.pg_type for c in spec.columns}
        self.has_modstamp = "systemmodstamp" in self.types

    @mapped
    async def existing_ids(self, ids: list[str]) -> set[str]:
        async with self.pool.acquire() as conn:
            rows = await conn.fetch(f'SELECT "id" FROM {self.q} WHERE "id" = ANY($1::text[])', ids)
        return {r[0] for r in rows}

    @mapped
    async def current_values(self, ids: list[str], columns: list[str]) -> dict[str, dict]:
        """{id: {column: value}} of the rows with these ids that exist (to apply diffs to)."""
        cols = ", ".join(ddl.quote_ident(c) for c in columns)
        async with self.pool.acquire() as conn:
            rows = await conn.fetch(f'SELECT "id", {cols} FROM {self.q} WHERE "id" = ANY($1::text[])', ids)
        return {r["id"]: {c: r[c] for c in columns} for r in rows}

    @mapped
    async def apply(
        self, ops: list[RowOp], dead: list[DeadLetter], checkpoint: Checkpoint | None, events: int = 0
    ) -> ApplyResult:
        """Apply folded row operations, dead letters and the checkpoint in one transaction. `events`: how many
        delivered events (not keepalives) the batch covers, added to the topic's count.

        Raises RejectedDataError when Postgres refuses a value (nothing committed; the caller isolates the
        bad rows), DatabaseUnavailableError when the database cannot serve now."""
        result = ApplyResult()
        async with self.pool.acquire() as conn, conn.transaction():
            if self.t.hard_deletes:  # a record that ends deleted is removed, whatever came before
                ops = [RowOp(o.key, "delete", version=o.version, commit_ms=o.commit_ms, position=o.position)
                       if o.deleted else o for o in ops]
            full = [o for o in ops if o.kind in ("upsert", "undelete")]
            if full:
                n = await self._upsert(conn, full)
                result.upserts += n
                result.skipped += len(full) - n
            updates = [o for o in ops if o.kind == "update"]
            if updates:
                n = await self._update(conn, updates)
                result.updates += n
                result.skipped += len(updates) - n
            deletes = [o for o in ops if o.kind == "delete"]
            if "isdeleted" in self.types and not self.t.hard_deletes:
                # Fields changed earlier in the batch, then the soft delete: one write at the delete's version.
                changed = [RowOp(o.key, "update", {**o.values, "isdeleted": True}, o.version, o.commit_ms,
                                 position=o.position) for o in deletes if o.values]
                if changed:
                    n = await self._update(conn, changed)
                    result.deletes += n
                    result.skipped += len(changed) - n
                deletes = [o for o in deletes if not o.values]
            if deletes:
                n = await self._delete(conn, deletes)
                result.deletes += n
                result.skipped += len(deletes) - n
            await state.add_dead_letters(conn, dead)
            if checkpoint is not None:
                await state.save_checkpoint(conn, checkpoint, events)
        return result

    def _system(self, op: RowOp) -> dict:
        """Columns every change sets: the version, and SystemModstamp (the org sets it to the change's time)."""
        return {"systemmodstamp": _ts(op.commit_ms)} if self.has_modstamp else {}

    async def _upsert(self, conn: asyncpg.Connection, ops: list[RowOp]) -> int:
        spec = self.t.spec
        cols = [c.name for c in spec.columns]
        arrays: list[list] = [[] for _ in cols]
        versions, positions = _versions(ops)
        for op in ops:
            row = {**op.values, "id": op.key, **self._system(op)}
            if "isdeleted" in self.types:
                row["isdeleted"] = op.deleted
            for i, c in enumerate(cols):
                arrays[i].append(row.get(c))
        if spec.key != "id":  # an external id can change: re-key rows by their Id first (see ddl.upsert_…)
            key_at = cols.index(spec.key)
            await conn.execute(
                f"UPDATE {self.q} AS cur SET {ddl.quote_ident(spec.key)} = u.k "
                f"FROM unnest($1::text[], $2::{self.types[spec.key]}[], $3::timestamptz[], $4::bytea[]) "
                f"AS u(_id, k, _v, _p) "
                f'WHERE cur."id" = u._id AND cur.{ddl.quote_ident(spec.key)} IS DISTINCT FROM u.k '
                f"AND u.k IS NOT NULL AND {ddl.newer_than_row('cur', 'u._v', 'u._p')}",
                [o.key for o in ops], arrays[key_at], versions, positions,
            )
        params = ", ".join(f"${i + 1}::{self.types[c]}[]" for i, c in enumerate(cols))
        col_sql = ", ".join(ddl.quote_ident(c) for c in cols)
        sets = ", ".join(f"{ddl.quote_ident(c)} = EXCLUDED.{ddl.quote_ident(c)}" for c in cols if c != spec.key)
        stream_v, stream_p = ddl.quote_ident(ddl.STREAM_VERSION_COLUMN), ddl.quote_ident(ddl.STREAM_POSITION_COLUMN)
        n = len(cols)
        sql = (
            f"INSERT INTO {self.q} AS cur ({col_sql}, {stream_v}, {stream_p}) "
            f"SELECT * FROM unnest({params}, ${n + 1}::timestamptz[], ${n + 2}::bytea[]) "
            f"ON CONFLICT ({ddl.quote_ident(spec.key)}) DO UPDATE SET {sets}, {stream_v} = EXCLUDED.{stream_v}, "
            f"{stream_p} = EXCLUDED.{stream_p}, {ddl.quote_ident(SYNCED_COLUMN)} = now() "
            f"WHERE {ddl.newer_than_row('cur', f'EXCLUDED.{stream_v}', f'EXCLUDED.{stream_p}')}"
        )
        status = await conn.execute(sql, *arrays, versions, positions)
        return int(status.rsplit(" ", 1)[-1])

    async def _update(self, conn: asyncpg.Connection, ops: list[RowOp]) -> int:
        """Partial updates of any mix of columns in ONE statement. Each row's changed values travel as one
        jsonb object; a column takes the value only when its key is present
        (`SET c = CASE WHEN u.j ? 'c' THEN (u.j->>'c')::type ELSE cur.c END`), so unset columns keep theirs.
        One small object per row is far cheaper to send than a value and a mask per column per row."""
        system = list(self._system(ops[0]))
        cols = sorted({c for o in ops for c in o.values if c not in system})
        ids, docs = [], []
        versions, positions = _versions(ops)
        sys_values: list[list] = [[] for _ in system]
        for op in ops:
            ids.append(op.key)
            docs.append(orjson.dumps(op.values, default=str).decode())
            row = self._system(op)
            for i, c in enumerate(system):
                sys_values[i].append(row[c])
        sets = []
        for c in cols:
            key = ddl.quote_literal(c)
            sets.append(f"{ddl.quote_ident(c)} = CASE WHEN u._j ? {key} THEN (u._j->>{key})::{self.types[c]} "
                        f"ELSE cur.{ddl.quote_ident(c)} END")
        args: list = [ids, versions, positions, docs]
        unnest = ["$1::text[]", "$2::timestamptz[]", "$3::bytea[]", "$4::jsonb[]"]
        names = ["_id", "_v", "_p", "_j"]
        for i, c in enumerate(system):
            args.append(sys_values[i])
            unnest.append(f"${len(args)}::{self.types[c]}[]")
            names.append(f"s{i}")
            sets.append(f"{ddl.quote_ident(c)} = u.s{i}")
        sets += _stamp_sets()
        sql = (
            f"UPDATE {self.q} AS cur SET {', '.join(sets)} "
            f"FROM unnest({', '.join(unnest)}) AS u({', '.join(names)}) "
            f"WHERE cur.\"id\" = u._id AND {ddl.newer_than_row('cur', 'u._v', 'u._p')}"
        )
        status = await conn.execute(sql, *args)
        return int(status.rsplit(" ", 1)[-1])

    async def _delete(self, conn: asyncpg.Connection, ops: list[RowOp]) -> int:
        ids = [o.key for o in ops]
        versions, positions = _versions(ops)
        guard = f'cur."id" = u._id AND {ddl.newer_than_row("cur", "u._v", "u._p")}'
        src = "unnest($1::text[], $2::timestamptz[], $3::bytea[]) AS u(_id, _v, _p)"
        if self.t.hard_deletes or "isdeleted" not in self.types:
            sql = f"DELETE FROM {self.q} AS cur USING {src} WHERE {guard}"
        else:
            sets = ['"isdeleted" = true', *_stamp_sets()]
            if self.has_modstamp:
                sets.append('"systemmodstamp" = u._v')
            sql = f"UPDATE {self.q} AS cur SET {', '.join(sets)} FROM {src} WHERE {guard}"
        status = await conn.execute(sql, ids, versions, positions)
        return int(status.rsplit(" ", 1)[-1])


def _versions(ops: list[RowOp]) -> tuple[list, list]:
    """Each operation's version: its commit time, and its replay id (None when it has none)."""
    return [_ts(o.commit_ms) for o in ops], [o.position or None for o in ops]


def _stamp_sets() -> list[str]:
    """What every stream write sets besides the values: its version, its position and the sync time."""
    return [f"{ddl.quote_ident(ddl.STREAM_VERSION_COLUMN)} = u._v", f"{ddl.quote_ident(ddl.STREAM_POSITION_COLUMN)} = u._p",
            f"{ddl.quote_ident(SYNCED_COLUMN)} = now()"]
