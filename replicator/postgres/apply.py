"""Applying a batch of folded changes, its dead letters and its checkpoint in ONE transaction.

Statements work on whole batches through `unnest` of typed arrays (one per kind of operation: deletes, full
records, partial updates), never one round trip per row; the statements of a batch, of one table or of the many
tables of a channel batch, travel as ONE statement of WITH queries (`merged_writes`). Every statement carries the
version guard: a change older than the row (`_sf_version`) is skipped (docs/design.md, contract 2). Rows are
found by their Salesforce Id (`id` column), whatever the table's key, because change events carry Ids.

A partial update needs its row. The applier does not look rows up before it writes (`must_find`): when an update
writes no row (missing, or newer), the transaction rolls back with `UpdatesMissed`, and the applier looks the
rows up, fetches the missing records by Id and applies again. That costs a lookup only when it is needed.

Safe to call again with the same batch: a change is applied only when it is newer than the row (commit time,
then replay id: `ddl.newer_than_row`), so the same change again is skipped and leaves the same row.

A table keyed by an external id settles the batch's keys first, all together, by Id (`ddl.place_keys`): a key
that moved, swapped or chained with another is moved with no placeholder value; a write never replaces the row of
another Id. When two records claim one key (in Salesforce it is unique, so one of them is stale: the copy missed
the change that took it away), the newer claim wins, and the loser's row is removed with a dead letter naming
both Ids (`dead-letters retry` fetches it again by Id; the applier's check step fetches both records before the
batch gets here, so this is the last line). A key nulled in Salesforce cannot key a row: the record's row is
removed and a dead letter keeps its Id and last values. Nothing disappears without a dead letter.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field

import asyncpg
import orjson
import structlog

from ..model import SYNCED_COLUMN, Checkpoint, DeadLetter, RowOp, TableInfo
from . import ddl, history, leases, state
from .errors import mapped
from .state import ms_to_datetime as _ts

log = structlog.get_logger(__name__)


@dataclass(slots=True)
class ApplyResult:
    upserts: int = 0
    updates: int = 0
    deletes: int = 0
    skipped: int = 0  # older than the row (version guard) or, for updates/deletes, no such row
    dead_letters: int = 0  # written by the key step: keys nulled, or claimed by a newer record
    key_losers: dict[str, str] = field(default_factory=dict)  # record Id → "unkeyed", "refused" or "displaced"

    def add(self, piece: Piece, rows: int, must_find: bool = False) -> None:
        """Count a statement's rows: what it wrote, the rest of its operations skipped. With `must_find` (rows not
        looked up first), a partial update that wrote fewer rows than it carries raises UpdatesMissed."""
        if must_find and piece.must_find and rows < piece.ops:
            raise UpdatesMissed(f"{piece.object}: {piece.ops - rows} of {piece.ops} updates found no row to write")
        setattr(self, piece.counts, getattr(self, piece.counts) + rows)
        self.skipped += piece.ops - rows

    def merge(self, other: ApplyResult) -> None:
        """Add another result's counts (several statements or objects of one batch)."""
        for counter in ("upserts", "updates", "deletes", "skipped", "dead_letters"):
            setattr(self, counter, getattr(self, counter) + getattr(other, counter))


# A statement's positional parameters are counted in 16 bits by the wire protocol (asyncpg refuses more than
# 32,767): a merged statement stops short of that and the rest go into the next one.
MAX_PARAMS = 30_000


class Params:
    """The positional parameters of one statement: `p(value)` keeps the value and returns its placeholder."""

    __slots__ = ("args",)

    def __init__(self) -> None:
        self.args: list = []

    def __call__(self, value: object) -> str:
        self.args.append(value)
        return f"${len(self.args)}"


@dataclass(slots=True)
class Piece:
    """One data-modifying statement of a batch (no RETURNING), its values in `params`."""

    sql: str
    params: Params
    counts: str  # the ApplyResult field its rows add to: "upserts", "updates" or "deletes"
    ops: int  # operations it carries (those it does not write are skipped: older than the row, or no row)
    object: str  # the sObject of its table (for UpdatesMissed)
    must_find: bool = False  # partial updates: each names a row that must exist (`UpdatesMissed`)


class UpdatesMissed(Exception):
    """A batch applied without looking its rows up first (`must_find`) had a partial update that wrote no row:
    the row is missing, or newer. Nothing was committed; the caller looks the rows up, fetches the missing
    records by Id, and applies again."""


