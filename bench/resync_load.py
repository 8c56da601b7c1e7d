"""A resync's load against plain COPY, on the same rows, memory → Postgres (no simulator, no network).

`python -m bench.resync_load [--rows 100000] [--repeat 3] [--changed] [--url postgresql://127.0.0.1:5432/test]`

For each repeat, in a database made for the run and dropped after it:
1. `copy`: a first load of `rows` records (pages of 50,000, the table empty: `load_mode` copy, plain COPY);
2. `resync`: a second job over the same records with the table loaded (`load_mode` upsert: staging, the keyed upsert
   with the version guard), then the removal of the rows the whole extract lacked (`PageSink.remove_unseen`), as
   `Backfill.run` does after an upsert-mode extract, and the backfill's end (`finish_backfill`).
It prints the median of `copy_s / resync_s`: the resync's speed as a fraction of COPY's (issue 18 asks ≥ 0.7).
The rows are Account-shaped (19 fields, ~250 bytes of CSV a row), every one unchanged since the first load: the
resync of a loaded object whose records did not change, its commonest case (a GAP_OVERFLOW, an expired replay id,
an operator's `replicator resync`); with `--changed`, every record is an hour newer with another phone number, the
resync that rewrites every row.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import statistics
import time
import uuid

import asyncpg

from replicator.model import FieldSpec, ObjectDescribe, TableInfo
from replicator.pipeline.schema import table_spec, version_column
from replicator.postgres.store import Store

FIELDS = (
    FieldSpec("Id", "id"), FieldSpec("Name", "string"), FieldSpec("Phone", "phone"), FieldSpec("Fax", "phone"),
    FieldSpec("Website", "url"), FieldSpec("Industry", "picklist"), FieldSpec("Type", "picklist"),
    FieldSpec("BillingCity", "string"), FieldSpec("BillingState", "string"), FieldSpec("BillingCountry", "string"),
    FieldSpec("AnnualRevenue", "currency"), FieldSpec("NumberOfEmployees", "int"), FieldSpec("Rating", "picklist"),
    FieldSpec("Description", "textarea"), FieldSpec("IsDeleted", "boolean"), FieldSpec("CreatedDate", "datetime"),
    FieldSpec("LastModifiedDate", "datetime"), FieldSpec("SystemModstamp", "datetime"),
    FieldSpec("AccountNumber", "string"),
)
PAGE = 50_000


def _pages(rows: int, changed: bool = False) -> list[bytes]:
    """CSV pages as Bulk API 2.0 serves them (header line first, empty field = NULL); `changed`: every record an
    hour newer, with another phone number."""
    header = ",".join(f.name for f in FIELDS) + "\n"
    stamp = dt.datetime(2026, 11, 30, 13 if changed else 12, 0, tzinfo=dt.UTC)
    phone = "556" if changed else "555"
    pages = []
    for start in range(0, rows, PAGE):
        lines = [header]
        for i in range(start, min(rows, start + PAGE)):
            ts = (stamp + dt.timedelta(seconds=i // 50)).strftime("%Y-%m-%dT%H:%M:%S.000Z")
            lines.append(f"001{i:015d},Account {i},+1 {phone} {i % 10000:04d},,https://example.com/{i},Technology,"
                         f"Customer,City {i % 300},CA,United States,{i * 10}.5,{i % 5000},Hot,"
                         f"\"A description of account {i}, with a comma\",false,{ts},{ts},{ts},AN-{i}\n")
        pages.append("".join(lines).encode())
    return pages


async def _chunks(data: bytes):
    yield data


async def _job(store: Store, sink, name: str, mode: str, pages: list[bytes]) -> float:
    job_id = f"750{uuid.uuid4().hex[:15]}"
    t0 = time.perf_counter()
    await store.start_job(name, job_id, mode, PAGE)
    for n, page in enumerate(pages):
        await sink.load_page(job_id, f"p{n}", mode, _chunks(page))
    if mode == "upsert":
        await sink.remove_unseen()
    await store.finish_backfill(name)
    return time.perf_counter() - t0


async def main(url: str, rows: int, repeat: int, changed: bool) -> None:
    db = f"bench_resync_{uuid.uuid4().hex[:8]}"
    admin = await asyncpg.connect(url)
    await admin.execute(f'CREATE DATABASE "{db}"')
    try:
        pages, again = _pages(rows), _pages(rows, changed)
        spec = table_spec(ObjectDescribe(name="Account", fields=FIELDS), schema="bench_resync")
        info = TableInfo(spec, version_column(spec), True, hard_deletes=False)
        ratios = []
        async with Store.open(url.rsplit("/", 1)[0] + f"/{db}", pool_size=4) as store:
            sink = store.page_sink(info)
            for _ in range(repeat):
                async with store._pool.acquire() as conn:
                    await conn.execute("DROP TABLE IF EXISTS bench_resync.account")
                await sink.prepare()
                copy_s = await _job(store, sink, "Account", "copy", pages)
                async with store._pool.acquire() as conn:
                    await conn.execute("VACUUM ANALYZE bench_resync.account")
                resync_s = await _job(store, sink, "Account", "upsert", again)
                async with store._pool.acquire() as conn:
                    live = await conn.fetchval("SELECT count(*) FROM bench_resync.account WHERE NOT isdeleted")
                assert live == rows, f"the resync left {live} of {rows} rows live"
                ratios.append(copy_s / resync_s)
                print(f"copy {copy_s:.2f} s, resync {resync_s:.2f} s: resync at {copy_s / resync_s:.2f}x COPY")
        print(f"median of {repeat}: resync at {statistics.median(ratios):.2f}x COPY ({rows:,} rows, "
              f"{'every one' if changed else 'none'} changed)")
    finally:
        await admin.execute(f'DROP DATABASE IF EXISTS "{db}" WITH (FORCE)')
        await admin.close()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", default="postgresql://127.0.0.1:5432/test")
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--changed", action="store_true", help="every record changed since the first load")
    args = parser.parse_args()
    asyncio.run(main(args.url, args.rows, args.repeat, args.changed))
