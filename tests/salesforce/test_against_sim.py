"""The Salesforce client against the simulator over real HTTPS (ca_file): login, describe, a bulk job end to end."""

from __future__ import annotations

import asyncio
import csv
import io

import pytest

from replicator.model import TerminalError
from replicator.salesforce import BulkClient
from replicator.sim.server import SimulatorThread

RECORDS = 300


@pytest.fixture(scope="module")
def sim():
    with SimulatorThread(records=RECORDS, seed=11, page_size=100) as running:
        yield running.info


def csv_rows(data: bytes) -> list[list[str]]:
    return list(csv.reader(io.StringIO(data.decode("utf-8"), newline="")))


async def test_login_and_describe_over_https(sf, sim):
    account = await sf.describe("Account")
    assert sf.instance_url == sim["instance_url"]
    assert account.name == "Account" and account.field("Id").type == "id"
    assert sf.api_usage is not None and sf.api_usage[0] >= 1


async def test_expired_session_is_refreshed_transparently(sf):
    await sf.describe_global()
    await sf.request("POST", "/__sim/tokens/expire")
    assert [o["name"] for o in await sf.describe_global()]
    assert sf.tokens.logins == 2


async def test_bulk_job_end_to_end(sf, sim):
    bulk = BulkClient(sf, poll_initial=0.02, poll_max=0.2)
    job = await bulk.create_query_job("SELECT Id, Name FROM Account")
    assert job.id.startswith("750") and job.operation == "queryAll"
    done = await bulk.wait_for_job(job.id)
    assert done.state == "JobComplete" and done.number_records_processed > 0

    pages = [p async for p in bulk.result_pages(job.id, max_records=40)]
    assert len(pages) >= 2 and len({p.locator for p in pages}) == len(pages)

    async def download(page):
        async with bulk.open_page(page) as stream:
            data = b"".join([c async for c in stream.chunks()])
            return stream.number_of_records, stream.content_encoding, csv_rows(data)

    results = await asyncio.gather(*(download(p) for p in pages))
    ids = []
    for count, _encoding, rows in results:
        assert rows[0] == ["Id", "Name"]  # every page is a standalone CSV with its header
        assert len(rows) - 1 == count
        ids += [r[0] for r in rows[1:]]
    assert any(enc == "gzip" for _, enc, _ in results)
    assert len(ids) == len(set(ids)) == done.number_records_processed

    sequential = []
    async for page in bulk.pages_sequential(job.id, max_records=70):
        async with bulk.open_page(page) as stream:
            sequential += [r[0] for r in csv_rows(b"".join([c async for c in stream.chunks()]))[1:]]
    assert sorted(sequential) == sorted(ids)

    await bulk.delete_job(job.id)
    with pytest.raises(TerminalError) as info:
        await bulk.get_job(job.id)
    assert info.value.code == "NOT_FOUND"
