"""History tables: every version of every record, beside the object's table (docs/history.md).

`<table>__history` has the object's columns plus the version's validity (`_valid_from`, `_valid_to`,
`_is_current`, or Fivetran's names: `model.HistoryNames`), where it came from (`_op`), the event header's
`_commit_user`, `_change_origin` and `_changed_fields`, and `_position` (the replay id: it orders versions of the
same second; empty for versions not from a change event). A version is unique per (Id, `_valid_from`,
`_position`), and each is written in the transaction of the rows it copies, so replays, duplicates and kills
never add one twice and never lose one.

Two writers, one per kind of write:
- The stream (and the poll rounds and every other write through `apply.apply_objects`) writes its versions
  itself (`stream_versions`), after its rows, in its batch's transaction: a batch folds several changes of one
  record into one row write (pipeline/changes.py), and history needs each of them. Each change kept beside the
  folded operation (`RowOp.steps`) becomes a version: its full image is the record's current version with the
  changed columns of every change of the batch up to it merged on (`jsonb_merge`, sql/013_history.sql),
  and the batch's last change of a record takes the row as the table holds it after the batch, so the current
  version is the row itself. Changes not newer than the current version (the version guard's rule,
  `ddl.newer_than_row`) add none.
- Extracts (a backfill's pages, a resync, a poll round read with Bulk, a key reconciliation, `verify --repair`,
  the refresh) write rows with COPY and set-based statements whose rows never pass through Python: statement
  triggers with transition tables (`record_function`) add a version for each row they wrote whose values the
  current version does not hold. The writer names the `_op` with `mark` (a setting local to its transaction); the
  stream marks `stream`, and the triggers leave its writes to it.
"""

from __future__ import annotations

import datetime as dt

import asyncpg
import orjson
import structlog

from ..model import FIVETRAN_HISTORY, VERSION_COLUMN, ConfigError, HistoryNames, RowOp, TableInfo, TableSpec
from . import ddl, leases
from .state import ms_to_datetime as _ts

log = structlog.get_logger(__name__)

SUFFIX = "__history"
OP_SETTING = "replicator.history_op"


def name(spec: TableSpec) -> str:
    """The history table's name: the object's table's with `__history` (Salesforce API names are at most 40
    characters, so it stays under Postgres's 63)."""
    return spec.name + SUFFIX


def qualified(spec: TableSpec) -> str:
    return f"{ddl.quote_ident(spec.schema)}.{ddl.quote_ident(name(spec))}"


def _cols(spec: TableSpec, prefix: str = "") -> str:
    return ", ".join(f"{prefix}{ddl.quote_ident(c.name)}" for c in spec.columns)


def create_table(spec: TableSpec, n: HistoryNames) -> list[str]:
    """The history table and its indexes: unique per version, which also finds a record's current version (a
    record has few versions; a partial index of current versions of its own took the backfill's load from 0.55x
    to 0.45x of its speed without history, `python -m bench.history_cost`); closed versions by their end
    (retention)."""
    q, h = ddl.quote_ident, qualified(spec)
    cols = [f"{q(c.name)} {c.pg_type}" for c in spec.columns] + [
        f"{q(n.start)} timestamptz NOT NULL", f"{q(n.end)} timestamptz", f"{q(n.active)} boolean NOT NULL",
        '"_op" text NOT NULL', '"_commit_user" text', '"_change_origin" text', '"_changed_fields" text[]',
        "\"_position\" bytea NOT NULL DEFAULT ''::bytea"]
    return [f"CREATE TABLE IF NOT EXISTS {h} (\n  " + ",\n  ".join(cols) + "\n)", *indexes(spec, n)]


def indexes(spec: TableSpec, n: HistoryNames) -> list[str]:
    """The history table's two indexes, made where missing (`prepare` at every start, and after a first load that
    went without them: `drop_indexes`)."""
    q, h, base = ddl.quote_ident, qualified(spec), name(spec)
    return [
        f'CREATE UNIQUE INDEX IF NOT EXISTS {q(base + "_version")} ON {h} ("id", {q(n.start)}, "_position")',
        f"CREATE INDEX IF NOT EXISTS {q(base + '_closed')} ON {h} ({q(n.end)}) WHERE {q(n.end)} IS NOT NULL",
    ]