class StreamSink:
    def __init__(self, pool: asyncpg.Pool, table: TableInfo):
        self.pool = pool
        self.t = table
        spec = table.spec
        self.q = ddl.qualified(spec)
        self.types = {c.name: c.pg_type for c in spec.columns}
        self.has_modstamp = "systemmodstamp" in self.types
        self.soft = "isdeleted" in self.types and not table.hard_deletes  # deletes mark rows, not remove them

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

    async def apply(self, ops: list[RowOp], dead: list[DeadLetter], checkpoint: Checkpoint | None, events: int = 0,
                    must_find: bool = False) -> ApplyResult:
        """Apply folded row operations, dead letters and the checkpoint in one transaction. `events`: how many
        delivered events (not keepalives) the batch covers, added to the topic's count. `must_find`: the caller
        did not look the rows of partial updates up (`apply_objects`).

        Raises RejectedDataError when Postgres refuses a value (nothing committed; the caller isolates the
        bad rows), DatabaseUnavailableError when the database cannot serve now, UpdatesMissed (nothing
        committed) when `must_find` and an update wrote no row."""
        return (await apply_objects(self.pool, [(self, ops)], dead, checkpoint, events, must_find))[0]

    def _final(self, ops: list[RowOp]) -> list[RowOp]:
        if self.t.hard_deletes:  # a record that ends deleted is removed, whatever came before
            return [RowOp(o.key, "delete", version=o.version, commit_ms=o.commit_ms, position=o.position)
                    if o.deleted else o for o in ops]
        return ops

    def _deletes(self, ops: list[RowOp]) -> list[RowOp]:
        return [o for o in ops if o.kind == "delete" and not (self.soft and o.values)]

    def _writes(self, ops: list[RowOp], p: Params | None = None) -> list[Piece]:
        """The statements after the deletes (and the key step): full records (fetched ones, then those from events,
        which keep the columns events never carry), partial updates, and soft deletes that also change fields (one
        write at the delete's version). Each with its own parameters, or all with `p`."""
        out = []
        full = [o for o in ops if o.kind in ("upsert", "undelete")]
        for group in ([o for o in full if o.fetched], [o for o in full if not o.fetched]):
            if group:
                q = p or Params()
                sql = self._upsert_sql(group, frozenset() if group[0].fetched else self.t.eventless, q)
                out.append(Piece(sql, q, "upserts", len(group), self.t.spec.object))
        updates = [o for o in ops if o.kind == "update"]
        if updates:
            q = p or Params()
            out.append(Piece(self._update_sql(updates, q), q, "updates", len(updates), self.t.spec.object,
                             must_find=True))
        changed = [RowOp(o.key, "update", {**o.values, "isdeleted": True}, o.version, o.commit_ms, deleted=True,
                         position=o.position) for o in ops if self.soft and o.kind == "delete" and o.values]
        if changed:
            q = p or Params()
            out.append(Piece(self._update_sql(changed, q), q, "deletes", len(changed), self.t.spec.object))
        return out

    def pieces(self, ops: list[RowOp], p: Params) -> list[Piece] | None:
        """Every statement of `apply_in`, all with `p`, to run as one statement with other tables' (`merged_writes`):
        each operation names another row, so none depends on another. None when the batch needs the key step
        (a table keyed by an external id, where a key claimed in the batch orders the statements)."""
        ops = self._final(ops)
        if self._claims(ops):
            return None
        deletes = self._deletes(ops)
        out = [Piece(self._delete_sql(deletes, p), p, "deletes", len(deletes), self.t.spec.object)] if deletes else []
        return out + self._writes(ops, p)

    async def apply_in(self, conn: asyncpg.Connection, ops: list[RowOp], must_find: bool = False) -> ApplyResult:
        """The rows of `apply`, inside the caller's open transaction, one statement after another (the key step
        needs that order: a hard-deleted record's key is free for the rest of the batch)."""
        result = ApplyResult()
        ops = self._final(ops)
        claims = self._claims(ops)
        if claims:
            await conn.execute(ddl.lock_for_keys(self.t.spec))
        deletes = self._deletes(ops)
        if deletes:  # first: a hard-deleted record's key is free for the rest of the batch
            q = Params()
            piece = Piece(self._delete_sql(deletes, q), q, "deletes", len(deletes), self.t.spec.object)
            result.add(piece, await _run(conn, piece))
        if claims:
            losers = await self._place_keys(conn, claims)
            if losers:
                ops = [o for o in ops if o.key not in losers]
                for outcome in losers.values():
                    if outcome == "older":
                        result.skipped += 1
                    else:
                        result.dead_letters += 1
                result.key_losers = {k: v for k, v in losers.items() if v != "older"}
        for piece in self._writes(ops):
            result.add(piece, await _run(conn, piece), must_find)
        return result

    def _claims(self, ops: list[RowOp]) -> list[RowOp]:
        """The operations that name a record's key (full records, and updates that change or null it), when the
        table is keyed by an external id."""
        spec = self.t.spec
        if not ddl.keyed_by_external_id(spec):
            return []
        return [o for o in ops if o.kind in ("upsert", "undelete")
                or (spec.key in o.values and (o.kind == "update" or (o.kind == "delete" and self.soft)))]

    def _keys(self, claims: list[RowOp]) -> list:
        """Each claim's key; an empty one is none (Salesforce has no empty text: it is a record without a key)."""
        return [None if (k := o.values.get(self.t.spec.key)) == "" else k for o in claims]

    async def _place_keys(self, conn: asyncpg.Connection, claims: list[RowOp]) -> dict[str, str]:
        """The key step (`ddl.place_keys`) for the batch's claims, under the table lock. Returns {Id: outcome} of
        the claims whose write must not go on (older than the row, unkeyed, refused) and of rows displaced."""
        spec = self.t.spec
        if not await conn.fetchval(ddl.key_trouble(spec), [o.key for o in claims], self._keys(claims)):
            return {}
        await self._fill_claims(conn, claims)
        for statement in ddl.place_keys(spec, _stream_newer, "stream"):
            await conn.execute(statement)
        if self.t.history is not None:  # the rows it removed end their records' current versions
            await conn.execute(history.close_removed(self.t))
        rows = await conn.fetch(f"SELECT id, outcome FROM {ddl.quote_ident(ddl.KEY_OUTCOME)} "
                                f"WHERE outcome <> ALL($1::text[])", list(ddl.KEPT))
        losers = {r["id"]: r["outcome"] for r in rows if r["outcome"] != "older"}
        losers.update({r["id"]: "older" for r in rows if r["outcome"] == "older" and r["id"] not in losers})
        if any(v != "older" for v in losers.values()):
            log.warning("stream.key_conflicts", object=spec.object,
                        records={k: v for k, v in losers.items() if v != "older"},
                        action="rows removed with a dead letter each; dead-letters retry fetches them by Id")
        return losers

    async def _fill_claims(self, conn: asyncpg.Connection, claims: list[RowOp]) -> None:
        spec = self.t.spec
        versions, positions = _versions(claims)
        await conn.execute(ddl.key_claims_table(spec))
        await conn.execute(ddl.fill_key_claims(spec), [o.key for o in claims], self._keys(claims), versions, positions,
                           [orjson.dumps(o.values, default=str).decode() for o in claims])

    @mapped
    async def key_conflicts(self, ops: list[RowOp]) -> dict[str, str]:
        """What the key step would decide for these operations now, without writing: {Id: outcome} of the records
        that would lose a key ("refused": the claim; "displaced": a row holding the key). The applier fetches
        them again by Id before it commits, so a collision resolves to the org's current state."""
        claims = self._claims(ops)
        if not claims:
            return {}
        spec = self.t.spec
        async with self.pool.acquire() as conn:
            if not await conn.fetchval(ddl.key_trouble(spec), [o.key for o in claims], self._keys(claims)):
                return {}
            tr = conn.transaction()
            await tr.start()
            try:
                await self._fill_claims(conn, claims)
                await conn.execute(ddl.key_outcomes(spec, _stream_newer))
                rows = await conn.fetch(f"SELECT id, outcome FROM {ddl.quote_ident(ddl.KEY_OUTCOME)} "
                                        "WHERE outcome IN ('refused', 'displaced')")
            finally:
                await tr.rollback()
        return {r["id"]: r["outcome"] for r in rows}

    def _system(self, op: RowOp) -> dict:
        """SystemModstamp, which change events never carry ("Change Event Body Fields", Change Data Capture Developer
        Guide, https://developer.salesforce.com/docs/atlas.en-us.change_data_capture.meta/change_data_capture/cdc_event_fields_body.htm):
        the change's LastModifiedDate when it carries one (a CREATE's body, an UPDATE's changedFields always name it:
        the org stamps both fields in the same save), else (a delete, a change that leaves LastModifiedDate alone)
        its commit time, the nearest the event tells. Never the commit time when the change has LastModifiedDate:
        a transaction that commits seconds after its save (a long one) has a commitTimestamp later than the record's
        SystemModstamp. The row's version stays the commit time (docs/design.md contract 2). A record fetched whole
        (a gap healed, an undelete) has its own SystemModstamp."""
        if not self.has_modstamp:
            return {}
        if isinstance(op.values.get("systemmodstamp"), dt.datetime):
            return {"systemmodstamp": op.values["systemmodstamp"]}
        stamp = None if op.deleted else op.values.get("lastmodifieddate")
        return {"systemmodstamp": stamp if isinstance(stamp, dt.datetime) else _ts(op.commit_ms)}

    def _upsert_sql(self, ops: list[RowOp], keep: frozenset[str], p: Params) -> str:
        """Full records in one statement. `keep`: columns an existing row keeps (a new row gets NULL there)."""
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
        params = ", ".join(f"{p(arrays[i])}::{self.types[c]}[]" for i, c in enumerate(cols))
        col_sql = ", ".join(ddl.quote_ident(c) for c in cols)
        sets = ", ".join(f"{ddl.quote_ident(c)} = EXCLUDED.{ddl.quote_ident(c)}" for c in cols
                         if c != spec.key and c not in keep)
        stream_v, stream_p = ddl.quote_ident(ddl.STREAM_VERSION_COLUMN), ddl.quote_ident(ddl.STREAM_POSITION_COLUMN)
        return (
            f"INSERT INTO {self.q} AS cur ({col_sql}, {stream_v}, {stream_p}) "
            f"SELECT * FROM unnest({params}, {p(versions)}::timestamptz[], {p(positions)}::bytea[]) "
            f"ON CONFLICT ({ddl.quote_ident(spec.key)}) DO UPDATE SET {sets}, {stream_v} = EXCLUDED.{stream_v}, "
            f"{stream_p} = EXCLUDED.{stream_p}, {ddl.quote_ident(SYNCED_COLUMN)} = now() "
            f"WHERE {ddl.newer_than_row('cur', f'EXCLUDED.{stream_v}', f'EXCLUDED.{stream_p}')}"
        )

    def _update_sql(self, ops: list[RowOp], p: Params) -> str:
        """Partial updates of any mix of columns in ONE statement. Each row's changed values travel as one
        jsonb object; a column takes the value only when its key is present
        (`SET c = CASE WHEN u.j ? 'c' THEN (u.j->>'c')::type ELSE cur.c END`), so unset columns keep theirs.
        One small object per row is far cheaper to send than a value and a mask per column per row."""
        system = list(self._system(ops[0]))
        cols = sorted(set().union(*(o.values.keys() for o in ops)).difference(system))
        dumps = orjson.dumps
        versions, positions = _versions(ops)
        sets = []
        for c in cols:
            key = ddl.quote_literal(c)
            sets.append(f"{ddl.quote_ident(c)} = CASE WHEN u._j ? {key} THEN (u._j->>{key})::{self.types[c]} "
                        f"ELSE cur.{ddl.quote_ident(c)} END")
        unnest = [f"{p([op.key for op in ops])}::text[]", f"{p(versions)}::timestamptz[]",
                  f"{p(positions)}::bytea[]", f"{p([dumps(op.values, default=str).decode() for op in ops])}::jsonb[]"]
        names = ["_id", "_v", "_p", "_j"]
        for i, c in enumerate(system):  # SystemModstamp: the change's (`_system`)
            unnest.append(f"{p([self._system(op)[c] for op in ops])}::{self.types[c]}[]")
            names.append(f"s{i}")
            sets.append(f"{ddl.quote_ident(c)} = u.s{i}")
        sets += _stamp_sets()
        return (
            f"UPDATE {self.q} AS cur SET {', '.join(sets)} "
            f"FROM unnest({', '.join(unnest)}) AS u({', '.join(names)}) "
            f"WHERE cur.\"id\" = u._id AND {ddl.newer_than_row('cur', 'u._v', 'u._p')}"
        )

    def _delete_sql(self, ops: list[RowOp], p: Params) -> str:
        versions, positions = _versions(ops)
        src = (f"unnest({p([o.key for o in ops])}::text[], {p(versions)}::timestamptz[], {p(positions)}::bytea[]) "
               "AS u(_id, _v, _p)")
        guard = f'cur."id" = u._id AND {ddl.newer_than_row("cur", "u._v", "u._p")}'
        if self.t.hard_deletes or "isdeleted" not in self.types:
            return f"DELETE FROM {self.q} AS cur USING {src} WHERE {guard}"
        sets = ['"isdeleted" = true', *_stamp_sets()]
        if self.has_modstamp:
            sets.append('"systemmodstamp" = u._v')
        return f"UPDATE {self.q} AS cur SET {', '.join(sets)} FROM {src} WHERE {guard}"


