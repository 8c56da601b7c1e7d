"""Verify one object: extract it again from Salesforce and compare with Postgres, key by key."""

from __future__ import annotations

import structlog

from ..config import Settings
from ..postgres.compare import Diff, Repair
from ..postgres.store import Store
from ..salesforce.bulk import BulkClient
from ..salesforce.client import SalesforceClient
from .schema import history_names, object_table, soql

log = structlog.get_logger(__name__)


async def verify_object(client: SalesforceClient, store: Store, settings: Settings, name: str,
                        repair: bool = False) -> tuple[Diff, Repair | None]:
    """The differences between the table and a fresh extract; with `repair`, also fix them and compare
    again (the second Diff is what remains, e.g. rows the stream changed after the extract)."""
    obj = settings.objects[name]
    describe = await client.describe(name)
    table = object_table(describe, settings.postgres.schema_, obj, history_names(settings, obj))
    spec = table.spec
    if repair:
        await store.page_sink(table).prepare()  # adds columns the table lacks
    extract_started = await store.now()
    bulk = BulkClient(client, poll_max=settings.backfill.poll_max_s)
    job = await bulk.create_query_job(soql(spec), all_rows=True)
    await bulk.wait_for_job(job.id)
    async with store.comparison(spec, hard_deletes=table.hard_deletes) as cmp:
        rows = 0
        async for page in bulk.result_pages(job.id, max_records=settings.backfill.page_size):
            async with bulk.open_page(page) as stream:
                rows += await cmp.load(stream.chunks())
        diff = await cmp.diff()
        fixed = None
        if repair and not diff.equal:
            fixed = await cmp.repair(table.version_column, extract_started, job.created_date)
            log.info("verify.repaired", object=name, written=fixed.written, deleted=fixed.deleted,
                     kept_newer=fixed.kept_newer)
            diff = await cmp.diff()
    log.info("verify.done", object=name, rows=rows, missing=diff.missing, extra=diff.extra, different=diff.different,
             unkeyed=diff.unkeyed)
    return diff, fixed


async def verify_history(client: SalesforceClient, store: Store, settings: Settings, name: str) -> dict | None:
    """`replicator verify --history` of one object: {"current": Ids whose current version is not the table's
    row, "intervals": Ids whose versions overlap or leave a hole while the record lives} (examples, empty when
    equal); None when the object keeps no history."""
    obj = settings.objects[name]
    names = history_names(settings, obj)
    if names is None:
        return None
    table = object_table(await client.describe(name), settings.postgres.schema_, obj, names)
    await store.page_sink(table).prepare()  # as verify_object: columns added, validity columns renamed
    found = await store.check_history(table)
    log.info("verify.history", object=name, **found)
    return found

