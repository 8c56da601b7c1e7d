"""SQL text for target tables, as pure functions. Identifiers are always quoted; values never appear here."""

from __future__ import annotations

from ..model import DELETED_COLUMN, SYNCED_COLUMN, VERSION_COLUMN, TableSpec

# Set by the stream to the commit timestamp of the last change event applied to the row.
STREAM_VERSION_COLUMN = "_sf_stream_version"
# Set by the stream to that event's replay id; NULL when the row's version is its SystemModstamp (an extract).
# Salesforce stamps whole seconds, so changes of one record often share a commit time: the replay id orders them.
# Replay ids of one topic compare as bytes in delivery order (their first 8 bytes are a big-endian counter,
# docs/pubsub-cdc.md §3).
STREAM_POSITION_COLUMN = "_sf_stream_position"


def newer_than_row(row: str, version: str, position: str) -> str:
    """SQL: a change at (`version`, `position`) is newer than the row `row` (the version guard,
    docs/design.md contract 2). Later commit time wins; at the same commit time a later replay id wins, and a
    change with a replay id wins over a row whose version came from an extract (no position), which may or may
    not include that change: applying it is safe, because every later change of that second follows it in the
    stream. A change without a position wins a tie only over a row without one."""
    v, p = f"{row}.{quote_ident(VERSION_COLUMN)}", f"{row}.{quote_ident(STREAM_POSITION_COLUMN)}"
    return (f"({v} < {version} OR ({v} = {version} AND ({p} IS NULL OR "
            f"({position} IS NOT NULL AND {p} < {position}))))")


def quote_ident(name: str) -> str:
    """Quote an identifier for Postgres: wrap in double quotes, double any inside. NUL cannot be quoted."""
    if "\x00" in name:
        raise ValueError("identifier contains a NUL byte")
    return '"' + name.replace('"', '""') + '"'


def quote_literal(value: str) -> str:
    """A SQL string literal (standard_conforming_strings, on by default since PostgreSQL 9.1)."""
    if "\x00" in value:
        raise ValueError("literal contains a NUL byte")
    return "'" + value.replace("'", "''") + "'"


def qualified(spec: TableSpec) -> str:
    return f"{quote_ident(spec.schema)}.{quote_ident(spec.name)}"


def create_table(spec: TableSpec, version_column: str | None, has_isdeleted: bool) -> str:
    """CREATE TABLE IF NOT EXISTS with the key as primary key and the metadata columns.

    `_sf_version` and `_sf_deleted_at` are generated from the record's own fields, so a page of Salesforce
    CSV loads with a plain COPY (measured: a generated column costs ~5% of COPY, a trigger ~30%):
    - `_sf_version` = the stream's version when a change event set one, else the record's SystemModstamp;
    - `_sf_deleted_at` = that version while IsDeleted is true (soft delete; UNDELETE clears IsDeleted).
    """
    cols = [
        f"{quote_ident(c.name)} {c.pg_type}{'' if c.nullable else ' NOT NULL'}" for c in spec.columns
    ]
    source = quote_ident(version_column) if version_column else "NULL::timestamptz"
    version_expr = f"coalesce({quote_ident(STREAM_VERSION_COLUMN)}, {source})"
    deleted_expr = (
        f"CASE WHEN {quote_ident('isdeleted')} THEN {version_expr} END" if has_isdeleted else "NULL::timestamptz"
    )
    cols += [
        f"{quote_ident(STREAM_VERSION_COLUMN)} timestamptz",
        f"{quote_ident(STREAM_POSITION_COLUMN)} bytea",
        f"{quote_ident(VERSION_COLUMN)} timestamptz GENERATED ALWAYS AS ({version_expr}) STORED",
        f"{quote_ident(DELETED_COLUMN)} timestamptz GENERATED ALWAYS AS ({deleted_expr}) STORED",
        f"{quote_ident(SYNCED_COLUMN)} timestamptz NOT NULL DEFAULT now()",
        f"PRIMARY KEY ({quote_ident(spec.key)})",
    ]
    body = ",\n  ".join(cols)
    sql = (
        f"CREATE SCHEMA IF NOT EXISTS {quote_ident(spec.schema)};\n"
        f"CREATE TABLE IF NOT EXISTS {qualified(spec)} (\n  {body}\n)"
    )
    if spec.key != "id" and spec.column("id") is not None:
        # Change events name records by Id: a table keyed by an external id needs Id indexed too.
        sql += f";\nCREATE UNIQUE INDEX IF NOT EXISTS {quote_ident(spec.name + '_id')} ON {qualified(spec)} (\"id\")"
    return sql