def drop_indexes(spec: TableSpec) -> str:
    """A first load into a history table with no version at all goes without its indexes, built once it ends
    (`indexes`): each row's version inserted into the heap alone (no index entry a row, and no speculative
    insertion for ON CONFLICT, which has no arbiter then) costs far less than keeping the index, and the build
    sorts once (`python -m bench.history_cost --only floor`: the load's backend CPU 0.48x of without history
    → 0.70x). Nothing needs them meanwhile: the load writes each record once (the table's key), a page commits
    with its versions or not at all and is never loaded twice, and the stream starts only after the load, whose
    end (or the next start's `prepare`, after a kill) makes them again."""
    q, base = ddl.quote_ident, name(spec)
    return f"DROP INDEX IF EXISTS {q(spec.schema)}.{q(base + '_version')}, {q(spec.schema)}.{q(base + '_closed')}"


def add_columns(spec: TableSpec, existing: set[str]) -> list[str]:
    """A field added to the object adds its column to the history table too."""
    return [f"ALTER TABLE {qualified(spec)} ADD COLUMN IF NOT EXISTS {ddl.quote_ident(c.name)} {c.pg_type}"
            for c in spec.columns if c.name not in existing]


def seed(spec: TableSpec, n: HistoryNames) -> str:
    """A history table made for a table that has rows already: each row is its record's first version."""
    q = ddl.quote_ident
    return (f"INSERT INTO {qualified(spec)} ({_cols(spec)}, {q(n.start)}, {q(n.active)}, \"_op\", \"_position\") "
            f"SELECT {_cols(spec, 't.')}, coalesce(t.{q(VERSION_COLUMN)}, now()), true, 'backfill', "
            f"coalesce(t.{q(ddl.STREAM_POSITION_COLUMN)}, ''::bytea) FROM {ddl.qualified(spec)} t "
            "ON CONFLICT DO NOTHING")


def record_function(spec: TableSpec, n: HistoryNames) -> list[str]:
    """The trigger function and its three statement triggers (a transition table belongs to one event).

    `backfill` (a first load into an empty table) inserts each row as its record's first version, with no
    lookup: measured, the lookups of the general case cost the load a third of its speed
    (`python -m bench.history_cost`). INSERT and UPDATE otherwise: each written row whose values its record's
    current version does not hold becomes a version (`_op` from `mark`, `resync` when unmarked), from the row's
    version (`_sf_version`); the current one ends there. A row rewritten at its current version's own version
    replaces that version's values; so does an extract's row (no position) stamped with the current version's
    time but another position: the record's SystemModstamp did not move since that version (Salesforce changed
    fields without an event, as the refresh's; or a change of the same second the stream did not see), and a
    version of an empty position at that time would sort before the version it follows. The
    refresh (`refresh`) writes columns Salesforce changes without a new SystemModstamp: no time places a version
    for them, so they are written into the current version. DELETE (a hard delete by an extract) ends the
    current version now. Writes marked `stream` are the stream's own (`stream_versions`). `<op>:removed` (rows an
    extract lacked, marked deleted: their records left the org while nothing told) places the versions now: the
    row's own version did not move, and the version before it is how the record lived until then."""
    q, h, t = ddl.quote_ident, qualified(spec), ddl.qualified(spec)
    start, end, active = q(n.start), q(n.end), q(n.active)
    fn = f"{q(spec.schema)}.{q(name(spec) + '_record')}"
    ver = f"(CASE WHEN removed THEN now() ELSE coalesce(r.{q(VERSION_COLUMN)}, now()) END)"
    pos = f"coalesce(r.{q(ddl.STREAM_POSITION_COLUMN)}, ''::bytea)"
    same = f"ROW({_cols(spec, 'c.')}) IS NOT DISTINCT FROM ROW({_cols(spec, 'r.')})"
    sets = ", ".join(f"{q(c.name)} = r.{q(c.name)}" for c in spec.columns)
    # the row is the current version's own record: the same version and position, or a row of an extract (no
    # position) stamped with the current version's time, which a version with an empty position would sort before
    own = f'(c.{start} = {ver} AND (c."_position" = {pos} OR {pos} = \'\'::bytea))'
    body = f"""
DECLARE
  op text := coalesce(nullif(current_setting('{OP_SETTING}', true), ''), 'resync');
  removed boolean := op LIKE '%:removed';
BEGIN
  op := split_part(op, ':', 1);
  IF op = 'stream' THEN
    RETURN NULL;
  END IF;
  IF TG_OP = 'DELETE' THEN
    UPDATE {h} c SET {end} = greatest(c.{start}, now()), {active} = false
      FROM old_rows r WHERE c."id" = r."id" AND c.{active};
    RETURN NULL;
  END IF;
  IF op = 'backfill' THEN
    -- a first load into an empty table (`load_mode` copy): no record of it has a current version
    -- (`end_current` ran when its job started), and an extract holds each record once
    INSERT INTO {h} ({_cols(spec)}, {start}, {active}, "_op", "_position")
      SELECT {_cols(spec, 'r.')}, {ver}, true, op, {pos} FROM new_rows r ON CONFLICT DO NOTHING;
    RETURN NULL;
  END IF;
  IF op = 'refresh' THEN
    UPDATE {h} c SET {sets} FROM new_rows r WHERE c."id" = r."id" AND c.{active} AND NOT ({same});
    RETURN NULL;
  END IF;
  UPDATE {h} c SET {sets} FROM new_rows r
    WHERE c."id" = r."id" AND c.{active} AND {own} AND NOT ({same});
  UPDATE {h} c SET {end} = greatest(c.{start}, {ver}), {active} = false FROM new_rows r
    WHERE c."id" = r."id" AND c.{active} AND NOT {own} AND NOT ({same});
  INSERT INTO {h} ({_cols(spec)}, {start}, {active}, "_op", "_position")
    SELECT {_cols(spec, 'r.')}, {ver}, true, op, {pos} FROM new_rows r
    WHERE NOT EXISTS (SELECT 1 FROM {h} c WHERE c."id" = r."id" AND c.{active})
    ON CONFLICT DO NOTHING;
  RETURN NULL;
END"""
    out = [f"CREATE OR REPLACE FUNCTION {fn}() RETURNS trigger LANGUAGE plpgsql AS $history$ {body} $history$"]
    for event, ref in (("INSERT", "NEW TABLE AS new_rows"), ("UPDATE", "NEW TABLE AS new_rows"),
                       ("DELETE", "OLD TABLE AS old_rows")):
        trigger = q(f"{name(spec)}_{event.lower()}")
        out.append(f"CREATE OR REPLACE TRIGGER {trigger} AFTER {event} ON {t} REFERENCING {ref} "
                   f"FOR EACH STATEMENT EXECUTE FUNCTION {fn}()")
    return out


