"""Loading backfill pages into a target table: one page, one transaction, with its page record.

Two load modes, chosen when a job starts (docs/architecture.md "How the backfill works"):
- `copy`: the table was empty, so the page's CSV goes straight into `COPY … FROM STDIN (FORMAT csv,
  FORCE_NULL …)` as bytes, never becoming Python objects: the fastest route Postgres has.
- `upsert`: the table already had rows (a resumed job replaced by a new one, a second backfill, a resync): COPY into a
  temporary staging table, then one keyed upsert with the version guard, and the page's keys into the job's key set
  (`extract_keys`), by which `remove_unseen` finds the rows the whole extract lacked.
Either way the page record (`backfill_pages`, `objects`) commits with the rows, so a
crash at any instant leaves each page loaded entirely or not at all.

A page Postgres refuses goes the careful way: pipeline/backfill.py checks each row in Python, and `load_checked`
loads the rows that passed, finding any that Postgres still refuses by bisection in savepoints; those become dead
letters with Postgres's reason, in the page's transaction (docs/design.md, contract 9). A key an extract holds
twice is an inconsistency: the first row loads, every later one is a dead letter, in both modes (the staging
table's key sends an upsert page with a repeated key the careful way).

NUL bytes: Salesforce results hold them (docs/bulk-rest-oauth.md §1.8), and COPY breaks on them
(docs/baselines.md, "Salesforce-style CSV straight into COPY"). `strip_nul_chunks` removes them from CSV bytes, here at
the COPY because the CSV never becomes Python values on the fast path; every route of Bulk CSV into Postgres uses it:
this sink, the careful path's row checks (pipeline/backfill.py, so a value is checked as COPY will receive it), and
`verify` (postgres/compare.py). Values that do become Python values lose their NULs in salesforce/values.py.
"""

from __future__ import annotations

import contextlib
import datetime as dt
from array import array
from bisect import bisect_left
from collections.abc import AsyncIterable, AsyncIterator, Awaitable, Callable, Sequence
from typing import Protocol

import asyncpg
import structlog

from ..model import SYNCED_COLUMN, VERSION_COLUMN, Checkpoint, DeadLetter, RejectedDataError, TableInfo
from . import ddl, history, leases, state
from .errors import error_kind, mapped

log = structlog.get_logger(__name__)

_STAGED_KEY = "_staged_key"  # the staging table's primary key (upsert mode)
_PAGE_KEYS = "_page_keys"  # the careful path's table of the page's keys and row indexes
_HELD = "_page_held"  # … and of the rows whose key an earlier row holds
# Rows of held keys are read and dead-lettered this many at a time, so a page of them is never held in memory.
_BATCH = 1000


async def strip_nul_chunks(chunks: AsyncIterable[bytes]) -> AsyncIterator[bytes]:
    """CSV bytes without NUL bytes (see the module docstring). A NUL byte is never part of a multi-byte UTF-8
    character, so removing it from any chunk boundary is safe."""
    async for chunk in chunks:
        yield chunk.replace(b"\x00", b"") if b"\x00" in chunk else chunk


class CheckedRows(Protocol):
    """The rows of a page that passed the careful path's checks, on disk (pipeline/backfill.py)."""

    @property
    def count(self) -> int:
        """How many rows."""

    def chunks(self, start: int, stop: int, skip: Sequence[int]) -> AsyncIterator[bytes]:
        """CSV of rows [start, stop) but those in `skip` (sorted indexes), header line first."""

    def key_chunks(self) -> AsyncIterator[bytes]:
        """CSV of every row's key and index (`key,index`), no header."""

    def refused(self, index: int, reason: str) -> DeadLetter:
        """The dead letter of row `index` (its raw values), refused for `reason`."""


def _copied(status: str) -> int:
    return int(status.rsplit(" ", 1)[-1])