def add_columns(spec: TableSpec, existing: set[str]) -> list[str]:
    """ALTER TABLE … ADD COLUMN for columns the table lacks (a field added in Salesforce, or a metadata column a
    newer replicator keeps: `_sf_stream_position` on tables made before it)."""
    wanted = [(c.name, c.pg_type) for c in spec.columns] + [(STREAM_POSITION_COLUMN, "bytea")]
    return [
        f"ALTER TABLE {qualified(spec)} ADD COLUMN IF NOT EXISTS {quote_ident(name)} {pg_type}"
        for name, pg_type in wanted
        if name not in existing
    ]


def column_list(spec: TableSpec) -> str:
    return ", ".join(quote_ident(c.name) for c in spec.columns)


# The keys an upsert-mode extract's pages held (sql/010_extract_keys.sql), the running job's only.
EXTRACT_KEYS = "extract_keys"


def record_extract_keys(spec: TableSpec, staging: str) -> str:
    """SQL ($1: the object's name, $2: the job's id): the keys of the page staged in `staging`, as one array, into
    the object's extract key set, in the page's own transaction: a job resumed after a crash keeps what its committed
    pages held."""
    k = quote_ident(spec.key)
    return (f"INSERT INTO {EXTRACT_KEYS} (object, job_id, record_keys) SELECT $1, $2, array_agg(s.{k}::text) "
            f"FROM {quote_ident(staging)} s WHERE s.{k} IS NOT NULL HAVING count(*) > 0")


def remove_unseen(spec: TableSpec, soft: bool) -> str:
    """SQL ($1: the object's name): after a whole extract loaded through the upsert, the rows whose key no page of it
    held (`record_extract_keys`) are records the org no longer has: purged from the Recycle Bin or hard-deleted
    while the stream was away, which publishes no change event ("General Considerations", Change Data Capture
    Developer Guide,
    https://developer.salesforce.com/docs/atlas.en-us.change_data_capture.meta/change_data_capture/cdc_general_considerations.htm).
    Soft deletes mark them deleted; hard deletes remove them.

    Presence decides, never whether the extract rewrote a row: a row the stream wrote from a late commit carries
    that commit time as its version, seconds after the SystemModstamp the extract holds, so the version guard keeps
    the row as it is (same values), and only its key says the extract held the record (docs/design.md contract 5).

    A row the extract lacks stays when it may hold a record the extract could not see yet, created after the job
    began: its version (a commit time or a SystemModstamp, Salesforce's clock) is at or after the second of the
    job's createdDate (Salesforce's clock too), or it was written after the job was recorded (`_sf_synced_at` and
    `job_created_at`, both the database's clock: a record fetched by Id from a transaction that began before the job
    and committed after its extract has an older SystemModstamp). Rows with a dead letter from this job stay too:
    their record is in the org, its row was refused. Either way a row stays rather than goes: the next extract
    settles it."""
    t, key = qualified(spec), quote_ident(spec.key)
    job = "(SELECT {} FROM objects WHERE object = $1)"
    since, in_org = job.format("job_created_at"), job.format("date_trunc('second', job_created_in_org)")
    # An anti-join with the keys unnested (a hash of them: the planner estimates a few rows an array, and the table
    # holds at least as many rows as the extract loaded). 100,000 keys: ~40 ms; copied into an analyzed temporary
    # table first, ~85 ms.
    seen = (f"SELECT unnest(k.record_keys) FROM {EXTRACT_KEYS} k JOIN objects o USING (object, job_id) "
            f"WHERE k.object = $1")
    absent = f"NOT EXISTS (SELECT 1 FROM ({seen}) AS s(k) WHERE s.k = t.{key}::text)"
    newer = (f"coalesce(t.{quote_ident(VERSION_COLUMN)} >= {in_org}, false) "
             f"OR t.{quote_ident(SYNCED_COLUMN)} >= {since}")
    lettered = (f"EXISTS (SELECT 1 FROM dead_letters d WHERE d.object = $1 "
                f"AND d.record_key = t.{key}::text AND d.first_seen >= {since})")
    where = f"{absent} AND NOT ({newer}) AND NOT {lettered}"
    if soft:
        return (f"UPDATE {t} AS t SET {quote_ident('isdeleted')} = true, {quote_ident(SYNCED_COLUMN)} = now() "
                f"WHERE {where} AND NOT t.{quote_ident('isdeleted')}")
    return f"DELETE FROM {t} AS t WHERE {where}"


