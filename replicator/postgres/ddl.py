"""SQL text for target tables, as pure functions. Identifiers are always quoted; values never appear here."""

from __future__ import annotations

from ..model import DELETED_COLUMN, SYNCED_COLUMN, VERSION_COLUMN, TableSpec

# Set by the stream to the commit timestamp of the last change event applied to the row.
STREAM_VERSION_COLUMN = "_sf_stream_version"
# Set by the stream to that event's replay id; NULL when the row's version is its SystemModstamp (an extract).
# Salesforce stamps whole seconds, so changes of one record often share a commit time: the replay id orders them.
# Replay ids of one topic compare as bytes in delivery order (their first 8 bytes are a big-endian counter,
# docs/salesforce-pubsub-cdc.md §3).
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


def create_staging(spec: TableSpec, staging: str) -> str:
    """A temporary table shaped like the Salesforce columns, dropped at commit."""
    cols = ", ".join(f"{quote_ident(c.name)} {c.pg_type}" for c in spec.columns)
    return f"CREATE TEMP TABLE {quote_ident(staging)} ({cols}) ON COMMIT DROP"


def upsert_from_staging(spec: TableSpec, staging: str, version_column: str | None, wins_ties: bool = True) -> str:
    """Keyed upsert with the version guard (docs/design.md, contracts 1 and 2).

    Staged rows older than the row already present are filtered out before the upsert (a replay that changes
    nothing should not lock and WAL-log every row, docs/baselines.md). A bulk row that wins clears the stream
    version and position, so `_sf_version` becomes its SystemModstamp again.

    `wins_ties`: an extract row stamped in the same second as the row's version replaces it. Right for a
    backfill or resync: the stream is stopped and replays every change after the position captured before the
    extract, so a change the extract missed comes again, while a change the stream missed (it was away) is
    only in the extract. Wrong for `verify --repair` beside a running stream, which replays nothing: there an
    extract row loses a tie to a row the stream wrote (it may have read the record before that change).
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
            newer = f"WHERE NOT EXISTS (SELECT 1 FROM {table} t WHERE t.{key} = s.{key} AND t.{version} > s.{v})"
            guard = f" WHERE cur.{version} <= EXCLUDED.{v}"
        else:
            newer = (f"WHERE NOT EXISTS (SELECT 1 FROM {table} t WHERE t.{key} = s.{key} AND (t.{version} > s.{v} "
                     f"OR (t.{version} = s.{v} AND t.{position} IS NOT NULL)))")
            guard = f" WHERE {newer_than_row('cur', f'EXCLUDED.{v}', 'NULL::bytea')}"
    upsert = (
        f"INSERT INTO {table} AS cur ({cols}) "
        f"SELECT DISTINCT ON ({key}) {cols} FROM {stg} s {newer} ORDER BY {key} "
        f"ON CONFLICT ({key}) DO UPDATE SET {', '.join(sets)}{guard}"
    )
    if spec.key == "id" or spec.column("id") is None:
        return upsert
    # Keyed by an external id, which can change in Salesforce: first move rows whose key changed (found by
    # their Id) to the new key, so the upsert updates them instead of colliding on the Id index.
    rekey = (
        f'UPDATE {table} AS cur SET {key} = s.{key} FROM {stg} s WHERE cur."id" = s."id" '
        f"AND cur.{key} IS DISTINCT FROM s.{key} AND s.{key} IS NOT NULL"
    )
    return f"{rekey};\n{upsert}"