class PageSink:
    """Owns the target table of one object. Every method takes its own connection from the pool."""

    def __init__(self, pool: asyncpg.Pool, table: TableInfo):
        self.pool = pool
        self.t = table
        self._force_null = [c.name for c in table.spec.columns if c.nullable]

    @mapped
    async def prepare(self) -> bool:
        """Create the table (or add missing columns). Returns True when the table holds no rows."""
        spec = self.t.spec
        async with self.pool.acquire() as conn, conn.transaction():
            # Objects prepare concurrently; CREATE SCHEMA IF NOT EXISTS races with itself without this lock.
            await conn.execute("SELECT pg_advisory_xact_lock(hashtext('replicator.ddl'))")
            await conn.execute(ddl.create_table(spec, self.t.version_column, self.t.has_isdeleted))
            existing = {
                r["column_name"]
                for r in await conn.fetch(
                    "SELECT column_name FROM information_schema.columns WHERE table_schema = $1 AND table_name = $2",
                    spec.schema, spec.name,
                )
            }
            for stmt in ddl.add_columns(spec, existing):
                log.info("schema.column_added", object=spec.object, sql=stmt)
                await conn.execute(stmt)
            if existing and any(c.name not in existing for c in spec.columns):  # a field added to a table in use
                await state.request_refill(conn, spec.object)
            if self.t.history is not None:
                await history.prepare(conn, self.t)
            if self.t.hard_deletes and self.t.has_isdeleted:
                await conn.execute(
                    f"CREATE INDEX IF NOT EXISTS {ddl.quote_ident(spec.name + '_deleted')} ON {ddl.qualified(spec)}"
                    f" ({ddl.quote_ident(spec.key)}) WHERE {ddl.quote_ident('isdeleted')}"
                )
            empty = await conn.fetchval(f"SELECT NOT EXISTS (SELECT 1 FROM {ddl.qualified(spec)})")
            await state.register_object(conn, spec.object, spec.schema, spec.name, spec.key, spec.fingerprint)
        return bool(empty)

    @mapped
    async def missing_columns(self) -> list[str] | None:
        """The fields (API names) of the table's description whose column the table lacks (added in Salesforce
        since it was last prepared), in description order; None while the table does not exist."""
        spec = self.t.spec
        async with self.pool.acquire() as conn:
            existing = {r["column_name"] for r in await conn.fetch(
                "SELECT column_name FROM information_schema.columns WHERE table_schema = $1 AND table_name = $2",
                spec.schema, spec.name)}
        return [c.field for c in spec.columns if c.name not in existing] if existing else None

    @mapped
    async def end_versions(self) -> None:
        """A first load into the empty table begins (`load_mode` copy): its records' history starts again, so
        versions still current from rows removed outside replicator end now (postgres/history.py). A history
        table without any version loads without its indexes (`history.drop_indexes`), `build_indexes` after."""
        if self.t.history is not None:
            async with self.pool.acquire() as conn, leases.transaction(conn):
                await conn.execute(history.end_current(self.t))
                if await conn.fetchval(f"SELECT NOT EXISTS (SELECT 1 FROM {history.qualified(self.t.spec)})"):
                    await conn.execute(history.drop_indexes(self.t.spec))

    @mapped
    async def build_indexes(self) -> None:
        """The history table's indexes, where a first load went without them (`end_versions`); nothing when they
        exist. Before any write but a first load's: the end of an extract, an upsert job after a failed one."""
        if self.t.history is not None:
            async with self.pool.acquire() as conn, leases.transaction(conn):
                for statement in history.indexes(self.t.spec, self.t.history):
                    await conn.execute(statement)

    async def _mark(self, conn: asyncpg.Connection, op: str) -> None:
        """Name the `_op` of the history versions this transaction's writes add (postgres/history.py)."""
        if self.t.history is not None:
            await history.mark(conn, op)

    async def _copy(self, conn: asyncpg.Connection, target: str, source: AsyncIterable[bytes] | bytes) -> int:
        spec = self.t.spec
        if isinstance(source, bytes):
            source = _once(source)
        status = await conn.copy_to_table(
            target,
            source=strip_nul_chunks(source),
            schema_name=spec.schema if target == spec.name else None,
            columns=[c.name for c in spec.columns],
            format="csv",
            header=True,
            force_null=self._force_null,
        )
        return _copied(status)

    @mapped
    async def remove_unseen(self) -> int:
        """After a whole extract in upsert mode: rows whose key none of its pages held are removed, or marked
        deleted (`ddl.remove_unseen`). Safe to call again (a crash before the backfill is marked finished resumes
        the job and calls it again: the key set stays until then). Returns how many."""
        soft = self.t.has_isdeleted and not self.t.hard_deletes
        async with self.pool.acquire() as conn, leases.transaction(conn):
            await self._mark(conn, "resync:removed")
            status = await conn.execute(ddl.remove_unseen(self.t.spec, soft), self.t.spec.object)
        return int(status.rsplit(" ", 1)[-1])

    async def _create_staging(self, conn: asyncpg.Connection) -> str:
        """The page's staging table (upsert mode), its key unique like the target's: a key the page holds twice is
        refused by Postgres (and the page goes the careful way), where the upsert would keep one of the rows and
        drop the other silently. UNIQUE, not PRIMARY KEY: a record whose external key is empty must reach the key
        step (`ddl.place_keys`), which removes its stale row with a dead letter. The key's index costs little next to the upsert: 100,000 rows of 18 columns loaded
        through staging into a table holding them took 1.50 s with it and 1.47 s without (medians of 6, the
        2-core machine of docs/baselines.md), within the run-to-run spread."""
        spec = self.t.spec
        await conn.execute(ddl.create_staging(spec, self._staging))
        await conn.execute(f"ALTER TABLE {ddl.quote_ident(self._staging)} ADD CONSTRAINT {_STAGED_KEY} UNIQUE"
                           f" ({ddl.quote_ident(spec.key)})")
        return self._staging

    @property
    def _staging(self) -> str:
        return f"_stage_{self.t.spec.name}"[:63]

    async def _load(self, conn: asyncpg.Connection, job_id: str, mode: str, source: AsyncIterable[bytes] | bytes) -> int:
        """Load CSV rows into the target: COPY (`copy`), or COPY into staging and the keyed upsert (`upsert`)."""
        if mode == "copy":
            rows = await self._copy(conn, self.t.spec.name, source)
        else:
            await self._create_staging(conn)
            rows = await self._copy(conn, self._staging, source)
            await self._upsert_staged(conn)
            await self._record_keys(conn, job_id)
        await self._remove_deleted(conn)
        return rows

    async def _record_keys(self, conn: asyncpg.Connection, job_id: str) -> None:
        """The staged page's keys, into the job's extract key set (`ddl.record_extract_keys`): an upsert-mode page
        only, since only such a job removes rows afterwards (a `copy` job filled an empty table)."""
        await conn.execute(ddl.record_extract_keys(self.t.spec, self._staging), self.t.spec.object, job_id)

    async def _upsert_staged(self, conn: asyncpg.Connection) -> None:
        await conn.execute(ddl.upsert_from_staging(self.t.spec, self._staging, self.t.version_column))

    async def _remove_deleted(self, conn: asyncpg.Connection) -> None:
        if self.t.hard_deletes and self.t.has_isdeleted:
            await conn.execute(f"DELETE FROM {ddl.qualified(self.t.spec)} WHERE {ddl.quote_ident('isdeleted')}")

    @mapped
    async def load_page(
        self, job_id: str, locator: str, mode: str, chunks: AsyncIterable[bytes]
    ) -> int:
        """COPY one page's CSV (header line included) and record the page, in one transaction.

        Raises RejectedDataError when the data does not fit (nothing is committed), DatabaseUnavailableError
        on a connection problem. Not safe to call twice for the same page: the page record is unique.
        """
        async with self.pool.acquire() as conn, leases.transaction(conn):
            await self._mark(conn, "backfill" if mode == "copy" else "resync")
            rows = await self._load(conn, job_id, mode, chunks)
            await state.record_page(conn, self.t.spec.object, job_id, locator, rows, 0)
        return rows

    @mapped
    async def load_checked(
        self, job_id: str, locator: str, mode: str, rows: CheckedRows, dead: list[DeadLetter]
    ) -> tuple[int, int]:
        """The careful path: load the rows that passed the checks in Python, dead-letter the ones Postgres still
        refuses, and record the page with every dead letter (`dead`: those of the Python checks), in ONE
        transaction. Returns (rows loaded, dead letters).

        1. Keys. An extract that holds a key twice is inconsistent: the first row with the key loads, every later
           one is a dead letter; in `copy` mode a key already in the table (from an earlier page of the same
           extract) is one too. Postgres finds them by query in a table of the page's keys rather than by
           refusing inserts: each unique violation inside a savepoint holds a lock until the transaction ends
           (seen on PostgreSQL 15), and thousands of them (a key field that is not unique) would exhaust the
           lock table.
        2. Values. The other rows are COPied in one savepoint (into the table, or in `upsert` mode into staging);
           when Postgres refuses them, each half in its own savepoint, and so on down to single rows: a row
           refused alone is a dead letter with Postgres's reason, the rest loads. A few bad rows cost about
           log2(page rows) small COPYs each, a page of bad rows at most twice as many COPYs as rows. Each attempt
           reads its rows again from `rows` (a file), never from memory.
        3. `upsert` mode: the staged rows go through the keyed upsert in one statement. Should the table refuse
           it (a constraint of its own, keys two records swapped), the rows are bisected again, each attempt
           staged and upserted on its own.
        """
        async with self.pool.acquire() as conn, leases.transaction(conn):
            await self._mark(conn, "backfill" if mode == "copy" else "resync")
            letters = _Letters(conn)
            await letters.add_all(dead)
            skip = await self._held_keys(conn, mode, rows, letters)
            if mode == "copy":
                loaded = await self._bisect(conn, rows, 0, rows.count, skip, letters, self._copy_into_table)
            else:
                await self._create_staging(conn)
                loaded = await self._bisect(conn, rows, 0, rows.count, skip, letters, self._copy_into_staging)
                try:
                    async with conn.transaction():
                        await self._upsert_staged(conn)
                        await self._record_keys(conn, job_id)
                except Exception as exc:
                    if error_kind(exc) is not RejectedDataError:
                        raise
                    skip = array("q", sorted([*skip, *letters.refused_at]))
                    loaded = await self._bisect(conn, rows, 0, rows.count, skip, letters,
                                                lambda c, source: self._stage_and_upsert(c, source, job_id))
            await self._remove_deleted(conn)
            await letters.flush()
            await state.record_page(conn, self.t.spec.object, job_id, locator, loaded, letters.count)
        return loaded, letters.count

    async def _copy_into_table(self, conn: asyncpg.Connection, source: AsyncIterator[bytes]) -> int:
        return await self._copy(conn, self.t.spec.name, source)

    async def _copy_into_staging(self, conn: asyncpg.Connection, source: AsyncIterator[bytes]) -> int:
        return await self._copy(conn, self._staging, source)

    async def _stage_and_upsert(self, conn: asyncpg.Connection, source: AsyncIterator[bytes], job_id: str) -> int:
        await conn.execute(f"TRUNCATE {ddl.quote_ident(self._staging)}")
        rows = await self._copy(conn, self._staging, source)
        await self._upsert_staged(conn)
        await self._record_keys(conn, job_id)
        return rows

    async def _held_keys(self, conn: asyncpg.Connection, mode: str, rows: CheckedRows, letters: _Letters) -> array:
        """Step 1 of `load_checked`: dead-letter the rows whose key an earlier row holds (in this page, or in
        `copy` mode in the table). Returns their indexes, sorted."""
        spec = self.t.spec
        key_column = spec.column(spec.key)
        await conn.execute(f"CREATE TEMP TABLE {_PAGE_KEYS} (k text, n bigint) ON COMMIT DROP")
        await conn.copy_to_table(_PAGE_KEYS, source=rows.key_chunks(), columns=["k", "n"], format="csv")
        await conn.execute(f"ANALYZE {_PAGE_KEYS}")  # its size, for the plan of the join with the table
        queries = [f"SELECT n, k, first FROM (SELECT n, k, first_value(n) OVER (PARTITION BY k ORDER BY n) AS first"
                   f" FROM {_PAGE_KEYS}) q WHERE n <> first"]
        if mode == "copy" and (key_column.pg_type == "text" or key_column.pg_type.startswith("varchar")):
            # keys already in the table, compared as text (only when the key's type is text-like, where text
            # equality is the key's equality)
            queries.append(f"SELECT p.n, p.k, NULL::bigint FROM {_PAGE_KEYS} p "
                           f"JOIN {ddl.qualified(spec)} t ON t.{ddl.quote_ident(spec.key)} = p.k")
        await conn.execute(f"CREATE TEMP TABLE {_HELD} ON COMMIT DROP AS SELECT DISTINCT ON (n) n, k, first FROM ("
                           + " UNION ALL ".join(queries) + ") u ORDER BY n, first NULLS FIRST")
        await conn.execute(f"CREATE INDEX ON {_HELD} (n)")
        skip = array("q")
        while True:  # in batches: a page of held keys is never held in memory
            batch = await conn.fetch(f"SELECT n, k, first FROM {_HELD} WHERE n > $1 ORDER BY n LIMIT {_BATCH}",
                                     skip[-1] if skip else -1)
            if not batch:
                return skip
            for r in batch:
                skip.append(r["n"])
                where = ("is in the table already, from an earlier page of this extract" if r["first"] is None
                         else "is held by an earlier row of this page")
                await letters.add(rows.refused(r["n"], f"duplicate key: {key_column.field} {r['k']!r} {where} (an "
                                                       "extract holds each key once: the first row with it loads, "
                                                       "the later ones are dead letters)"))

    async def _bisect(self, conn: asyncpg.Connection, rows: CheckedRows, start: int, stop: int, skip: array,
                      letters: _Letters, attempt: Callable[[asyncpg.Connection, AsyncIterator[bytes]], Awaitable[int]],
                      ) -> int:
        """Steps 2 and 3 of `load_checked`: rows [start, stop) but those in `skip`, through `attempt` in a
        savepoint; when Postgres refuses them, each half on its own. Returns the rows loaded."""
        if stop - start <= bisect_left(skip, stop) - bisect_left(skip, start):
            return 0  # nothing left to load here
        try:
            async with conn.transaction():  # nested: a savepoint, so a refusal undoes only this attempt
                return await attempt(conn, rows.chunks(start, stop, skip))
        except Exception as exc:
            if error_kind(exc) is not RejectedDataError:
                raise
            if stop - start == 1:
                await letters.add(rows.refused(start, _refusal(exc)), start)
                return 0
        middle = (start + stop) // 2
        return (await self._bisect(conn, rows, start, middle, skip, letters, attempt)
                + await self._bisect(conn, rows, middle, stop, skip, letters, attempt))