def create_staging(spec: TableSpec, staging: str) -> str:
    """A temporary table shaped like the Salesforce columns, dropped at commit."""
    cols = ", ".join(f"{quote_ident(c.name)} {c.pg_type}" for c in spec.columns)
    return f"CREATE TEMP TABLE {quote_ident(staging)} ({cols}) ON COMMIT DROP"


def staging_newer(version_column: str | None, wins_ties: bool):
    """`newer(row, claim)` for rows from an extract (no replay id): the version guard of `upsert_from_staging`."""
    if not version_column:
        return lambda row, claim: "TRUE"
    if wins_ties:
        return lambda row, claim: f"{row}.{quote_ident(VERSION_COLUMN)} <= {claim}.v"
    return lambda row, claim: newer_than_row(row, f"{claim}.v", f"{claim}.p")


def upsert_from_staging(spec: TableSpec, staging: str, version_column: str | None, wins_ties: bool = True) -> str:
    """Keyed upsert with the version guard (docs/design.md, contracts 1 and 2).

    Staged rows older than the row already present are filtered out before the upsert (a replay that changes
    nothing should not lock and WAL-log every row, docs/baselines.md), and with `wins_ties` so are rows of the
    row's version whose values are the row's already. A bulk row that wins clears the stream version and position,
    so `_sf_version` becomes its SystemModstamp again.

    `wins_ties`: an extract row stamped in the same second as the row's version replaces it. Right for a
    backfill or resync: the stream is stopped and replays every change after the position captured before the
    extract, so a change the extract missed comes again, while a change the stream missed (it was away) is
    only in the extract. Wrong for `verify --repair` beside a running stream, which replays nothing: there an
    extract row loses a tie to a row the stream wrote (it may have read the record before that change).

    A table keyed by an external id first runs the key step (`place_keys`, the same rules as the stream's):
    rows whose key moved, swapped or was nulled, and keys another record's stale row holds, are settled before
    the upsert, which then writes only the staged rows the key step kept. Several statements, no parameters.
    """
    table = qualified(spec)
    key = quote_ident(spec.key)
    cols = column_list(spec)
    stg = quote_ident(staging)
    sets = [f"{quote_ident(c.name)} = EXCLUDED.{quote_ident(c.name)}" for c in spec.columns if c.name != spec.key]
    sets += [f"{quote_ident(STREAM_VERSION_COLUMN)} = NULL", f"{quote_ident(STREAM_POSITION_COLUMN)} = NULL",
             f"{quote_ident(SYNCED_COLUMN)} = now()"]
    newer = guard = ""
    if version_column:
        v = quote_ident(version_column)
        version = quote_ident(VERSION_COLUMN)
        position = quote_ident(STREAM_POSITION_COLUMN)
        if wins_ties:
            # a tie whose values are the row's already changes nothing: left out, unwritten (a resync of a loaded
            # object rewrote every row, at 0.3x the speed of COPY: `python -m bench.resync_load`)
            same = " AND ".join(f"t.{quote_ident(c.name)} IS NOT DISTINCT FROM s.{quote_ident(c.name)}"
                                for c in spec.columns)
            newer = (f"WHERE NOT EXISTS (SELECT 1 FROM {table} t WHERE t.{key} = s.{key} AND (t.{version} > s.{v} "
                     f"OR (t.{version} = s.{v} AND {same})))")
            guard = f" WHERE cur.{version} <= EXCLUDED.{v}"
        else:
            newer = (f"WHERE NOT EXISTS (SELECT 1 FROM {table} t WHERE t.{key} = s.{key} AND (t.{version} > s.{v} "
                     f"OR (t.{version} = s.{v} AND t.{position} IS NOT NULL)))")
            guard = f" WHERE {newer_than_row('cur', f'EXCLUDED.{v}', 'NULL::bytea')}"
    if not keyed_by_external_id(spec):
        return (f"INSERT INTO {table} AS cur ({cols}) "
                f"SELECT DISTINCT ON ({key}) {cols} FROM {stg} s {newer} ORDER BY {key} "
                f"ON CONFLICT ({key}) DO UPDATE SET {', '.join(sets)}{guard}")
    kept = (f"s.{key} IS NOT NULL AND NOT EXISTS (SELECT 1 FROM {quote_ident(KEY_OUTCOME)} o "
            f"WHERE o.id = s.\"id\" AND o.outcome NOT IN {_KEPT_SQL})")
    newer = f"{newer} AND {kept}" if newer else f"WHERE {kept}"
    version = f"s.{quote_ident(version_column)}" if version_column else "NULL::timestamptz"
    # A page's empty key arrives as '' (the key column is not FORCE_NULL): Salesforce has no empty text, so it
    # is a record without a key.
    text_key = spec.column(spec.key).pg_type in ("text", "varchar(18)")
    staged_key = f"NULLIF(s.{key}, '')" if text_key else f"s.{key}"
    claims = (f"CREATE TEMP TABLE {quote_ident(KEY_CLAIMS)} ON COMMIT DROP AS "
              f"SELECT s.\"id\"::text AS id, {staged_key} AS k, {version} AS v, NULL::bytea AS p, to_jsonb(s) AS j "
              f"FROM {stg} s")
    upsert = (f"INSERT INTO {table} AS cur ({cols}) "
              f"SELECT DISTINCT ON ({key}) {cols} FROM {stg} s {newer} ORDER BY {key} "
              f"ON CONFLICT ({key}) DO UPDATE SET {', '.join(sets)}{guard}")
    steps = [lock_for_keys(spec), claims,
             *place_keys(spec, staging_newer(version_column, wins_ties), "backfill"), upsert]
    return ";\n".join(steps)


