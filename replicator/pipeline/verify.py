"""Verify one object: extract it again from Salesforce and compare with Postgres, key by key."""

from __future__ import annotations

import structlog

from ..config import Settings
from ..postgres.compare import Comparison, Diff
from ..salesforce.bulk import BulkClient
from ..salesforce.client import SalesforceClient
from .schema import object_table, soql

log = structlog.get_logger(__name__)


async def verify_object(client: SalesforceClient, pool, settings: Settings, name: str) -> Diff:
    obj = settings.objects[name]
    describe = await client.describe(name)
    table = object_table(describe, settings.postgres.schema_, obj)
    spec = table.spec
    bulk = BulkClient(client, poll_max=settings.backfill.poll_max_s)
    job = await bulk.create_query_job(soql(spec), all_rows=True)
    await bulk.wait_for_job(job.id)
    async with pool.acquire() as conn:
        cmp = Comparison(conn, spec, hard_deletes=table.hard_deletes)
        await cmp.start()
        rows = 0
        async for page in bulk.result_pages(job.id, max_records=settings.backfill.page_size):
            async with bulk.open_page(page) as stream:
                rows += await cmp.load(stream.chunks())
        diff = await cmp.diff()
    log.info("verify.done", object=name, rows=rows, missing=diff.missing, extra=diff.extra, different=diff.different)
    return diff
