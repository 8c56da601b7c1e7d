"""Row-by-row comparison of a target table with a fresh extract, done in SQL on one connection."""

from __future__ import annotations

from collections.abc import AsyncIterable
from dataclasses import dataclass, field

import asyncpg

from ..model import SYNCED_COLUMN, VERSION_COLUMN, TableSpec
from . import ddl
from .errors import mapped
from .sink import strip_nul_chunks

_STAGING = "_verify_extract"
_REPAIR = "_verify_repair"


@dataclass(slots=True)
class Diff:
    missing: int = 0  # in Salesforce, not in Postgres
    extra: int = 0  # in Postgres, not in Salesforce
    different: int = 0  # same key, some column differs
    unkeyed: int = 0  # extract rows without a key (its field is empty in Salesforce): they cannot be in the table
    examples: dict[str, list[str]] = field(default_factory=dict)
    missing_columns: list[str] = field(default_factory=list)  # fields Salesforce has and the table lacks

    @property
    def equal(self) -> bool:
        """Every row the table can hold matches. Unkeyed records are not differences: no row can hold them (the
        stream removed their rows with a dead letter each, docs/tables.md)."""
        return self.missing == self.extra == self.different == 0 and not self.missing_columns


@dataclass(slots=True)
class Repair:
    written: int = 0  # missing or different rows written from the extract
    deleted: int = 0  # rows Salesforce does not have, removed
    kept_newer: int = 0  # rows changed after the extract (the stream is ahead of it): left as they are