# ---- the key step of a table keyed by an external id ---------------------------------------------------------
#
# In Salesforce such a key is unique (schema.table_spec refuses any other), but it can change, be nulled, move to a
# value another record just left, or two records can swap values in one transaction. Primary keys are checked row
# by row, so updating keys in place fails on a swap; and a row holding a key is not necessarily its owner: when a
# change was missed (a gap healed later, a resync's extract older than a row), the copy may still hold a key for a
# record that left it. The key step settles all of a write's keys together, before its inserts and updates, by
# record Id, with no placeholder value (so any key type works: text, number, email):
#   1. every record the write names with its key (a claim: Id, key, version) is compared with its own row (by Id):
#      a claim older than the row is dropped ("older"); a NULL key cannot be kept ("unkeyed");
#   2. on each claimed key the newest claim wins; the row holding the key (when its own record makes no claim)
#      is a contender too, at its version. The winner is "placed" (or "moved" when its row had another key);
#      a losing claim is "refused", a losing holder "displaced";
#   3. rows that move or lose are taken out of the table (into KEY_REMOVED), winners that move go back under their
#      new keys with their values and versions unchanged (the write that follows applies the claim's values);
#   4. each unkeyed, refused or displaced record gets a dead letter with its Id, the key, the other record's Id,
#      the claim's values and the removed row's last values. `replicator dead-letters retry` fetches it again by
#      Id; the stream's check step (pipeline/applier.py) fetches both records of a collision before it gets here.
# The table is locked against other writers (SHARE ROW EXCLUSIVE: readers go on) for the rest of the transaction,
# so what the step decides still holds when the rows are written.