def as_of_function(spec: TableSpec, n: HistoryNames) -> str:
    """`<table>__as_of(at)`: every record's version at `at` (deleted ones included: `isdeleted` says so)."""
    q = ddl.quote_ident
    fn = f"{q(spec.schema)}.{q(spec.name + '__as_of')}"
    return (f"CREATE OR REPLACE FUNCTION {fn}(at timestamptz) RETURNS SETOF {qualified(spec)} LANGUAGE sql STABLE "
            f"AS $as_of$ SELECT * FROM {qualified(spec)} WHERE {q(n.start)} <= at "
            f"AND ({q(n.end)} IS NULL OR {q(n.end)} > at) $as_of$")


async def _columns(conn: asyncpg.Connection, spec: TableSpec) -> set[str]:
    return {r[0] for r in await conn.fetch(
        "SELECT column_name FROM information_schema.columns WHERE table_schema = $1 AND table_name = $2",
        spec.schema, name(spec))}


def _validity(n: HistoryNames) -> tuple[str, str, str]:
    return n.start, n.end, n.active


async def rename_validity(conn: asyncpg.Connection, spec: TableSpec, n: HistoryNames, existing: set[str]) -> bool:
    """`history.columns` switched since the history table was made: its three validity columns renamed in place
    to `n` (the indexes and their predicate follow a rename; the trigger and `as_of` functions are made again by
    `prepare`). Returns whether it renamed. A table with neither naming whole (columns renamed or dropped by hand)
    is a ConfigError saying what to do: guessing which column is which could end the wrong versions."""
    if set(_validity(n)) <= existing:
        return False
    for other in (HistoryNames(), FIVETRAN_HISTORY):
        if other != n and set(_validity(other)) <= existing:
            for old, new in zip(_validity(other), _validity(n), strict=True):
                await conn.execute(f"ALTER TABLE {qualified(spec)} RENAME COLUMN {ddl.quote_ident(old)} "
                                   f"TO {ddl.quote_ident(new)}")
            log.info("history.columns_renamed", table=f"{spec.schema}.{name(spec)}", before=list(_validity(other)),
                     after=list(_validity(n)))
            return True
    raise ConfigError(
        f"{spec.schema}.{name(spec)} has neither replicator's validity columns ({', '.join(_validity(HistoryNames()))}) "
        f"nor Fivetran's ({', '.join(_validity(FIVETRAN_HISTORY))}): rename its three to "
        f"{', '.join(_validity(n))} (history.columns), or drop it (its versions are lost: a new one starts from the "
        "table's rows)")


