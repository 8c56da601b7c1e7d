"""What history costs: the backfill's load and the stream's events/s with `history = true` against without, in
one run, alternated, as ratios (issue 20 asks ≥ 0.8× and ≥ 0.7×).

`python -m bench.history_cost [--rows 100000] [--events 30000] [--records 20000] [--repeat 3]
[--url postgresql://127.0.0.1:5432/test]`

1. Load: `rows` Account-shaped records (bench/resync_load.py's pages, memory → Postgres, no simulator) loaded into
   an empty table (`load_mode` copy, plain COPY) with and without a history table: `off_s / on_s`, so 1.0 is "as
   fast"; with history every row is also its record's first version (the statement trigger's INSERT … SELECT
   from the COPY's transition table).
2. Stream: the simulator (its own process, `records` records) and two databases, each backfilled and streaming
   Account, one with history; then per repeat one burst of `events` narrow UPDATE events (bench/burst.py's
   `make_burst`: one changed field each, the org idle while replicator drains) that each database's service drains
   from its checkpoint, in alternating order: `on events/s / off events/s`.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
import uuid

import asyncpg

from replicator.app.service import Service
from replicator.config import load_settings
from replicator.model import HistoryNames, ObjectDescribe, TableInfo
from replicator.pipeline.schema import table_spec, version_column
from replicator.postgres.store import Store

from .burst import make_burst, until
from .harness import start_sim, stop_sim
from .resync_load import FIELDS, _job, _pages


async def load_ratios(url: str, rows: int, repeat: int) -> list[float]:
    pages = _pages(rows)
    spec = table_spec(ObjectDescribe(name="Account", fields=FIELDS), schema="bench_history")
    ratios = []
    async with Store.open(url, pool_size=4) as store:
        for r in range(repeat):
            took = {}
            for history in ((False, True) if r % 2 == 0 else (True, False)):
                info = TableInfo(spec, version_column(spec), True, hard_deletes=False,
                                 history=HistoryNames() if history else None)
                async with store._pool.acquire() as conn:
                    await conn.execute("DROP TABLE IF EXISTS bench_history.account, bench_history.account__history CASCADE")
                    await conn.execute("CHECKPOINT")
                await store.page_sink(info).prepare()
                took[history] = await _job(store, store.page_sink(info), "Account", "copy", pages)
                if history:
                    async with store._pool.acquire() as conn:
                        versions = await conn.fetchval("SELECT count(*) FROM bench_history.account__history")
                        size = await conn.fetchval(
                            "SELECT pg_total_relation_size('bench_history.account__history')")
                    assert versions == rows, f"{versions} versions for {rows} rows"
                    print(f"history table: {size / versions:.0f} bytes a version with its indexes, "
                          f"{size / versions * 1e6 / 2**20:,.0f} MiB per 1,000,000 versions", flush=True)
            ratios.append(took[False] / took[True])
            print(f"load {rows:,} rows: off {took[False]:.2f} s, on {took[True]:.2f} s: {ratios[-1]:.2f}x", flush=True)
    return ratios


def _settings(sim: dict, url: str, history: bool):
    return load_settings(overrides={
        "salesforce": {"instance_url": sim["instance_url"], "client_id": sim["client_id"],
                       "client_secret": sim["client_secret"], "ca_file": sim["ca_file"],
                       "pubsub_endpoint": sim["pubsub_endpoint"]},
        "postgres": {"url": url}, "objects": {"Account": {"history": history}},
        "backfill": {"poll_max_s": 0.5}, "stream": {"batch_max_events": 2_000, "batch_max_wait_s": 0.05},
        "service": {"port": 0, "host": "127.0.0.1", "replica_id": f"bench-{history}"}})


async def _applied(url: str) -> int:
    conn = await asyncpg.connect(url)
    try:
        return await conn.fetchval("SELECT coalesce(sum(events_applied), 0)::bigint FROM replicator.checkpoints")
    finally:
        await conn.close()


async def _drain(sim: dict, url: str, history: bool, target: int) -> float:
    """Start the service on `url`, until it applied `target` events in all; events/s of this drain."""
    before = await _applied(url)
    svc = Service(_settings(sim, url, history))
    t0 = time.perf_counter()
    task = asyncio.create_task(svc.run())

    async def done() -> bool:
        if task.done():
            task.result()
        return await _applied(url) >= target
    await until(done, timeout=900, interval=0.02)
    seconds = time.perf_counter() - t0
    svc.stop.set()
    await task
    return (target - before) / seconds


async def stream_ratios(sim: dict, urls: dict[bool, str], events: int, repeat: int) -> list[float]:
    for history, url in urls.items():  # backfill, stream until the checkpoint exists, stop
        svc = Service(_settings(sim, url, history))
        task = asyncio.create_task(svc.run())
        await until(lambda s=svc, t=task: _first_batch(s, t), timeout=600, interval=0.05)
        svc.stop.set()
        await task
    ratios = []
    for r in range(repeat):
        target = await make_burst(sim, events)
        rate = {}
        for history in ((False, True) if r % 2 == 0 else (True, False)):
            rate[history] = await _drain(sim, urls[history], history, target)
        ratios.append(rate[True] / rate[False])
        print(f"stream {events:,} events: off {rate[False]:,.0f}/s, on {rate[True]:,.0f}/s: {ratios[-1]:.2f}x",
              flush=True)
    return ratios


async def _first_batch(svc: Service, task: asyncio.Task) -> bool:
    if task.done():
        task.result()
    return "Account" in svc.streams and svc.streams["Account"].stats.batches > 0


async def main(url: str, rows: int, events: int, records: int, repeat: int) -> None:
    admin = await asyncpg.connect(url)
    dbs = {h: f"bench_history_{'on' if h else 'off'}_{uuid.uuid4().hex[:6]}" for h in (False, True)}
    for db in dbs.values():
        await admin.execute(f'CREATE DATABASE "{db}"')
    base = url.rsplit("/", 1)[0]
    proc = None
    try:
        load = await load_ratios(f"{base}/{dbs[False]}", rows, repeat)
        proc, sim = start_sim(records)
        stream = await stream_ratios(sim, {h: f"{base}/{db}" for h, db in dbs.items()}, events, repeat)
        print(f"median of {repeat}: backfill load with history {statistics.median(load):.2f}x without "
              f"({rows:,} rows); stream {statistics.median(stream):.2f}x without ({events:,} narrow updates)")
    finally:
        if proc is not None:
            stop_sim(proc)
        for db in dbs.values():
            await admin.execute(f'DROP DATABASE IF EXISTS "{db}" WITH (FORCE)')
        await admin.close()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", default="postgresql://127.0.0.1:5432/test")
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--events", type=int, default=30_000)
    parser.add_argument("--records", type=int, default=20_000)
    parser.add_argument("--repeat", type=int, default=3)
    a = parser.parse_args()
    from replicator.observe.logs import setup_logging

    setup_logging("warning")
    asyncio.run(main(a.url, a.rows, a.events, a.records, a.repeat))
