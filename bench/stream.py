"""Stream benchmark, end to end: simulator (own process) → Pub/Sub over TLS → decode → fold → Postgres.

    python -m bench.stream [--records 20000] [--events 50000] [--rates 1000,10000] [--seconds 20]

1. Throughput: the org makes `--events` changes while replicator is stopped; replicator then starts from
   its checkpoint and drains them. events/s = events / drain time, for narrow UPDATEs (one field plus
   LastModifiedDate) and for full CREATEs, each with its ratio to a raw COPY of as many full rows into the
   same table shape, measured in the same run.
2. Lag: the org makes changes at a steady rate for `--seconds`; every applied event's commit → applied lag
   is kept; p50/p99 per rate. The service runs in this process, the simulator in its own.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import io
import json
import subprocess
import sys
import time
from pathlib import Path

import asyncpg

from replicator.app.service import Service
from replicator.config import load_settings
from replicator.observe.logs import setup_logging
from replicator.postgres.server import fresh_database
from replicator.sim.admin_client import sim_admin

from .backfill import SERVER_URL, machine

ROOT = Path(__file__).resolve().parent


def _peak_rss_mb() -> float:
    """Peak resident memory of this process (the service runs here; the simulator has its own)."""
    import resource

    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)


def start_sim(records: int, *extra: str) -> tuple[subprocess.Popen, dict]:
    proc = subprocess.Popen([sys.executable, "-m", "replicator.sim", "--records", str(records), "--port", "0",
                             "--keepalive-seconds", "0.2", "--retention-events", "5000000", *extra],
                            stdout=subprocess.PIPE)
    return proc, json.loads(proc.stdout.readline())


def settings(sim: dict, url: str, batch: int):
    return load_settings(overrides={
        "salesforce": {"instance_url": sim["instance_url"], "client_id": sim["client_id"],
                       "client_secret": sim["client_secret"], "ca_file": sim["ca_file"],
                       "pubsub_endpoint": sim["pubsub_endpoint"]},
        "postgres": {"url": url}, "objects": {"Account": {}},
        "backfill": {"poll_max_s": 0.5}, "stream": {"batch_max_events": batch, "batch_max_wait_s": 0.05},
        "service": {"port": 0, "host": "127.0.0.1"}})


async def q(url: str, sql: str):
    conn = await asyncpg.connect(url)
    try:
        return await conn.fetchval(sql)
    except asyncpg.UndefinedTableError:
        return None
    finally:
        await conn.close()


async def until(pred, timeout: float, interval: float = 0.05):
    end = time.monotonic() + timeout
    while not await pred():
        if time.monotonic() > end:
            raise TimeoutError("benchmark condition not met")
        await asyncio.sleep(interval)


async def published(sim) -> int:
    return (await sim_admin(sim, "GET", "/__sim/stats")).json()["events_published"]


async def start_service(cfg) -> tuple[Service, asyncio.Task]:
    svc = Service(cfg)
    return svc, asyncio.create_task(svc.run())


async def make_changes(sim, n: int, mix: dict, rate: float, fields: int = 1, collision: float = 0.0,
                       per_event: int = 1) -> None:
    """The org makes n changes to Account (one record per event unless `per_event`), then stops."""
    before = (await sim_admin(sim, "GET", "/__sim/traffic")).json()["made"]
    await sim_admin(sim, "PUT", "/__sim/traffic", {
        "running": True, "rate": rate, "mix": mix, "objects": ["Account"], "changes": before + n,
        "fields_per_update": fields, "transaction_size": 1, "records_per_event": per_event,
        "collision_rate": collision})

    async def done():
        return (await sim_admin(sim, "GET", "/__sim/traffic")).json()["made"] >= before + n
    await until(done, timeout=n / 300 + 120, interval=0.1)


async def drain_rate(sim, url: str, cfg, n: int, mix: dict, **change) -> dict:
    """Make n changes with replicator stopped, then time applying them: events/s, rows written per event."""
    await make_changes(sim, n, mix, rate=50_000, **change)
    target = await published(sim)
    svc, task = await start_service(cfg)
    t0 = time.monotonic()
    await until(lambda: _applied_at_least(url, target), timeout=900, interval=0.02)
    seconds = time.monotonic() - t0
    svc.stop.set()
    await task
    s = svc.streams["Account"].stats
    return {"events_per_s": s.events / seconds,
            "rows_per_event": (s.upserts + s.updates + s.deletes) / max(s.events, 1), "peak_rss_mb": _peak_rss_mb()}


async def _applied_at_least(url, target):
    return (await q(url, "SELECT sum(events_applied) FROM replicator.checkpoints") or 0) >= target


async def copy_rate(url: str) -> float:
    conn = await asyncpg.connect(url)
    try:
        cols = [r[0] for r in await conn.fetch(
            "SELECT column_name FROM information_schema.columns WHERE table_schema='salesforce' AND "
            "table_name='account' AND column_name NOT LIKE '\\_sf\\_%' ORDER BY ordinal_position")]
        buf = io.BytesIO()
        await conn.copy_from_query(f"SELECT {', '.join(cols)} FROM salesforce.account", output=buf, format="csv")
        await conn.execute("DROP TABLE IF EXISTS public.copy_ceiling")
        await conn.execute("CREATE TABLE public.copy_ceiling (LIKE salesforce.account INCLUDING ALL)")
        await conn.execute("CHECKPOINT")
        t0 = time.perf_counter()
        status = await conn.copy_to_table("copy_ceiling", schema_name="public", source=io.BytesIO(buf.getvalue()),
                                          columns=cols, format="csv")
        rate = int(status.split()[-1]) / (time.perf_counter() - t0)
        await conn.execute("DROP TABLE public.copy_ceiling")
        return rate
    finally:
        await conn.close()


async def lag_at(sim, cfg, rate: int, seconds: float) -> dict:
    """The org makes narrow updates at `rate` for `seconds` while replicator streams: commit → applied lag of
    every event (p50/p99/max), the rate the simulator achieved offering, and the rate replicator applied."""
    from collections import deque

    svc, task = await start_service(cfg)
    await until(lambda: _streaming(svc), timeout=120)
    stream = svc.streams["Account"]
    stream.stats.lags = deque()  # every event's lag, not only the newest LAG_SAMPLES
    n = int(rate * seconds)
    before = await published(sim)
    t0 = time.monotonic()
    await make_changes(sim, n, {"UPDATE": 1.0}, rate=rate, fields=2)
    offered_s = time.monotonic() - t0
    target = await published(sim)
    await until(lambda: _applied_at_least(cfg.postgres.url.get_secret_value(), target), timeout=120 + n / 1000)
    applied_s = time.monotonic() - t0
    lags = sorted(stream.stats.lags)
    svc.stop.set()
    await task
    pick = lambda p: lags[min(len(lags) - 1, int(p * len(lags)))]  # noqa: E731
    return {"offered_per_s": rate, "achieved_offered_per_s": (target - before) / offered_s,
            "applied_per_s": (target - before) / applied_s, "events": len(lags), "lag_p50_s": pick(0.50),
            "lag_p99_s": pick(0.99), "lag_max_s": lags[-1]}


async def org_records(sim: dict, obj: str):
    """The org's records of `obj` (deleted ones included), parsed as the simulator's dump streams in, so the
    harness never holds the dump (~1 KB a record) in the process where the service's memory is measured."""
    import httpx
    import orjson

    from replicator.sim.admin_client import _verify

    async with httpx.AsyncClient(verify=_verify(sim), timeout=600) as http:
        async with http.stream("GET", f"{sim['instance_url']}/__sim/objects/{obj}/records") as r:
            r.raise_for_status()
            async for line in r.aiter_lines():
                if line.strip():
                    yield orjson.loads(line)


