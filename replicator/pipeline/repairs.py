"""Derivation repairs: a release that fixes how a column is derived repairs the rows earlier releases derived wrong
(docs/upgrading.md "Repairs").

A fix in how the stream derives a column (a computed name, a text field sent as a diff, a SystemModstamp) changes
only the rows written after it: a row an earlier release wrote keeps its wrong value until the record changes in a
way that rewrites that column, which may be never (`replicator verify` then reports it different; `refresh` does
not read these columns; `verify --repair`, a whole-table extract an operator has to know to run, rewrites most such
rows but keeps a SystemModstamp written late, which looks newer than the org's). Each entry of
`REPAIRS` names such a fix, the columns it affects and how to find rows that may hold the old derivation; the repair
compares those columns with the org, with one narrow Bulk API 2.0 queryAll extract of Id plus the columns
(pipeline/refresh.py, postgres/refresh.py), and writes the rows whose values differ.

Where and when: `repair_object` runs in the object's unit, under its lease and fence (an object of its own:
app/object_unit.py; a channel's member: app/channel_unit.py), after its extract and before its stream or poll rounds
start, so no change of this process races with it and two replicas never both run it (the UPDATE checks the fence
last in its transaction: postgres/leases.py). Once per object and repair: each is recorded in
`replicator.repairs` (sql/017_repairs.sql) in the transaction of the UPDATE that did it, or as not needed when
- the database was created by a release that had the fix (its migration `since` applied with 001);
- the object's table was last loaded empty (a first backfill) after the migration `since` was applied;
- the object has no column the repair affects, or no row matches the repair's `suspect` predicate.
A repair killed midway records nothing and runs again at the next start. Pending repairs of one object share one
extract (the union of their columns).

Rows the extract holds newer values for than the row (the record changed after the stream's checkpoint, its
events not applied yet) take the org's values now; the stream then applies those events over them as it applies
them over a refresh (postgres/refresh.py says why that ends equal). A column `lower_only` (a timestamp an earlier
release wrote too late) is only ever lowered, never moved ahead of changes still to apply.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

import structlog

from ..config import Settings
from ..model import ObjectDescribe, TableInfo
from ..postgres import ddl
from ..postgres import repairs as pg_repairs
from ..postgres.store import Store
from ..retry import retry_transient
from ..salesforce.bulk import BulkClient
from ..salesforce.client import SalesforceClient
from .schema import history_names, object_table

log = structlog.get_logger(__name__)

# The diff header change events use for a large text value sent as a diff (salesforce/diffs.py): "--- \n+++ <sha>".
_DIFF_HEAD = "'--- ' || chr(10) || '+++ '"


def computed_name_columns(describe: ObjectDescribe, table: TableInfo) -> list[str]:
    """A compound name the org computes from components (Contact.Name from Salutation, FirstName, MiddleName,
    LastName, Suffix) that is a column itself; an address parent is not a column."""
    parents = {f.compound_field_name for f in describe.fields if f.compound_field_name}
    return [c.name for c in table.spec.columns if c.field in parents]


def long_text_columns(describe: ObjectDescribe, table: TableInfo) -> list[str]:
    """Text area columns, those change events may carry as a diff (diffFields) instead of the value."""
    text = {f.name for f in describe.fields if f.type == "textarea" and not f.calculated}
    return [c.name for c in table.spec.columns if c.field in text and c.name not in ("id", table.spec.key)]


def modstamp_column(describe: ObjectDescribe, table: TableInfo) -> list[str]:
    return ["systemmodstamp"] if table.spec.column("systemmodstamp") is not None else []


def diff_shaped(table: TableInfo, columns: list[str]) -> str:
    """Rows where one of `columns` holds a diff rather than a value."""
    return " OR ".join(f"left({ddl.quote_ident(c)}, 9) = {_DIFF_HEAD}" for c in columns)


def streamed(table: TableInfo, columns: list[str]) -> str:
    """Rows a stream wrote (a backfill's rows took SystemModstamp from the extract)."""
    return f"{ddl.quote_ident(ddl.STREAM_VERSION_COLUMN)} IS NOT NULL"


@dataclass(frozen=True, slots=True)
class Repair:
    id: str
    fixed_by: str  # the commit that fixed the derivation
    since: int  # a migration every release with the fix has: rows written only after it need no repair
    what: str  # what the earlier releases wrote (docs/upgrading.md)
    columns: Callable[[ObjectDescribe, TableInfo], list[str]]  # the columns affected; none: nothing to repair
    suspect: Callable[[TableInfo, list[str]], str] | None = None  # SQL: rows that may be wrong; None: any row
    lower_only: bool = False  # the org's value replaces the row's only when lower (postgres/refresh.py)


REPAIRS: tuple[Repair, ...] = (
    Repair("computed-name", "942635d", 5,
           "a compound name the org computes (Contact.Name) left as the last full record had it when a change event "
           "changed its components (FirstName, Salutation, ...), and NULL for records created by an event",
           computed_name_columns),
    Repair("text-diffs", "571ebd5", 5,
           "a large text value an UPDATE event sent as a diff (diffFields) written as the diff text "
           "('--- \\n+++ <sha256>\\n@@ ...') instead of the value",
           long_text_columns, suspect=diff_shaped),
    Repair("stream-modstamp", "72549bd", 17,
           "SystemModstamp of a streamed change taken from the event's commit time, not the record's "
           "LastModifiedDate (2e3d3d3) or, for a delete, its SystemModstamp (72549bd): a second or more late when "
           "the transaction committed in a later second than its save",
           modstamp_column, suspect=streamed, lower_only=True),
)


@dataclass(slots=True)
class RepairResult:
    object: str
    repaired: list[str] = field(default_factory=list)  # repair ids done now
    not_needed: dict[str, str] = field(default_factory=dict)  # repair id: why
    columns: list[str] = field(default_factory=list)
    job_id: str | None = None
    rows_compared: int = 0
    rows_changed: int = 0
    rows_skipped: int = 0


async def repair_object(client: SalesforceClient, store: Store, settings: Settings, name: str,
                        registry: tuple[Repair, ...] = REPAIRS) -> RepairResult:
    """Settle every repair of `registry` the object has not settled (see the module docstring). Run it under the
    object's unit, after its extract and before its stream or poll rounds."""
    result = RepairResult(name)
    settled = await store.repairs_settled(name)
    pending = [r for r in registry if r.id not in settled]
    if not pending:
        return result
    work: list[tuple[Repair, list[str]]] = []
    describe: ObjectDescribe | None = None
    table: TableInfo | None = None
    for repair in pending:
        if await store.created_with(repair.since):
            result.not_needed[repair.id] = f"the database was created by a release with the fix (migration {repair.since})"
            continue
        if await store.first_loaded_after(name, repair.since):
            result.not_needed[repair.id] = f"the table was loaded empty after migration {repair.since}"
            continue
        if describe is None or table is None:
            obj = settings.objects[name]
            describe = await client.describe(name)
            table = object_table(describe, settings.postgres.schema_, obj, history_names(settings, obj))
        columns = repair.columns(describe, table)
        if not columns:
            result.not_needed[repair.id] = "no column it affects"
        elif repair.suspect is not None and not await store.any_row(table, repair.suspect(table, columns)):
            result.not_needed[repair.id] = "no row an earlier release could have derived wrong"
        else:
            work.append((repair, columns))
    if result.not_needed:
        await store.record_repairs_not_needed(name, result.not_needed)
        log.info("repair.not_needed", object=name, repairs=result.not_needed)
    if work:
        assert table is not None
        await _refresh(client, store, settings, table, work, result)
    return result


async def _refresh(client: SalesforceClient, store: Store, settings: Settings, table: TableInfo,
                   work: list[tuple[Repair, list[str]]], result: RepairResult) -> None:
    """One extract of Id plus every pending repair's columns, the differing rows written and the repairs recorded
    in one transaction."""
    began = time.monotonic()
    name, spec = result.object, table.spec
    wanted = {c for _, columns in work for c in columns}
    result.columns = [c.name for c in spec.columns if c.name in wanted]  # column order, each once
    lower_only = frozenset(c for repair, columns in work if repair.lower_only for c in columns)
    ids = [repair.id for repair, _ in work]
    log.info("repair.start", object=name, repairs=ids, columns=result.columns)
    await store.page_sink(table).prepare()  # the table has every column it compares
    started_at = await store.now()  # before the job: rows written from now on are left alone
    bulk = BulkClient(client, poll_max=settings.backfill.poll_max_s)
    fields = [spec.column(c).field for c in result.columns]
    job = await bulk.create_query_job(f"SELECT Id, {', '.join(fields)} FROM {name}", all_rows=True)
    result.job_id = job.id
    await bulk.wait_for_job(job.id)

    async def recorder(conn, compared: int, changed: int, skipped: int) -> None:
        await pg_repairs.repaired(conn, name, {r.id: columns for r, columns in work}, job.id, compared, changed,
                                  skipped)

    async with store.refresh(table, result.columns, lower_only) as staged:
        async for page in bulk.result_pages(job.id, max_records=settings.backfill.page_size):
            async def load(page=page) -> int:
                async with bulk.open_page(page) as stream:
                    return await staged.load(stream.chunks())

            await retry_transient(load, what=f"{name} repair page {page.locator or 'first'}")
        result.rows_compared, result.rows_changed, result.rows_skipped = await staged.apply(
            started_at, job.id, time.monotonic() - began, recorder)
    result.repaired = ids
    log.info("repair.done", object=name, repairs=ids, columns=result.columns, job_id=job.id,
             rows_compared=result.rows_compared, rows_changed=result.rows_changed, rows_skipped=result.rows_skipped,
             duration_s=round(time.monotonic() - began, 3))
