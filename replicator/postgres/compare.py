"""Row-by-row comparison of a target table with a fresh extract, done in SQL on one connection."""

from __future__ import annotations

from collections.abc import AsyncIterable
from dataclasses import dataclass, field

import asyncpg

from ..model import TableSpec
from . import ddl
from .sink import _strip_nul

_STAGING = "_verify_extract"


@dataclass(slots=True)
class Diff:
    missing: int = 0  # in Salesforce, not in Postgres
    extra: int = 0  # in Postgres, not in Salesforce
    different: int = 0  # same key, some column differs
    examples: dict[str, list[str]] = field(default_factory=dict)
    missing_columns: list[str] = field(default_factory=list)  # fields Salesforce has and the table lacks

    @property
    def equal(self) -> bool:
        return self.missing == self.extra == self.different == 0 and not self.missing_columns


class Comparison:
    """Holds one connection: a temporary table receives the extract, then three queries compare."""

    def __init__(self, conn: asyncpg.Connection, spec: TableSpec, hard_deletes: bool):
        self.conn = conn
        self.spec = spec
        self.hard_deletes = hard_deletes

    async def start(self) -> None:
        await self.conn.execute(f"DROP TABLE IF EXISTS {ddl.quote_ident(_STAGING)}")
        await self.conn.execute(ddl.create_staging(self.spec, _STAGING).replace(" ON COMMIT DROP", ""))

    async def load(self, chunks: AsyncIterable[bytes]) -> int:
        status = await self.conn.copy_to_table(
            _STAGING,
            source=_strip_nul(chunks),
            columns=[c.name for c in self.spec.columns],
            format="csv",
            header=True,
            force_null=[c.name for c in self.spec.columns if c.nullable],
        )
        return int(status.rsplit(" ", 1)[-1])

    async def diff(self, limit: int = 5) -> Diff:
        t = ddl.qualified(self.spec)
        s = ddl.quote_ident(_STAGING)
        k = ddl.quote_ident(self.spec.key)
        src = f"(SELECT * FROM {s}"
        if self.hard_deletes and self.spec.column("isdeleted"):
            src += f" WHERE NOT {ddl.quote_ident('isdeleted')}"
        src += ")"
        present = {
            r[0] for r in await self.conn.fetch(
                "SELECT column_name FROM information_schema.columns WHERE table_schema = $1 AND table_name = $2",
                self.spec.schema, self.spec.name)
        }
        out = Diff(missing_columns=[c.name for c in self.spec.columns if c.name not in present])
        cols = [ddl.quote_ident(c.name) for c in self.spec.columns if c.name in present]
        changed = " OR ".join(f"a.{c} IS DISTINCT FROM b.{c}" for c in cols)
        queries = {
            "missing": f"SELECT b.{k} FROM {src} b LEFT JOIN {t} a USING ({k}) WHERE a.{k} IS NULL",
            "extra": f"SELECT a.{k} FROM {t} a LEFT JOIN {src} b USING ({k}) WHERE b.{k} IS NULL",
            "different": f"SELECT a.{k} FROM {t} a JOIN {src} b USING ({k}) WHERE {changed}",
        }
        for kind, sql in queries.items():
            count = await self.conn.fetchval(f"SELECT count(*) FROM ({sql}) q")
            setattr(out, kind, count)
            if count:
                rows = await self.conn.fetch(f"{sql} ORDER BY 1 LIMIT {int(limit)}")
                out.examples[kind] = [r[0] for r in rows]
        await self.conn.execute(f"DROP TABLE IF EXISTS {s}")
        return out
