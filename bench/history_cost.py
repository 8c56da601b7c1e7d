"""What history costs: the backfill's load and the stream's events/s with `history = true` against without, in
one run, alternated, as ratios (issue 20 asks ≥ 0.8× and ≥ 0.7×).

`python -m bench.history_cost [--rows 100000] [--events 30000] [--records 20000] [--repeat 3]
[--only load floor stream] [--url postgresql://127.0.0.1:5432/test]`

1. Load: `rows` Account-shaped records (bench/resync_load.py's pages, memory → Postgres, no simulator) loaded into
   an empty table (`load_mode` copy, plain COPY) with and without a history table, as the backfill does it
   (`PageSink.end_versions` before, `build_indexes` after): `off_s / on_s`, so 1.0 is "as fast"; with history
   every row is also its record's first version (the statement trigger's INSERT … SELECT from the COPY's
   transition table).
2. Floor (`floor`): what a load that writes every row twice can cost at best, against what history costs, the
   same rows (pages of 50,000, one transaction each with its page record, as the backfill) loaded into an empty
   table by each variant in turn, the order rotated each repeat, as `one table / variant` of wall seconds and of
   the Postgres backends' CPU seconds (from /proc: what a shared machine's other work does not inflate; index
   builds without parallel workers, whose CPU would not be counted):
   - `two tables`: COPY into the table, and the same bytes COPied again into a history-shaped table (the history
     table's columns and both its indexes; its own columns from defaults): the floor of writing each row twice;
   - `two tables, indexes after`: the same, the history-shaped table's indexes built after the load;
   - `one table, then INSERT … SELECT`: the load, then every row copied into the unindexed history-shaped table
     by one statement and its indexes built: the second write alone, no CSV parsed twice, no transition table
     (not a way to load: outside the pages' transactions, the bound under any way that is);
   - `history, indexes kept`: what `history = true` did before the history table's indexes were built after a
     first load (the trigger's INSERT … ON CONFLICT DO NOTHING into the indexed table), and two ideas on top of
     it: `work_mem 64MB` in the page's transaction (the transition table's tuplestore kept in memory rather than
     spilled to a temporary file: 64MB holds a page of 50,000 of these rows), `no ON CONFLICT` (a plain INSERT:
     no speculative insertion);
   - `history`: what it does now (postgres/history.py `drop_indexes`: a first load into a history table with no
     version goes without its indexes, built after it, the build timed), and `history, work_mem 64MB` on top.
3. Stream: the simulator (its own process, `records` records) and two databases, each backfilled and streaming
   Account, one with history; then per repeat one burst of `events` narrow UPDATE events (bench/burst.py's
   `make_burst`: one changed field each, the org idle while replicator drains) that each database's service drains
   from its checkpoint, in alternating order: `on events/s / off events/s`.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import statistics
import time
import uuid

import asyncpg

from replicator.app.service import Service
from replicator.config import load_settings
from replicator.model import HistoryNames, ObjectDescribe, TableInfo
from replicator.pipeline.schema import table_spec, version_column
from replicator.postgres import history as pg_history
from replicator.postgres.sink import PageSink
from replicator.postgres.store import Store

from .burst import make_burst, until
from .harness import start_sim, stop_sim
from .resync_load import FIELDS, _chunks, _job, _pages


async def _first_load(store: Store, sink: PageSink, pages: list[bytes]) -> float:
    """A `load_mode` copy job as `Backfill` runs it, seconds: the history's current versions ended (and its indexes
    dropped while it has no version), the pages, the indexes built."""
    t0 = time.perf_counter()
    await sink.end_versions()
    await _job(store, sink, "Account", "copy", pages)
    await sink.build_indexes()
    return time.perf_counter() - t0


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
                took[history] = await _first_load(store, store.page_sink(info), pages)
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


FLOOR_VARIANTS = ("one table", "two tables", "two tables, indexes after", "one table, then INSERT … SELECT",
                  "history, indexes kept",
                  "history, indexes kept, work_mem 64MB", "history, indexes kept, no ON CONFLICT", "history",
                  "history, work_mem 64MB")
H = "bench_history.account__history"


class _FloorSink(PageSink):
    """The page sink of one floor variant (see the module docstring)."""

    def __init__(self, pool, table: TableInfo, variant: str):
        super().__init__(pool, table)
        self.variant = variant

    async def _mark(self, conn, op: str) -> None:
        await super()._mark(conn, op)
        if "work_mem" in self.variant:
            await conn.execute("SELECT set_config('work_mem', $1, true)", re.search(r"work_mem (\w+)", self.variant)[1])

    async def _load(self, conn, job_id: str, mode: str, source) -> int:
        if not self.variant.startswith("two tables"):
            return await super()._load(conn, job_id, mode, source)
        data = b"".join([chunk async for chunk in source])
        rows = await super()._load(conn, job_id, mode, data)
        await conn.copy_to_table("account__history", schema_name="bench_history", source=_chunks(data),
                                 columns=[c.name for c in self.t.spec.columns], format="csv", header=True,
                                 force_null=self._force_null)
        return rows


async def _backend_cpu(store: Store) -> float:
    """CPU seconds (user + system) the database's client backends have used so far, from /proc (Postgres on this
    machine): the load's own cost, which other work on a shared machine does not inflate the way it does wall time."""
    async with store._pool.acquire() as conn:
        pids = [r[0] for r in await conn.fetch("SELECT pid FROM pg_stat_activity WHERE datname = current_database() "
                                               "AND backend_type = 'client backend'")]
    ticks = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        ticks += int(fields[11]) + int(fields[12])  # utime, stime (fields 14 and 15 of proc(5))
    return ticks / os.sysconf("SC_CLK_TCK")