async def prepare(conn: asyncpg.Connection, table: TableInfo) -> None:
    """Create or bring up to date the object's history table, its triggers and its `as_of` function, in the
    caller's transaction (after the object's table). A history table made for a table with rows is seeded; one
    made with the other `history.columns` has its validity columns renamed (`rename_validity`)."""
    spec, n = table.spec, table.history
    assert n is not None
    made = await conn.fetchval("SELECT to_regclass($1) IS NULL", qualified(spec))
    if not made:
        await rename_validity(conn, spec, n, await _columns(conn, spec))
    for statement in create_table(spec, n):
        await conn.execute(statement)
    existing = await _columns(conn, spec)
    for statement in add_columns(spec, existing) + record_function(spec, n) + [as_of_function(spec, n)]:
        await conn.execute(statement)
    if made:
        await conn.execute(seed(spec, n))


def end_current(table: TableInfo) -> str:
    """Before a first load into an empty table: every current version ends now (no record lives in the table)."""
    n, q = table.history, ddl.quote_ident
    assert n is not None
    return (f"UPDATE {qualified(table.spec)} SET {q(n.end)} = greatest({q(n.start)}, now()), {q(n.active)} = false "
            f"WHERE {q(n.active)}")


async def mark(conn: asyncpg.Connection, op: str) -> None:
    """Name the `_op` of the versions the triggers add in this transaction (`stream`: none, the stream writes its
    own). For the stream's statement (`stream_versions`), in the stream's transaction: no JIT compilation (its
    estimated cost turns it on: ~50 ms a batch of 2,000 changes measured, far more than it saves) and a plan made
    for each batch's arrays (asyncpg prepares the statement; from its sixth run Postgres may keep a generic plan,
    measured at 3 s a batch instead of 0.15 s)."""
    if op == "stream":
        await conn.execute(f"SELECT set_config('{OP_SETTING}', 'stream', true), set_config('jit', 'off', true), "
                           "set_config('plan_cache_mode', 'force_custom_plan', true)")
    else:
        await conn.execute(f"SELECT set_config('{OP_SETTING}', $1, true)", op)


# ---- the stream's versions -------------------------------------------------------------------------------------

def _name_of(op: RowOp) -> str:
    """The `_op` of a version standing for a whole operation (no steps, or a record fetched whole)."""
    steps = op.steps or []
    kinds = {s.op for s in steps}
    for kind in ("undelete", "gap"):
        if kind in kinds:
            return kind
    if op.source:
        return op.source
    if steps and steps[-1].op in ("create", "delete"):
        return steps[-1].op
    if op.fetched:
        return "gap"  # values read from the org at a later moment: the changes in between are unknown
    return {"delete": "delete", "update": "update"}.get(op.kind, "create")


def _rows(ops: list[RowOp]) -> list[tuple]:
    """One row per version to write: (Id, version, position, order, op, user, origin, changed fields, changed
    values (None: take the table's row), last, the operation's version and position, whether it ends deleted)."""
    out = []
    dumps = orjson.dumps
    for op in ops:
        steps = op.steps or []
        if op.fetched or not steps:
            last = steps[-1] if steps else None
            out.append((op.key, _ts(op.commit_ms), op.position, 0, _name_of(op), last and last.commit_user,
                        last and last.change_origin, last and ",".join(last.changed_fields), None, True,
                        _ts(op.commit_ms), op.position, op.kind == "delete" or op.deleted))
            continue
        for i, s in enumerate(steps):
            final = i == len(steps) - 1
            values = None
            if not final:
                values = dict(s.values or {})
                if "systemmodstamp" not in values:  # as the sink stamps it (`StreamSink._system`)
                    stamp = values.get("lastmodifieddate")
                    values["systemmodstamp"] = stamp if isinstance(stamp, dt.datetime) else _ts(s.commit_ms)
                values = dumps(values, default=str).decode()
            position = op.position if final else s.position
            out.append((op.key, _ts(op.commit_ms if final else s.commit_ms), position, i, s.op, s.commit_user,
                        s.change_origin, ",".join(s.changed_fields), values, final, _ts(op.commit_ms), op.position,
                        op.kind == "delete" or op.deleted))
    return out