async def all_streaming(svc: Service, objects: set[str]) -> bool:
    """Every one of `objects` is streaming and connected (its backfill done)."""
    return set(svc.streams) >= objects and all(
        svc.streams[o].health.phase == "STREAMING" and svc.streams[o].health.connected for o in objects)


async def _streaming(svc: Service) -> bool:
    return "Account" in svc.streams and svc.streams["Account"].stats.batches > 0


async def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--records", type=int, default=20_000)
    ap.add_argument("--events", type=int, default=50_000)
    ap.add_argument("--rates", default="1000,10000")
    ap.add_argument("--seconds", type=float, default=20)
    ap.add_argument("--batch", type=int, default=2000)
    args = ap.parse_args()
    setup_logging("warning")
    sim_proc, sim = start_sim(args.records)
    try:
        url = await fresh_database(SERVER_URL, "replicator_bench_stream")
        cfg = settings(sim, url, args.batch)
        svc, task = await start_service(cfg)  # backfill, then streaming: the checkpoint exists afterwards
        await until(lambda: _streaming(svc), timeout=300)
        svc.stop.set()
        await task
        result = {"copy_rows_per_s": await copy_rate(url)}
        result["peak_rss_mb_after_backfill"] = _peak_rss_mb()
        result["narrow_update_events_per_s"] = (await drain_rate(sim, url, cfg, args.events // 5,
                                                                 {"UPDATE": 1.0}))["events_per_s"]
        result["peak_rss_mb_after_small_drain"] = _peak_rss_mb()
        result["narrow_update_events_per_s"] = (await drain_rate(sim, url, cfg, args.events,
                                                                 {"UPDATE": 1.0}))["events_per_s"]
        result["peak_rss_mb_after_drain"] = _peak_rss_mb()
        result["full_create_events_per_s"] = (await drain_rate(sim, url, cfg, args.events,
                                                               {"CREATE": 1.0}))["events_per_s"]
        result["narrow_ratio_to_copy"] = result["narrow_update_events_per_s"] / result["copy_rows_per_s"]
        result["full_ratio_to_copy"] = result["full_create_events_per_s"] / result["copy_rows_per_s"]
        result["lag"] = [await lag_at(sim, cfg, int(r), args.seconds) for r in args.rates.split(",")]
        result["peak_rss_mb_end"] = _peak_rss_mb()
    finally:
        sim_proc.terminate()
        sim_proc.wait()
    report = {"scenario": "stream", "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
              "command": "python -m bench.stream " + " ".join(sys.argv[1:]), "machine": machine(),
              "parameters": vars(args), "result": result}
    out = ROOT / "results" / f"{dt.date.today().isoformat()}-stream-batch{args.batch}.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(report, indent=2))
    print(json.dumps(result, indent=2))
    print(f"-> {out.relative_to(ROOT.parent)}")


if __name__ == "__main__":
    asyncio.run(main())