class Comparison:
    """Holds one connection: a temporary table receives the extract, then three queries compare."""

    def __init__(self, conn: asyncpg.Connection, spec: TableSpec, hard_deletes: bool):
        self.conn = conn
        self.spec = spec
        self.hard_deletes = hard_deletes

    @mapped
    async def start(self) -> None:
        await self.conn.execute(f"DROP TABLE IF EXISTS {ddl.quote_ident(_STAGING)}")
        await self.conn.execute(ddl.create_staging(self.spec, _STAGING).replace(" ON COMMIT DROP", ""))

    @mapped
    async def load(self, chunks: AsyncIterable[bytes]) -> int:
        status = await self.conn.copy_to_table(
            _STAGING,
            source=strip_nul_chunks(chunks),
            columns=[c.name for c in self.spec.columns],
            format="csv",
            header=True,
            # the key too: Salesforce has no empty text, so an empty key is a record without one ("unkeyed")
            force_null=[c.name for c in self.spec.columns if c.nullable or c.name == self.spec.key],
        )
        return int(status.rsplit(" ", 1)[-1])

    @property
    def _soft(self) -> bool:
        return not self.hard_deletes and self.spec.column("isdeleted") is not None

    def _live(self, alias: str) -> str:
        """With soft deletes, a deleted row the org no longer has (purged from its Recycle Bin) is history the copy
        keeps, not an extra row: only live rows count."""
        return f" AND NOT {alias}.{ddl.quote_ident('isdeleted')}" if self._soft else ""

    def _source(self) -> str:
        src = f"(SELECT * FROM {ddl.quote_ident(_STAGING)}"
        if self.hard_deletes and self.spec.column("isdeleted"):
            src += f" WHERE NOT {ddl.quote_ident('isdeleted')}"
        return src + ")"

    async def _changed(self) -> tuple[list[str], str]:
        """Columns present in the table, and the SQL test of a row `a` differing from its extract `b`."""
        present = {
            r[0] for r in await self.conn.fetch(
                "SELECT column_name FROM information_schema.columns WHERE table_schema = $1 AND table_name = $2",
                self.spec.schema, self.spec.name)
        }
        cols = [ddl.quote_ident(c.name) for c in self.spec.columns if c.name in present]
        return [c.name for c in self.spec.columns if c.name not in present], \
            " OR ".join(f"a.{c} IS DISTINCT FROM b.{c}" for c in cols)

    @mapped
    async def diff(self, limit: int = 5) -> Diff:
        """Counts and examples of missing, extra and different rows. The extract stays loaded (for repair)
        until `close()`."""
        t = ddl.qualified(self.spec)
        k = ddl.quote_ident(self.spec.key)
        src = self._source()
        missing_columns, changed = await self._changed()
        out = Diff(missing_columns=missing_columns)
        queries = {
            "missing": f"SELECT b.{k} FROM {src} b LEFT JOIN {t} a USING ({k}) WHERE a.{k} IS NULL AND b.{k} IS NOT NULL",
            "unkeyed": f'SELECT b."id" FROM {src} b WHERE b.{k} IS NULL',  # named by Id: they have no key
            "extra": f"SELECT a.{k} FROM {t} a LEFT JOIN {src} b USING ({k}) WHERE b.{k} IS NULL{self._live('a')}",
            "different": f"SELECT a.{k} FROM {t} a JOIN {src} b USING ({k}) WHERE {changed}",
        }
        for kind, sql in queries.items():
            count = await self.conn.fetchval(f"SELECT count(*) FROM ({sql}) q")
            setattr(out, kind, count)
            if count:
                rows = await self.conn.fetch(f"{sql} ORDER BY 1 LIMIT {int(limit)}")
                out.examples[kind] = [r[0] for r in rows]
        return out

    @mapped
    async def repair(self, version_column: str | None, extract_started, extract_created_in_org=None) -> Repair:
        """Make the table equal to the extract, in one transaction, without undoing newer work: missing and
        different rows are written through the keyed upsert with its version guard (a row the stream changed
        after the extract keeps its newer values); rows the org does not have are deleted unless they were
        written after the extract began. Call `diff()` again afterwards to confirm.

        `extract_created_in_org`, the extract job's createdDate (Salesforce's clock): with soft deletes, a row marked
        deleted whose version is older (by a whole second) than that, while the extract holds its record live, is
        stale whatever the versions say: the extract began after the row's last change, so the org undeleted the
        record since or the row was marked wrongly (a resync that removed rows by write time did so to rows the
        stream wrote from a late commit, whose version, a commit time, is after the SystemModstamp the extract
        holds). Such a row is replaced by the extract's."""
        t = ddl.qualified(self.spec)
        k = ddl.quote_ident(self.spec.key)
        src = self._source()
        _, changed = await self._changed()
        out = Repair()
        async with self.conn.transaction():
            # An unkeyed record only matters when the table still has its row under an old key (the key step
            # removes it with a dead letter); otherwise it would be dead-lettered again at every repair.
            unkeyed = f'OR (b.{k} IS NULL AND EXISTS (SELECT 1 FROM {t} r WHERE r."id" = b."id"))' \
                if ddl.keyed_by_external_id(self.spec) else ""
            await self.conn.execute(
                f"CREATE TEMP TABLE {ddl.quote_ident(_REPAIR)} ON COMMIT DROP AS SELECT b.* FROM {src} b "
                f"LEFT JOIN {t} a USING ({k}) WHERE (b.{k} IS NOT NULL AND (a.{k} IS NULL OR {changed})) {unkeyed}")
            wanted = await self.conn.fetchval(f"SELECT count(*) FROM {ddl.quote_ident(_REPAIR)}")
            if self._soft and extract_created_in_org is not None:
                deleted = ddl.quote_ident("isdeleted")
                await self.conn.execute(
                    f"DELETE FROM {t} a USING {ddl.quote_ident(_REPAIR)} b WHERE a.{k} = b.{k} AND a.{deleted} "
                    f"AND NOT b.{deleted} AND a.{ddl.quote_ident(VERSION_COLUMN)} < date_trunc('second', $1::timestamptz)",
                    extract_created_in_org)
            status = ""
            for statement in ddl.upsert_from_staging(self.spec, _REPAIR, version_column, wins_ties=False).split(";\n"):
                status = await self.conn.execute(statement)
            out.written = int(status.rsplit(" ", 1)[-1])
            out.kept_newer = wanted - out.written
            gone = (f"NOT EXISTS (SELECT 1 FROM {src} b WHERE b.{k} = a.{k}) "
                    f"AND a.{ddl.quote_ident(SYNCED_COLUMN)} < $1{self._live('a')}")
            if self._soft:  # soft deletes keep the row of a record the org no longer has, marked deleted
                status = await self.conn.execute(
                    f"UPDATE {t} a SET {ddl.quote_ident('isdeleted')} = true, "
                    f"{ddl.quote_ident(SYNCED_COLUMN)} = now() WHERE {gone}", extract_started)
            else:
                status = await self.conn.execute(f"DELETE FROM {t} a WHERE {gone}", extract_started)
            out.deleted = int(status.rsplit(" ", 1)[-1])
        return out

    @mapped
    async def close(self) -> None:
        await self.conn.execute(f"DROP TABLE IF EXISTS {ddl.quote_ident(_STAGING)}")
