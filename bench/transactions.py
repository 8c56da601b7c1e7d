"""Large transactions: one Salesforce transaction of `threshold` changes, and one past it (an overflow).

Salesforce: "An overflow event is generated when a single transaction contains more than 100,000 changes"; the
first 100,000 changes generate change events, the rest one GAP_OVERFLOW event an object, with no record id
(Overflow Events, Change Data Capture Developer Guide:
https://developer.salesforce.com/docs/atlas.en-us.change_data_capture.meta/change_data_capture/cdc_other_events_overflow.htm;
docs/pubsub-cdc.md, section 7).

- At the threshold (100,000 in Salesforce): every change is its own event and the events share one
  transactionKey. replicator keeps a transaction whole in one Postgres commit, so it holds all of it in memory
  before committing: the case reports events/s and how much the process's resident memory grew.
- Past it (1.2 × the threshold): the first `threshold` changes arrive as events, the rest as one GAP_OVERFLOW,
  which names no record. replicator applies what it got and resyncs the object from a fresh Bulk extract; the
  case reports the time from the org's commit to a table equal to the org again (ids compared one by one).

The simulator's threshold is Salesforce's (100,000) in a full run; quick runs lower it with the
`overflow_threshold` fault so the same paths run at a small size.
"""

from __future__ import annotations

import asyncio
import os
import time

import asyncpg

from replicator.sim.admin_client import sim_admin

from .stream import all_streaming, applied_at_least, org_records, published, q, start_service, until

_PAGE = os.sysconf("SC_PAGE_SIZE")


def _rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * _PAGE / 2**20


async def _sample_peak(stop: asyncio.Event, peak: list[float]) -> None:
    """Peak resident memory of this process (the service runs in it) while a case runs; a measurement, not a
    synchronisation: the case waits on its own conditions."""
    while not stop.is_set():
        peak[0] = max(peak[0], _rss_mb())
        try:
            await asyncio.wait_for(stop.wait(), 0.05)
        except TimeoutError:
            pass


async def _pg(url: str, sql: str):
    conn = await asyncpg.connect(url)
    try:
        return await conn.fetch(sql)
    finally:
        await conn.close()


async def _resyncs(url: str) -> int:
    return await q(url, "SELECT resyncs FROM replicator.objects WHERE object = 'Account'")


async def _resynced(url: str, before: int) -> bool:
    rows = await _pg(url, "SELECT phase, resyncs FROM replicator.objects WHERE object = 'Account'")
    return bool(rows) and rows[0]["resyncs"] > before and rows[0]["phase"] == "STREAMING"


async def _case(sim: dict, url: str, changes: int, overflow: bool) -> dict:
    resyncs = await _resyncs(url)
    before = await published(sim)
    base = _rss_mb()
    peak, stop = [base], asyncio.Event()
    sampler = asyncio.create_task(_sample_peak(stop, peak))
    t0 = time.monotonic()
    await sim_admin(sim, "POST", "/__sim/changes", [{"object": "Account", "type": "CREATE"}] * changes, timeout=600)
    committed = time.monotonic() - t0  # the simulator's own work: make the records, encode the events
    target = await published(sim)
    await until(lambda: applied_at_least(url, target), timeout=1800, interval=0.05)
    if overflow:
        await until(lambda: _resynced(url, resyncs), timeout=1800, interval=0.05)
    seconds = time.monotonic() - t0
    stop.set()
    await sampler
    org = {rec["Id"] async for rec in org_records(sim, "Account") if not rec["IsDeleted"]}
    ours = {r["id"] for r in await _pg(url, "SELECT id FROM salesforce.account WHERE NOT isdeleted")}
    events = target - before
    return {"changes": changes, "events": events, "events_per_s": events / seconds, "seconds": seconds,
            "org_commit_s": committed, "rss_growth_mb": peak[0] - base,
            "table_equals_org": int(org == ours), "resyncs": await _resyncs(url) - resyncs}


async def run(sim: dict, cfg, threshold: int) -> list[dict]:
    """Both cases on a running service (the stream scenario's database, already backfilled)."""
    url = cfg.postgres.url.get_secret_value()
    await sim_admin(sim, "PUT", "/__sim/faults", {"overflow_threshold": threshold})
    svc, task = await start_service(cfg)
    try:
        await until(lambda: all_streaming(svc, {"Account"}), timeout=600)
        rows = [{"x": f"{threshold:,} creates in one transaction",
                 **await _case(sim, url, threshold, overflow=False)}]
        over = threshold * 6 // 5
        rows.append({"x": f"{over:,} creates in one transaction: GAP_OVERFLOW → resync",
                     **await _case(sim, url, over, overflow=True)})
    finally:
        await sim_admin(sim, "PUT", "/__sim/faults", {"overflow_threshold": 100_000})
        svc.stop.set()
        await task
    return rows