async def _run(conn: asyncpg.Connection, piece: Piece) -> int:
    """Run one statement; the rows it wrote."""
    status = await conn.execute(piece.sql, *piece.params.args)
    return int(status.rsplit(" ", 1)[-1])


def merged_writes(parts: list[tuple[StreamSink, list[RowOp]]]) -> tuple[list[int], list[tuple[list[int], list[Piece], Params]]]:
    """The writes of several tables' batches as few statements as the parameter limit allows (a channel batch
    touches hundreds of tables: one statement each would be hundreds of round trips and parses). Returns the
    parts that need the key step, by index (they run `apply_in`), and the merged statements as (index of the
    part of each piece, pieces, parameters)."""
    alone, statements = [], []
    pieces: list[Piece] = []
    owners: list[int] = []
    p = Params()
    for i, (sink, ops) in enumerate(parts):
        if not ops:
            continue
        mark = len(p.args)
        found = sink.pieces(ops, p)
        if found is None:
            del p.args[mark:]
            alone.append(i)
            continue
        if len(p.args) > MAX_PARAMS and pieces:  # over the limit: this part starts the next statement
            del p.args[mark:]
            statements.append((owners, pieces, p))
            pieces, owners, p = [], [], Params()
            found = sink.pieces(ops, p)
        pieces += found
        owners += [i] * len(found)
    if pieces:
        statements.append((owners, pieces, p))
    return alone, statements