async def _floor_once(store: Store, spec, pages: list[bytes], rows: int, variant: str) -> tuple[float, float]:
    """One load of `pages` into an empty table by `variant`: (wall seconds, Postgres backend CPU seconds), the
    indexes built after it included."""
    names = HistoryNames()
    history = variant.startswith("history")
    info = TableInfo(spec, version_column(spec), True, hard_deletes=False, history=names if history else None)
    async with store._pool.acquire() as conn:
        await conn.execute(f"DROP TABLE IF EXISTS bench_history.account, {H} CASCADE")
    sink = _FloorSink(store._pool, info, variant)
    await sink.prepare()
    async with store._pool.acquire() as conn:
        if variant.startswith("two tables") or variant.startswith("one table, then"):
            for statement in pg_history.create_table(spec, names):
                await conn.execute(statement)
            await conn.execute(f"ALTER TABLE {H} ALTER COLUMN _valid_from SET DEFAULT now(), "
                               "ALTER COLUMN _is_current SET DEFAULT true, ALTER COLUMN _op SET DEFAULT 'backfill'")
        if variant.endswith("no ON CONFLICT"):
            function = pg_history.record_function(spec, names)[0]
            # the backfill branch's INSERT (the first of the function) without its ON CONFLICT
            plain = function.replace("FROM new_rows r ON CONFLICT DO NOTHING", "FROM new_rows r", 1)
            assert plain != function
            await conn.execute(plain)
        await conn.execute("CHECKPOINT")
    cpu0, t0 = await _backend_cpu(store), time.perf_counter()
    if variant == "one table, then INSERT … SELECT":
        await _job(store, sink, "Account", "copy", pages)
        async with store._pool.acquire() as conn:
            await conn.execute(pg_history.drop_indexes(spec))
            cols = ", ".join(f'"{c.name}"' for c in spec.columns)
            await conn.execute(f"INSERT INTO {H} ({cols}, _valid_from, _is_current, _op) SELECT {cols}, "
                               "_sf_version, true, 'backfill' FROM bench_history.account")
            for statement in pg_history.indexes(spec, names):
                await conn.execute(statement)
    elif variant == "two tables, indexes after":
        async with store._pool.acquire() as conn:
            await conn.execute(pg_history.drop_indexes(spec))
        await _job(store, sink, "Account", "copy", pages)
        async with store._pool.acquire() as conn:
            for statement in pg_history.indexes(spec, names):
                await conn.execute(statement)
    elif variant in ("history", "history, work_mem 64MB"):
        await _first_load(store, sink, pages)
    else:
        await _job(store, sink, "Account", "copy", pages)
    seconds = time.perf_counter() - t0
    cpu = await _backend_cpu(store) - cpu0
    if variant != "one table":
        async with store._pool.acquire() as conn:
            versions = await conn.fetchval(f"SELECT count(*) FROM {H}")
            built = await conn.fetchval("SELECT count(*) FROM pg_indexes WHERE schemaname = 'bench_history' "
                                        "AND tablename = 'account__history'")
        assert versions == rows, f"{variant}: {versions} versions for {rows} rows"
        assert built == 2, f"{variant}: {built} indexes"
    return seconds, cpu