KEY_CLAIMS = "_key_claims"  # id, k (the key named), v and p (the claim's version), j (its values)
KEY_OUTCOME = "_key_outcome"  # id, k, j, had_row, outcome, other (the other record of a collision)
KEY_REMOVED = "_key_removed"  # rows the key step took out of the table, with their last values
KEPT = ("placed", "moved")  # the outcomes whose write goes on
_KEPT_SQL = "('placed', 'moved')"


def keyed_by_external_id(spec: TableSpec) -> bool:
    return spec.key != "id" and spec.column("id") is not None


def lock_for_keys(spec: TableSpec) -> str:
    """Other writers wait until this transaction commits; readers do not (SHARE ROW EXCLUSIVE)."""
    return f"LOCK TABLE {qualified(spec)} IN SHARE ROW EXCLUSIVE MODE"


def key_claims_table(spec: TableSpec) -> str:
    """The temporary table of claims, filled by `fill_key_claims` (the stream's)."""
    key_type = spec.column(spec.key).pg_type
    return (f"CREATE TEMP TABLE {quote_ident(KEY_CLAIMS)} (id text, k {key_type}, v timestamptz, p bytea, j jsonb) "
            "ON COMMIT DROP")


def fill_key_claims(spec: TableSpec) -> str:
    """$1 ids, $2 keys, $3 versions, $4 replay ids, $5 values (jsonb)."""
    key_type = spec.column(spec.key).pg_type
    return (f"INSERT INTO {quote_ident(KEY_CLAIMS)} SELECT * FROM unnest($1::text[], $2::{key_type}[], "
            "$3::timestamptz[], $4::bytea[], $5::jsonb[])")


def key_trouble(spec: TableSpec) -> str:
    """SQL ($1 ids, $2 keys): true when the key step has anything to settle: a NULL key, a row (by Id) under
    another key, a key held by another record's row, or one key named twice. Most writes have none."""
    t, key = qualified(spec), quote_ident(spec.key)
    key_type = spec.column(spec.key).pg_type
    return (f"SELECT EXISTS (SELECT 1 FROM unnest($1::text[], $2::{key_type}[]) AS u(id, k) WHERE u.k IS NULL "
            f"OR EXISTS (SELECT 1 FROM {t} r WHERE r.\"id\" = u.id AND r.{key} <> u.k) "
            f"OR EXISTS (SELECT 1 FROM {t} r WHERE r.{key} = u.k AND r.\"id\" <> u.id)) "
            f"OR (SELECT count(DISTINCT k) <> count(k) FROM unnest($2::{key_type}[]) AS k)")


def key_outcomes(spec: TableSpec, newer) -> str:
    """CREATE KEY_OUTCOME from KEY_CLAIMS and the table (steps 1 and 2 above); changes nothing in the table.
    `newer(row, claim)`: SQL true when the claim is newer than the row (the version guard)."""
    t, key = qualified(spec), quote_ident(spec.key)
    return (
        f"CREATE TEMP TABLE {quote_ident(KEY_OUTCOME)} ON COMMIT DROP AS "
        f"WITH c AS (SELECT DISTINCT ON (id) * FROM {quote_ident(KEY_CLAIMS)} "
        f"ORDER BY id, v DESC NULLS LAST, p DESC NULLS LAST), "
        f"own AS (SELECT c.id, c.k, c.v, c.p, c.j, cur.\"id\" IS NOT NULL AS had_row, cur.{key} AS cur_k, "
        f"(cur.\"id\" IS NULL OR {newer('cur', 'c')}) AS applies FROM c LEFT JOIN {t} AS cur ON cur.\"id\" = c.id), "
        f"best AS (SELECT DISTINCT ON (k) k, id, v, p FROM own WHERE applies AND k IS NOT NULL "
        f"ORDER BY k, v DESC NULLS LAST, p DESC NULLS LAST, id), "
        f"holder AS (SELECT b.k, h.\"id\"::text AS id, b.id AS claimant, {newer('h', 'b')} AS beaten "
        f"FROM best b JOIN {t} AS h ON h.{key} = b.k "
        f"WHERE NOT EXISTS (SELECT 1 FROM own o WHERE o.id = h.\"id\" AND o.applies)) "
        f"SELECT o.id, o.k, o.j, o.had_row, "
        f"CASE WHEN NOT o.applies THEN 'older' WHEN o.k IS NULL THEN 'unkeyed' "
        f"WHEN b.id <> o.id OR (hd.id IS NOT NULL AND hd.beaten IS NOT TRUE) THEN 'refused' "
        f"WHEN o.had_row AND o.cur_k <> o.k THEN 'moved' ELSE 'placed' END AS outcome, "
        f"CASE WHEN NOT o.applies OR o.k IS NULL THEN NULL WHEN b.id <> o.id THEN b.id ELSE hd.id END AS other "
        f"FROM own o LEFT JOIN best b ON b.k = o.k LEFT JOIN holder hd ON hd.k = o.k "
        f"UNION ALL SELECT hd.id, hd.k, NULL, true, 'displaced', hd.claimant FROM holder hd WHERE hd.beaten"
    )