class _Letters:
    """The dead letters of one careful page, written in its transaction a batch at a time (never a page of them
    in memory), with the indexes of the rows Postgres refused."""

    def __init__(self, conn: asyncpg.Connection):
        self.conn, self.pending, self.count, self.refused_at = conn, [], 0, array("q")

    async def add(self, letter: DeadLetter, refused_at: int | None = None) -> None:
        self.pending.append(letter)
        self.count += 1
        if refused_at is not None:
            self.refused_at.append(refused_at)
        if len(self.pending) >= _BATCH:
            await self.flush()

    async def add_all(self, letters: list[DeadLetter]) -> None:
        for letter in letters:
            await self.add(letter)

    async def flush(self) -> None:
        """Only between attempts: a savepoint rolled back would take the letters with it."""
        await state.add_dead_letters(self.conn, self.pending)
        self.pending = []


def _refusal(exc: Exception) -> str:
    """Postgres's reason for refusing one row, with its detail (the value, for a unique violation)."""
    message = (str(exc).splitlines() or [""])[0]
    detail = getattr(exc, "detail", None)
    return f"postgres refused the row: {type(exc).__name__}: {message}" + (f" ({detail})" if detail else "")


async def _once(data: bytes) -> AsyncIterator[bytes]:
    yield data


class DeltaSink(PageSink):
    """A polled object's large delta read with a Bulk job, and its key reconciliation (pipeline/poll.py)."""

    @mapped
    async def load_delta_page(self, chunks: AsyncIterable[bytes], key_column: str,
                              final: Callable[[tuple | None], Checkpoint] | None) -> tuple[int, tuple | None]:
        """One result page of a delta job: COPY into staging, the newest (key, Id) it holds, the keyed upsert with
        the version guard (a row newer than the page's stays), in one transaction; with `final` (the last page),
        the position `final(newest)` commits with it. Returns (rows, newest (datetime, Id) or None)."""
        q = ddl.quote_ident
        async with self.pool.acquire() as conn, leases.transaction(conn):
            await self._mark(conn, "poll")
            await self._create_staging(conn)
            rows = await self._copy(conn, self._staging, chunks)
            newest = await conn.fetchrow(f"SELECT {q(key_column)} AS k, \"id\" FROM {q(self._staging)} "
                                         f"WHERE {q(key_column)} IS NOT NULL ORDER BY 1 DESC, 2 DESC LIMIT 1")
            await self._upsert_staged(conn)
            await self._remove_deleted(conn)
            newest_key = (newest["k"], newest["id"]) if newest else None
            if final is not None:
                await state.save_checkpoint(conn, final(newest_key), rows)
        return rows, newest_key

    @mapped
    async def reconcile_keys(self, pages: AsyncIterable[AsyncIterable[bytes]], before: dt.datetime,
                             checkpoint: Checkpoint, present: Callable[[list[str]], Awaitable[set[str]]],
                             reconciled_at: dt.datetime) -> tuple[int, int]:
        """Key reconciliation: the Ids of an Id-only extract (CSV pages, header `Id`) against the table. A row whose
        Id the extract lacks is a record the org no longer has when its version is older than `before` (a record
        committed before the extract began, which the extract would hold); a row written since is looked up by Id
        (`present`: the Ids the org still has) and counts as gone only when the org lacks it too, never kept or
        removed for when it was written. Gone rows are marked deleted, or removed with `deletes = "hard"` or
        without IsDeleted, in ONE transaction with `checkpoint` (getDeleted's window moved) and `reconciled_at`.
        Returns (Ids in the extract, rows deleted).

        The extract's pages and `present` are network calls, as slow as Salesforce is: they run before the write
        transaction, each page's COPY a statement of its own into a temporary table of the session, never inside
        a transaction (the service's sessions end a transaction idle for `service.lease_s`: postgres/store.py
        `Store.open`). The write re-reads its conditions, so what it removes is what they say at its commit: the
        rows of this table are written by this unit only, in turn."""
        t, q = ddl.qualified(self.t.spec), ddl.quote_ident
        soft = self.t.has_isdeleted and not self.t.hard_deletes
        async with self.pool.acquire() as conn:
            await conn.execute("DROP TABLE IF EXISTS pg_temp._reconcile_ids; CREATE TEMP TABLE _reconcile_ids (id text)")
            try:
                seen = 0
                async for chunks in pages:
                    seen += _copied(await conn.copy_to_table("_reconcile_ids", source=strip_nul_chunks(chunks),
                                                             columns=["id"], format="csv", header=True))
                await conn.execute("CREATE INDEX ON _reconcile_ids (id); ANALYZE _reconcile_ids")
                unseen = "NOT EXISTS (SELECT 1 FROM _reconcile_ids r WHERE r.id = t.\"id\"::text)"
                live = f" AND NOT t.{q('isdeleted')}" if soft else ""
                recent = [r[0] for r in await conn.fetch(
                    f"SELECT t.\"id\"::text FROM {t} AS t WHERE {unseen} AND t.{q(VERSION_COLUMN)} >= $1{live}",
                    before)]
                gone = sorted(set(recent) - await present(recent)) if recent else []
                where = f"{unseen} AND (t.{q(VERSION_COLUMN)} < $1 OR t.\"id\"::text = ANY($2::text[])){live}"
                if soft:
                    sql = f"UPDATE {t} AS t SET {q('isdeleted')} = true, {q(SYNCED_COLUMN)} = now() WHERE {where}"
                else:
                    sql = f"DELETE FROM {t} AS t WHERE {where}"
                async with leases.transaction(conn):
                    await self._mark(conn, "poll:removed")
                    removed = int((await conn.execute(sql, before, gone)).rsplit(" ", 1)[-1])
                    await state.save_checkpoint(conn, checkpoint, 0)
                    await conn.execute("UPDATE checkpoints SET poll_reconciled_at = $2 WHERE topic = $1",
                                       checkpoint.topic, reconciled_at)
            finally:  # a session that ended took its temporary table with it; the next one drops what is left
                with contextlib.suppress(asyncpg.PostgresError, asyncpg.InterfaceError, OSError):
                    await conn.execute("DROP TABLE IF EXISTS pg_temp._reconcile_ids")
        return seen, removed

    @mapped
    async def reconciled_at(self, topic: str) -> dt.datetime | None:
        """When the last key reconciliation of a polled object began (sql/008_poll_reconcile.sql), else when its
        backfill ended (an extract removes what the org lacks too)."""
        async with self.pool.acquire() as conn:
            return await conn.fetchval(
                "SELECT coalesce(c.poll_reconciled_at, o.backfill_finished_at) FROM objects o"
                " LEFT JOIN checkpoints c ON c.topic = $1 WHERE o.object = $2", topic, self.t.spec.object)

    @mapped
    async def note_poll_key(self, object_name: str, how: str) -> None:
        """What a polled object's rounds read by, after why it is polled (`objects.mode_reason`, shown by
        `status`): `…; polls on (SystemModstamp, Id)`."""
        async with self.pool.acquire() as conn, leases.transaction(conn):
            await conn.execute("UPDATE objects SET mode_reason = split_part(coalesce(mode_reason, ''),"
                               " '; polls on ', 1) || '; polls on ' || $2 WHERE object = $1", object_name, how)