def stream_versions(table: TableInfo, ops: list[RowOp]) -> tuple[str, list] | None:
    """SQL and arguments writing the versions of a batch's operations, to run after the batch's rows in its
    transaction (see the module docstring). Steps not newer than the record's current version add nothing (the
    version guard's rule); a version identical in Id, time and position to one stored is a replay."""
    if not ops:
        return None
    spec, n, q = table.spec, table.history, ddl.quote_ident
    assert n is not None
    rows = _rows(ops)
    h, t = qualified(spec), ddl.qualified(spec)
    start, end, active = q(n.start), q(n.end), q(n.active)
    args = [list(col) for col in zip(*rows, strict=True)]
    args[2] = [p or b"" for p in args[2]]
    args[11] = [p or None for p in args[11]]
    newer = (f"(b.\"id\" IS NULL OR b.{start} < s.v OR (b.{start} = s.v AND b.\"_position\" <> s.p AND "
             f"(b.\"_position\" = ''::bytea OR (s.p <> ''::bytea AND b.\"_position\" < s.p))))")
    # The table took the operation: its row carries the operation's version now, or it ends deleted and the record
    # has no row (a hard delete). The sink's guard compares the operation's newest change only and writes the changes folded into
    # it, so history keeps them exactly when the row took them; a row of an extract newer than the history's
    # current version (a resync that found the same values adds no version) makes no older change a version.
    row_v, row_p = q(ddl.STREAM_VERSION_COLUMN), q(ddl.STREAM_POSITION_COLUMN)
    took = (f"(EXISTS (SELECT 1 FROM {t} r WHERE r.\"id\" = s.id AND r.{row_v} = s.ov "
            f"AND r.{row_p} IS NOT DISTINCT FROM s.op_p) "
            f"OR (s.gone AND NOT EXISTS (SELECT 1 FROM {t} r WHERE r.\"id\" = s.id)))")
    # A record's current version is its latest (the unique index, read backwards: one index probe per record,
    # whatever the history's size; a scan of the history for the batch's Ids was chosen by the planner and grew
    # with every version, measured 10x slower after 60,000), and it is ended by its row's address.
    # each version's validity and header; the batch's last change of a record is its row as the table holds it
    meta = ("a.v, a.next_v, a.next_v IS NULL, a.op, nullif(a.u, ''), nullif(a.o, ''), "
            "string_to_array(nullif(a.f, ''), ','), a.p")
    sql = f"""
WITH s AS (SELECT * FROM unnest($1::text[], $2::timestamptz[], $3::bytea[], $4::int[], $5::text[], $6::text[],
                                $7::text[], $8::text[], $9::jsonb[], $10::bool[], $11::timestamptz[], $12::bytea[],
                                $13::bool[]) AS s(id, v, p, n, op, u, o, f, j, last, ov, op_p, gone)),
b AS (SELECT x.* FROM (SELECT DISTINCT id FROM s) i CROSS JOIN LATERAL
        (SELECT c.ctid AS _row, c.* FROM {h} c WHERE c."id" = i.id
         ORDER BY c.{start} DESC, c."_position" DESC LIMIT 1) x WHERE x.{active}),
a AS (SELECT s.*, b._row, CASE WHEN s.last THEN NULL WHEN b."id" IS NULL THEN '{{}}'::jsonb ELSE to_jsonb(b) END AS base,
             jsonb_merge(s.j) OVER w AS cum, lead(s.v) OVER w AS next_v
      FROM s LEFT JOIN b ON b."id" = s.id WHERE {newer} AND {took}
      WINDOW w AS (PARTITION BY s.id ORDER BY s.n)),
closed AS (UPDATE {h} c SET {end} = greatest(c.{start}, f.v), {active} = false
           FROM (SELECT _row, min(v) AS v FROM a WHERE _row IS NOT NULL GROUP BY _row) f
           WHERE c.ctid = f._row RETURNING 1)
INSERT INTO {h} ({_cols(spec)}, {start}, {end}, {active}, "_op", "_commit_user", "_change_origin",
                 "_changed_fields", "_position")
SELECT {_cols(spec, 'r.')}, {meta} FROM a CROSS JOIN LATERAL jsonb_populate_record(NULL::{h}, a.base || a.cum || jsonb_build_object('id', a.id)) r
WHERE NOT a.last
UNION ALL
SELECT {_cols(spec, 'r.')}, {meta} FROM a JOIN {t} r ON r."id" = a.id AND r.{row_v} = a.v
  AND r.{row_p} IS NOT DISTINCT FROM nullif(a.p, ''::bytea)
WHERE a.last
ON CONFLICT DO NOTHING"""
    return sql, args