async def floor_ratios(url: str, rows: int, repeat: int) -> dict[str, tuple[float, float]]:
    """Each variant's load as `one table / variant`, of wall seconds and of backend CPU seconds, medians of
    `repeat`, the order rotated each repeat."""
    pages = _pages(rows)
    spec = table_spec(ObjectDescribe(name="Account", fields=FIELDS), schema="bench_history")
    took: dict[str, list[tuple[float, float]]] = {v: [] for v in FLOOR_VARIANTS}
    conn = await asyncpg.connect(url)
    try:  # index builds by the backend alone: a parallel worker's CPU would not be counted
        await conn.execute(f"ALTER DATABASE {await conn.fetchval('SELECT current_database()')} "
                           "SET max_parallel_maintenance_workers = 0")
    finally:
        await conn.close()
    async with Store.open(url, pool_size=4) as store:
        for r in range(repeat):
            order = FLOOR_VARIANTS[r % len(FLOOR_VARIANTS):] + FLOOR_VARIANTS[:r % len(FLOOR_VARIANTS)]
            for variant in order:
                took[variant].append(await _floor_once(store, spec, pages, rows, variant))
            print(f"floor, repeat {r + 1} (wall s / backend CPU s): "
                  + ", ".join(f"{v} {took[v][-1][0]:.2f}/{took[v][-1][1]:.2f}" for v in FLOOR_VARIANTS), flush=True)
    wall = {v: statistics.median(t[0] for t in took[v]) for v in FLOOR_VARIANTS}
    cpu = {v: statistics.median(t[1] for t in took[v]) for v in FLOOR_VARIANTS}
    ratios = {v: (wall["one table"] / wall[v], cpu["one table"] / cpu[v]) for v in FLOOR_VARIANTS}
    print(f"floor, medians of {repeat} ({rows:,} rows; one table {wall['one table']:.2f} s wall, "
          f"{cpu['one table']:.2f} s backend CPU), as one table / variant, wall and CPU:", flush=True)
    for v in FLOOR_VARIANTS[1:]:
        print(f"  {v}: {ratios[v][0]:.2f}x wall, {ratios[v][1]:.2f}x CPU", flush=True)
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


async def main(url: str, rows: int, events: int, records: int, repeat: int, only: list[str]) -> None:
    admin = await asyncpg.connect(url)
    dbs = {h: f"bench_history_{'on' if h else 'off'}_{uuid.uuid4().hex[:6]}" for h in (False, True)}
    for db in dbs.values():
        await admin.execute(f'CREATE DATABASE "{db}"')
    base = url.rsplit("/", 1)[0]
    proc = None
    try:
        if "load" in only:
            load = await load_ratios(f"{base}/{dbs[False]}", rows, repeat)
            print(f"median of {repeat}: backfill load with history {statistics.median(load):.2f}x without "
                  f"({rows:,} rows)", flush=True)
        if "floor" in only:
            await floor_ratios(f"{base}/{dbs[False]}", rows, repeat)
        if "stream" in only:
            proc, sim = start_sim(records)
            stream = await stream_ratios(sim, {h: f"{base}/{db}" for h, db in dbs.items()}, events, repeat)
            print(f"median of {repeat}: stream {statistics.median(stream):.2f}x without ({events:,} narrow updates)")
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
    parser.add_argument("--only", nargs="+", choices=["load", "floor", "stream"], default=["load", "floor", "stream"],
                        help="which figures (default all)")
    a = parser.parse_args()
    from replicator.observe.logs import setup_logging

    setup_logging("warning")
    asyncio.run(main(a.url, a.rows, a.events, a.records, a.repeat, a.only))