async def _run_merged(conn: asyncpg.Connection, pieces: list[Piece], p: Params) -> list[int]:
    """Data-modifying statements of different tables as ONE statement: each a WITH query (PostgreSQL
    documentation, "WITH Queries", §7.8.4 "Data-Modifying Statements in WITH": all run, on one snapshot; no two
    touch the same row here). Returns the rows each wrote."""
    if len(pieces) == 1:
        return [await _run(conn, pieces[0])]
    ctes = ",\n".join(f"w{i} AS ({piece.sql} RETURNING 1)" for i, piece in enumerate(pieces))
    counts = ", ".join(f"(SELECT count(*) FROM w{i})" for i in range(len(pieces)))
    return list(await conn.fetchval(f"WITH {ctes}\nSELECT ARRAY[{counts}]::bigint[]", *p.args))


@mapped
async def apply_objects(pool: asyncpg.Pool, parts: list[tuple[StreamSink, list[RowOp]]], dead: list[DeadLetter],
                        checkpoint: Checkpoint | None, events: int, must_find: bool = False,
                        members: list[tuple[str, int, int | None]] | None = None) -> list[ApplyResult]:
    """Several objects' folded row operations (or one object's), the dead letters and the checkpoint in ONE
    transaction (docs/design.md, contract 4); the writes as few statements as `merged_writes` makes. `members`: a
    channel batch's figures per member (`state.add_member_events`), committed with the checkpoint. Safe to call
    again with the same batch: each write carries the version guard. Raises RejectedDataError when Postgres
    refuses a value, UpdatesMissed when `must_find` and a partial update wrote no row, LeaseLost when another
    process holds the unit now (nothing committed in each case)."""
    results = [ApplyResult() for _ in parts]
    alone, statements = merged_writes(parts)
    kept = [(sink.t, ops) for sink, ops in parts if sink.t.history is not None and ops]
    async with pool.acquire() as conn, leases.transaction(conn):  # ends with the fence check (postgres/leases.py)
        if kept:  # the batch writes its history versions itself, after its rows (postgres/history.py)
            await history.mark(conn, "stream")
        for i in alone:
            results[i] = await parts[i][0].apply_in(conn, parts[i][1], must_find)
        for owners, pieces, p in statements:
            for i, piece, rows in zip(owners, pieces, await _run_merged(conn, pieces, p), strict=True):
                results[i].add(piece, rows, must_find)
        for table, ops in kept:
            if versions := history.stream_versions(table, ops):
                await conn.execute(versions[0], *versions[1])
        await state.add_dead_letters(conn, dead)
        if checkpoint is not None:
            await state.save_checkpoint(conn, checkpoint, events)
        if members:
            await state.add_member_events(conn, members)
    return results


def _stream_newer(row: str, claim: str) -> str:
    return ddl.newer_than_row(row, f"{claim}.v", f"{claim}.p")


def _versions(ops: list[RowOp]) -> tuple[list, list]:
    """Each operation's version: its commit time, and its replay id (None when it has none)."""
    return [_ts(o.commit_ms) for o in ops], [o.position or None for o in ops]


def _stamp_sets() -> list[str]:
    """What every stream write sets besides the values: its version, its position and the sync time."""
    return [f"{ddl.quote_ident(ddl.STREAM_VERSION_COLUMN)} = u._v", f"{ddl.quote_ident(ddl.STREAM_POSITION_COLUMN)} = u._p",
            f"{ddl.quote_ident(SYNCED_COLUMN)} = now()"]
