"""Stream apply stage alone (memory → Postgres): folded change batches applied with their checkpoint.

    python -m bench.stream_apply [--rows 200000] [--events 200000] [--batch 2000] [--repeat 3]

Isolates the database side of the stream (STYLE.md 12): the simulator's Account describe gives the table,
a backfill loads `--rows` rows, then batches of synthetic changes go through fold → StreamSink.apply, each
batch one transaction with its checkpoint. Reported per event mix, as events/s and as a ratio to a raw COPY of
the same number of full rows into the same table shape, measured in the same run:
- narrow: UPDATE of one field (plus LastModifiedDate, as Salesforce always sends it) on existing rows;
- full: CREATE of new records with every field.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import random
import statistics
import time

import asyncpg

from replicator.app.commands import run_backfills
from replicator.app.runtime import salesforce_client
from replicator.model import Change, Checkpoint, Version
from replicator.observe.logs import setup_logging
from replicator.pipeline.changes import ColumnMap, fold
from replicator.pipeline.schema import table_spec, version_column
from replicator.postgres.apply import StreamSink
from replicator.postgres.server import fresh_database
from replicator.postgres.sink import TableInfo
from replicator.sim.server import SimulatorThread

from .backfill import SERVER_URL, machine


def _settings(sim, url):
    from replicator.config import load_settings

    return load_settings(overrides={
        "salesforce": {"instance_url": sim["instance_url"], "client_id": sim["client_id"],
                       "client_secret": sim["client_secret"], "ca_file": sim["ca_file"]},
        "postgres": {"url": url}, "objects": {"Account": {}}, "backfill": {"poll_max_s": 0.5}})


def _avro_like(value, pg_type):
    """A column value as a change event would carry it (epoch ms for datetimes, floats for numbers)."""
    import datetime as dt
    from decimal import Decimal

    if value is None:
        return None
    if isinstance(value, dt.datetime):
        return int(value.timestamp() * 1000)
    if isinstance(value, dt.date):
        return int(dt.datetime(value.year, value.month, value.day, tzinfo=dt.UTC).timestamp() * 1000)
    if isinstance(value, dt.time):
        return ((value.hour * 60 + value.minute) * 60 + value.second) * 1000 + value.microsecond // 1000
    if isinstance(value, Decimal):
        return float(value)
    return value


async def run(args) -> dict:
    with SimulatorThread(records=args.rows, seed=3) as thread:
        sim = thread.info
        url = await fresh_database(SERVER_URL, "replicator_bench_stream")
        settings = _settings(sim, url)
        await run_backfills(settings, ["Account"])
        async with salesforce_client(settings) as client:
            describe = await client.describe("Account")
    spec = table_spec(describe, schema="salesforce")
    cmap = ColumnMap(spec, describe)
    pool = await asyncpg.create_pool(url, min_size=2, max_size=4)
    sink = StreamSink(pool, TableInfo(spec, version_column(spec), True, False))
    async with pool.acquire() as conn:
        ids = [r[0] for r in await conn.fetch("SELECT id FROM salesforce.account")]
        sample = [dict(r) for r in await conn.fetch("SELECT * FROM salesforce.account LIMIT 1000")]
    field_of = {c.name: c.field for c in spec.columns}
    rng = random.Random(1)
    now_ms = int(time.time() * 1000)

    def narrow(i: int) -> Change:
        return Change("Account", rng.choice(ids), "UPDATE", Version(now_ms + i, i), f"t{i}",
                      {"Phone": f"+1 555 {i:07d}", "LastModifiedDate": now_ms + i})

    def full(i: int) -> Change:
        row = sample[i % len(sample)]
        fields = {field_of[c]: _avro_like(v, spec.column(c).pg_type) for c, v in row.items()
                  if c in field_of and c not in ("id", "isdeleted", "systemmodstamp") and v is not None}
        return Change("Account", f"001BENCH{i:010d}", "CREATE", Version(now_ms + i, i), f"c{i}", fields)

    async def measure(make) -> float:
        batches = [[make(i) for i in range(start, min(start + args.batch, args.events))]
                   for start in range(0, args.events, args.batch)]  # built before the clock starts
        t0 = time.perf_counter()
        for n, changes in enumerate(batches):
            start = n * args.batch
            ops = list(fold(changes, cmap).values())
            await sink.apply(ops, [], Checkpoint("/data/AccountChangeEvent", start.to_bytes(10, "big"), now_ms))
        return args.events / (time.perf_counter() - t0)

    async def copy_rate() -> float:
        async with pool.acquire() as conn:
            await conn.execute("DROP TABLE IF EXISTS public.copy_ceiling")
            await conn.execute("CREATE TABLE public.copy_ceiling (LIKE salesforce.account INCLUDING ALL)")
            cols = [c.name for c in spec.columns]
            buf = io.BytesIO()
            out = await conn.copy_from_query(f"SELECT {', '.join(cols)} FROM salesforce.account", output=buf,
                                             format="csv")
            del out
            data = buf.getvalue()
            t0 = time.perf_counter()
            status = await conn.copy_to_table("copy_ceiling", schema_name="public", source=io.BytesIO(data),
                                              columns=cols, format="csv")
            rate = int(status.split()[-1]) / (time.perf_counter() - t0)
            await conn.execute("DROP TABLE public.copy_ceiling")
            return rate

    out = {"narrow_events_per_s": [], "full_events_per_s": [], "copy_rows_per_s": []}
    for _ in range(args.repeat):
        out["copy_rows_per_s"].append(await copy_rate())
        out["narrow_events_per_s"].append(await measure(narrow))
        async with pool.acquire() as conn:
            await conn.execute("DELETE FROM salesforce.account WHERE id LIKE '001BENCH%'")
        out["full_events_per_s"].append(await measure(full))
        async with pool.acquire() as conn:
            await conn.execute("DELETE FROM salesforce.account WHERE id LIKE '001BENCH%'")
        print(json.dumps({k: round(v[-1]) for k, v in out.items()}), flush=True)
    await pool.close()
    med = {k: statistics.median(v) for k, v in out.items()}
    med["narrow_ratio_to_copy"] = med["narrow_events_per_s"] / med["copy_rows_per_s"]
    med["full_ratio_to_copy"] = med["full_events_per_s"] / med["copy_rows_per_s"]
    return {"machine": machine(), "parameters": vars(args), "runs": out, "median": med}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=200_000)
    ap.add_argument("--events", type=int, default=100_000)
    ap.add_argument("--batch", type=int, default=2_000)
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    setup_logging("warning")
    report = asyncio.run(run(args))
    m = report["median"]
    print(f"\nnarrow UPDATE {m['narrow_events_per_s']:,.0f} events/s ({m['narrow_ratio_to_copy']:.2f}x COPY), "
          f"full CREATE {m['full_events_per_s']:,.0f} events/s ({m['full_ratio_to_copy']:.2f}x COPY), "
          f"COPY {m['copy_rows_per_s']:,.0f} rows/s, batch {args.batch}")
    import datetime as dt
    from pathlib import Path

    path = Path(__file__).parent / "results" / f"{dt.date.today().isoformat()}-stream-apply-batch{args.batch}.json"
    path.parent.mkdir(exist_ok=True)
    path.write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