def close_removed(table: TableInfo) -> str:
    """After the stream's key step (`ddl.place_keys`): the rows it removed (a key nulled, a claim refused, a stale
    row displaced) end their records' current versions. A row it moved to another key is written again by the
    batch, whose own versions follow."""
    n, q = table.history, ddl.quote_ident
    assert n is not None
    return (f"UPDATE {qualified(table.spec)} c SET {q(n.end)} = greatest(c.{q(n.start)}, now()), "
            f"{q(n.active)} = false FROM {q(ddl.KEY_OUTCOME)} o WHERE c.\"id\" = o.id AND o.had_row "
            f"AND o.outcome IN ('unkeyed', 'refused', 'displaced') AND c.{q(n.active)}")


# ---- reading and checking --------------------------------------------------------------------------------------

def check_sql(table: TableInfo) -> tuple[str, str]:
    """(current versions that differ from the table, row for row; records whose versions overlap or leave a
    hole), each a query of up to 5 example Ids. A hole is allowed only where a record was hard-deleted (its row
    gone, its last version ended) and came back."""
    spec, n, q = table.spec, table.history, ddl.quote_ident
    assert n is not None
    h, t = qualified(spec), ddl.qualified(spec)
    start, end, active = q(n.start), q(n.end), q(n.active)
    cols_t, cols_h = _cols(spec, "t."), _cols(spec, "c.")
    current = (f"SELECT coalesce(t.\"id\", c.\"id\") FROM {t} t FULL JOIN (SELECT * FROM {h} WHERE {active}) c "
               f"ON c.\"id\" = t.\"id\" WHERE t.\"id\" IS NULL OR c.\"id\" IS NULL "
               f"OR ROW({cols_t}) IS DISTINCT FROM ROW({cols_h})")
    hole = "false" if table.hard_deletes else "x.nxt > x.e"  # a hard-deleted record lives nowhere until it returns
    intervals = (f"SELECT x.\"id\" FROM (SELECT \"id\", {start} AS s, {end} AS e, {active} AS a, "
                 f"lead({start}) OVER w AS nxt, count(*) FILTER (WHERE {active}) OVER (PARTITION BY \"id\") AS cur "
                 f"FROM {h} WINDOW w AS (PARTITION BY \"id\" ORDER BY {start}, \"_position\")) x "
                 f"WHERE x.cur > 1 OR x.e < x.s OR (x.e IS NULL) <> x.a OR (x.nxt IS NOT NULL AND "
                 f"(x.e IS NULL OR x.nxt < x.e OR {hole}))")
    return current, intervals


async def check(conn: asyncpg.Connection, table: TableInfo) -> dict[str, list[str]]:
    """`replicator verify --history`: {"current": Ids whose current version is not the row,
    "intervals": Ids whose versions overlap or leave a hole}, at most 5 examples each; empty lists when equal."""
    current, intervals = check_sql(table)
    out = {}
    for key, sql in (("current", current), ("intervals", intervals)):
        out[key] = [r[0] for r in await conn.fetch(f"SELECT DISTINCT * FROM ({sql}) z LIMIT 5")]
    return out


async def prune(pool: asyncpg.Pool, table: TableInfo, days: float, batch: int) -> int:
    """Delete the versions that ended more than `days` ago, `batch` a transaction (short ones: a long DELETE
    would hold its locks and its WAL for the whole table). Current versions are never pruned. Returns how many."""
    spec, n = table.spec, table.history
    assert n is not None
    h, end = qualified(spec), ddl.quote_ident(n.end)
    total = 0
    while True:
        async with pool.acquire() as conn, leases.transaction(conn):
            status = await conn.execute(
                f"DELETE FROM {h} WHERE ctid = ANY(ARRAY(SELECT ctid FROM {h} WHERE {end} < now() - "
                f"make_interval(secs => $1) LIMIT $2))", days * 86_400.0, batch)
        done = int(status.rsplit(" ", 1)[-1])
        total += done
        if done < batch:
            return total
