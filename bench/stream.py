"""The stream scenario's parts: the service in this process against the simulated org (its own process) over
Pub/Sub and TLS: decode → fold → Postgres.

- Drain rate: the org makes n changes while replicator is stopped; replicator then starts from its checkpoint
  and applies them: events/s = events / drain time.
- Lag: the org makes changes at a steady rate; every applied event's commit → applied lag is kept.

The scenario (batch size, flow control, event mix, key collisions, offered rate, large transactions, each drain
against the COPY ceiling) is `scenarios.stream`: `python -m bench --only stream`. This module was also a script
(`python -m bench.stream`); the harness measures everything it did.
"""

from __future__ import annotations

import asyncio
import resource
import time
from collections import deque

import asyncpg
import httpx
import orjson

from replicator.app.service import Service
from replicator.config import load_settings
from replicator.sim.admin_client import _verify, sim_admin


def peak_rss_mb() -> float:
    """Peak resident memory of this process (the service runs here; the simulator has its own)."""
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)


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
    await until(lambda: applied_at_least(url, target), timeout=900, interval=0.02)
    seconds = time.monotonic() - t0
    svc.stop.set()
    await task
    s = svc.streams["Account"].stats
    return {"events_per_s": s.events / seconds,
            "rows_per_event": (s.upserts + s.updates + s.deletes) / max(s.events, 1), "peak_rss_mb": peak_rss_mb()}


async def applied_at_least(url, target):
    return (await q(url, "SELECT sum(events_applied) FROM replicator.checkpoints") or 0) >= target


async def lag_at(sim, cfg, rate: int, seconds: float) -> dict:
    """The org makes narrow updates at `rate` for `seconds` while replicator streams: commit → applied lag of
    every event (p50/p99/max), the rate the simulator achieved offering, and the rate replicator applied."""
    svc, task = await start_service(cfg)
    await until(lambda: account_streaming(svc), timeout=120)
    stream = svc.streams["Account"]
    stream.stats.lags = deque()  # every event's lag, not only the newest LAG_SAMPLES
    n = int(rate * seconds)
    before = await published(sim)
    t0 = time.monotonic()
    await make_changes(sim, n, {"UPDATE": 1.0}, rate=rate, fields=2)
    offered_s = time.monotonic() - t0
    target = await published(sim)
    await until(lambda: applied_at_least(cfg.postgres.url.get_secret_value(), target), timeout=120 + n / 1000)
    applied_s = time.monotonic() - t0
    lags = sorted(stream.stats.lags)
    svc.stop.set()
    await task
    pick = lambda p: lags[min(len(lags) - 1, int(p * len(lags)))]  # noqa: E731
    stages = {f"{k}_us_per_event": v / max(len(lags), 1) * 1e6 for k, v in stream.stats.stages.items()}
    return {"offered_per_s": rate, "achieved_offered_per_s": (target - before) / offered_s,
            "applied_per_s": (target - before) / applied_s, "events": len(lags), "lag_p50_s": pick(0.50),
            "lag_p99_s": pick(0.99), "lag_max_s": lags[-1], **stages}


async def org_records(sim: dict, obj: str):
    """The org's records of `obj` (deleted ones included), parsed as the simulator's dump streams in, so the
    harness never holds the dump (~1 KB a record) in the process where the service's memory is measured."""
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


async def account_streaming(svc: Service) -> bool:
    return "Account" in svc.streams and svc.streams["Account"].stats.batches > 0


if __name__ == "__main__":
    raise SystemExit("python -m bench.stream is retired: python -m bench --only stream")