def place_keys(spec: TableSpec, newer, source: str) -> list[str]:
    """The key step's statements after KEY_CLAIMS is filled (steps 1–4 above), under `lock_for_keys`. Leaves
    KEY_OUTCOME for the write that follows: it goes on only for the claims whose outcome is in KEPT."""
    t = qualified(spec)
    outcome, removed = quote_ident(KEY_OUTCOME), quote_ident(KEY_REMOVED)
    meta = [STREAM_VERSION_COLUMN, STREAM_POSITION_COLUMN, SYNCED_COLUMN]
    targets = ", ".join(quote_ident(c) for c in [*(c.name for c in spec.columns), *meta])
    values = ", ".join("o.k" if c.name == spec.key else f"m.{quote_ident(c.name)}" for c in spec.columns)
    values += ", " + ", ".join(f"m.{quote_ident(c)}" for c in meta)
    field = quote_literal(spec.column(spec.key).field)
    internal = ", ".join(quote_literal(c) for c in (*meta, VERSION_COLUMN, DELETED_COLUMN))
    retry = "; replicator dead-letters retry fetches the record again by Id"
    reason = (
        f"CASE o.outcome WHEN 'unkeyed' THEN 'the key field ' || {field} || ' is empty in Salesforce: the record "
        f"cannot be keyed' || CASE WHEN o.had_row THEN ', so its row was removed (last values in the payload)' "
        f"ELSE ' and is not in the table' END "
        f"WHEN 'refused' THEN {field} || ' ' || o.k::text || ' is held by the newer record ' || o.other || "
        f"': this change was refused' || CASE WHEN o.had_row THEN ' and the record''s row removed' ELSE '' END "
        f"|| {quote_literal(retry)} "
        f"ELSE {field} || ' ' || o.k::text || ' was taken by the newer record ' || o.other || "
        f"': this record''s row held it stale (the record left the key in a change this copy missed) and was "
        f"removed' || {quote_literal(retry)} END"
    )
    return [
        key_outcomes(spec, newer),
        f"CREATE TEMP TABLE {removed} ON COMMIT DROP AS TABLE {t} WITH NO DATA",
        f"WITH gone AS (DELETE FROM {t} AS cur USING {outcome} o WHERE cur.\"id\" = o.id AND o.had_row "
        f"AND o.outcome IN ('moved', 'unkeyed', 'refused', 'displaced') RETURNING cur.*) "
        f"INSERT INTO {removed} SELECT * FROM gone",
        f"INSERT INTO {t} ({targets}) SELECT {values} FROM {removed} m "
        f"JOIN {outcome} o ON o.id = m.\"id\" AND o.outcome = 'moved'",
        f"INSERT INTO dead_letters (object, record_key, source, reason, payload) "
        f"SELECT {quote_literal(spec.object)}, o.id, {quote_literal(source)}, {reason}, "
        f"jsonb_build_object('key', o.k, 'other_record', o.other, 'outcome', o.outcome, 'values', o.j, "
        f"'last_values', to_jsonb(m) - ARRAY[{internal}]) "
        f"FROM {outcome} o LEFT JOIN {removed} m ON m.\"id\" = o.id WHERE o.outcome NOT IN {_KEPT_SQL} "
        f"AND o.outcome <> 'older'",
    ]
