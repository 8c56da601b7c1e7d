"""Loading backfill pages into a target table: one page, one transaction, with its page record.

Two load modes, chosen when a job starts (README "Backfill"):
- `copy`: the table was empty, so the page's CSV goes straight into `COPY … FROM STDIN (FORMAT csv,
  FORCE_NULL …)` as bytes, never becoming Python objects: the fastest route Postgres has.
- `upsert`: the table already had rows (a resumed job replaced by a new one, a second backfill): COPY into a
  temporary staging table, then one keyed upsert with the version guard.
Either way the page record (`replicator.backfill_pages`, `replicator.objects`) commits with the rows, so a
crash at any instant leaves each page loaded entirely or not at all.

NUL bytes: Salesforce results hold them (docs/salesforce-bulk-rest-oauth.md §1.8), and COPY breaks on them
(docs/baselines.md, "Salesforce-style CSV straight into COPY"). `strip_nul_chunks` removes them from CSV bytes, here at
the COPY because the CSV never becomes Python values on the fast path; every route of Bulk CSV into Postgres uses it:
this sink, the careful path's row checks (pipeline/backfill.py, so a value is checked as COPY will receive it), and
`verify` (postgres/compare.py). Values that do become Python values lose their NULs in salesforce/values.py.
"""

from __future__ import annotations

from collections.abc import AsyncIterable, AsyncIterator

import asyncpg
import structlog

from ..model import DeadLetter, TableInfo
from . import ddl, state
from .errors import mapped

log = structlog.get_logger(__name__)

async def strip_nul_chunks(chunks: AsyncIterable[bytes]) -> AsyncIterator[bytes]:
    """CSV bytes without NUL bytes (see the module docstring). A NUL byte is never part of a multi-byte UTF-8
    character, so removing it from any chunk boundary is safe."""
    async for chunk in chunks:
        yield chunk.replace(b"\x00", b"") if b"\x00" in chunk else chunk


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
            if self.t.hard_deletes and self.t.has_isdeleted:
                await conn.execute(
                    f"CREATE INDEX IF NOT EXISTS {ddl.quote_ident(spec.name + '_deleted')} ON {ddl.qualified(spec)}"
                    f" ({ddl.quote_ident(spec.key)}) WHERE {ddl.quote_ident('isdeleted')}"
                )
            empty = await conn.fetchval(f"SELECT NOT EXISTS (SELECT 1 FROM {ddl.qualified(spec)})")
            await state.register_object(conn, spec.object, spec.schema, spec.name, spec.key, spec.fingerprint)
        return bool(empty)

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

    async def _load(
        self, conn: asyncpg.Connection, mode: str, source: AsyncIterable[bytes] | bytes
    ) -> int:
        spec = self.t.spec
        if mode == "copy":
            rows = await self._copy(conn, spec.name, source)
        else:
            staging = f"_stage_{spec.name}"[:63]
            await conn.execute(ddl.create_staging(spec, staging))
            rows = await self._copy(conn, staging, source)
            await conn.execute(ddl.upsert_from_staging(spec, staging, self.t.version_column))
        if self.t.hard_deletes and self.t.has_isdeleted:
            await conn.execute(f"DELETE FROM {ddl.qualified(spec)} WHERE {ddl.quote_ident('isdeleted')}")
        return rows

    @mapped
    async def load_page(
        self, job_id: str, locator: str, mode: str, chunks: AsyncIterable[bytes]
    ) -> int:
        """COPY one page's CSV (header line included) and record the page, in one transaction.

        Raises RejectedDataError when the data does not fit (nothing is committed), DatabaseUnavailableError
        on a connection problem. Not safe to call twice for the same page: the page record is unique.
        """
        async with self.pool.acquire() as conn, conn.transaction():
            rows = await self._load(conn, mode, chunks)
            await state.record_page(conn, self.t.spec.object, job_id, locator, rows, 0)
        return rows

    @mapped
    async def load_checked(
        self, job_id: str, locator: str, mode: str, csv_chunks: AsyncIterable[bytes], dead: list[DeadLetter]
    ) -> int:
        """The careful path: rows already checked (CSV with header) plus the page's dead letters."""
        async with self.pool.acquire() as conn, conn.transaction():
            rows = await self._load(conn, mode, csv_chunks)
            await state.add_dead_letters(conn, dead)
            await state.record_page(conn, self.t.spec.object, job_id, locator, rows, len(dead))
        return rows


async def _once(data: bytes) -> AsyncIterator[bytes]:
    yield data
