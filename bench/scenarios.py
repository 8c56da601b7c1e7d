"""The named scenarios of `python -m bench`: ceilings, backfill sweeps, stream sweeps.

Each takes a `Plan` (sizes for quick or full mode) and returns figures and sweeps (harness.sweep). The
simulator runs in its own process; replicator's backfill runs as its own process (`replicator backfill`), the
stream service in this one (its apply loop is what is measured).
"""

from __future__ import annotations

import asyncio
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace

import asyncpg

from replicator.postgres.server import fresh_database
from replicator.sim.admin_client import sim_admin

from . import ceilings
from .backfill import run_backfill, write_config
from .harness import median_of, sweep
from .stream import (
    _applied_at_least,
    _peak_rss_mb,
    _streaming,
    lag_at,
    published,
    settings,
    start_service,
    until,
)


@dataclass
class Plan:
    quick: bool
    repeat: int
    server_url: str
    records: int = 1_000_000  # backfill sweeps over page size and parallelism
    record_counts: list[int] = field(default_factory=lambda: [100_000, 1_000_000, 5_000_000])
    page_sizes: list[int] = field(default_factory=lambda: [10_000, 50_000, 100_000, 250_000])
    parallel: list[int] = field(default_factory=lambda: [1, 2, 3, 4, 5])
    stream_records: int = 20_000
    stream_events: int = 30_000
    batch_sizes: list[int] = field(default_factory=lambda: [100, 500, 2_000, 10_000])
    collisions: list[float] = field(default_factory=lambda: [0.0, 0.5, 0.9])
    rates: list[int] = field(default_factory=lambda: [1_000, 5_000, 10_000])
    lag_seconds: float = 10.0
    ceiling_events: int = 20_000

    @classmethod
    def make(cls, quick: bool, repeat: int | None, server_url: str) -> Plan:
        if not quick:
            return cls(False, repeat or 3, server_url)
        return cls(True, repeat or 1, server_url, records=6_000, record_counts=[2_000, 6_000],
                   page_sizes=[1_000, 6_000], parallel=[1, 3], stream_records=2_000, stream_events=1_500,
                   batch_sizes=[100, 2_000], collisions=[0.0, 0.9], rates=[300], lag_seconds=3.0,
                   ceiling_events=1_000)


async def _sim(records: int):
    from .stream import start_sim

    return start_sim(records)


def _stop(proc) -> None:
    proc.terminate()
    proc.wait()


async def _fields(url: str) -> list[str]:
    conn = await asyncpg.connect(url)
    try:
        return [r[0] for r in await conn.fetch(
            "SELECT column_name FROM information_schema.columns WHERE table_schema='salesforce'"
            " AND table_name='account' AND column_name NOT LIKE '\\_sf\\_%' ORDER BY ordinal_position")]
    finally:
        await conn.close()


async def _backfill_once(sim: dict, plan: Plan, page_size: int, parallel: int) -> dict:
    url = await fresh_database(plan.server_url, "replicator_bench")
    cfg = write_config(sim, url, SimpleNamespace(parallel_pages=parallel, page_size=page_size))
    result = run_backfill(cfg, sim)
    done = next(e for e in result["events"] if e.get("event") == "backfill.done")
    return {"rows": done["rows"], "rows_per_s": done["rows"] / done["load_s"], "peak_rss_mb": result["peak_rss_mb"],
            "url": url}


async def _copy_ceiling(sim: dict, plan: Plan) -> float:
    """COPY rows/s of the same rows into the same table shape (median of the plan's repeats)."""
    first = await _backfill_once(sim, plan, plan.page_sizes[-1], 1)
    fields = await _fields(first["url"])

    async def once() -> dict:
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "account.csv"
            await ceilings.bulk_download(sim, fields, path)
            from .backfill import copy_ceiling

            return {"copy_rows_per_s": await copy_ceiling(first["url"], sim, path)}
    return (await median_of(plan.repeat, once))["copy_rows_per_s"]


async def backfill(plan: Plan) -> dict:
    """Rows/s, ratio to COPY and peak RSS against page size, parallel pages and record count."""
    sweeps, figures = [], {}
    proc, sim = await _sim(plan.records)
    try:
        copy = await _copy_ceiling(sim, plan)
        figures["copy_rows_per_s"] = copy

        async def row(page_size: int, parallel: int, x) -> dict:
            m = await median_of(plan.repeat, lambda: _strip(_backfill_once(sim, plan, page_size, parallel)))
            return {"x": x, "rows": m["rows"], "rows_per_s": m["rows_per_s"], "ratio_to_copy": m["rows_per_s"] / copy,
                    "peak_rss_mb": m["peak_rss_mb"]}
        default_page = plan.page_sizes[min(2, len(plan.page_sizes) - 1)]
        sweeps.append(sweep("page size", "maxRecords", [await row(p, 3, p) for p in plan.page_sizes],
                            ["rows_per_s", "peak_rss_mb"], f"{plan.records:,} rows, 3 parallel pages"))
        sweeps.append(sweep("parallel pages", "parallel_pages", [await row(default_page, n, n) for n in plan.parallel],
                            ["rows_per_s", "peak_rss_mb"], f"{plan.records:,} rows, pages of {default_page:,}"))
    finally:
        _stop(proc)
    rows = []
    for count in plan.record_counts:
        proc, sim = await _sim(count)
        try:
            copy = await _copy_ceiling(sim, plan)
            m = await median_of(plan.repeat, lambda s=sim: _strip(_backfill_once(s, plan, plan.page_sizes[-1], 3)))
            rows.append({"x": count, "rows_per_s": m["rows_per_s"], "ratio_to_copy": m["rows_per_s"] / copy,
                         "seconds": m["rows"] / m["rows_per_s"], "peak_rss_mb": m["peak_rss_mb"],
                         "copy_rows_per_s": copy})
        finally:
            _stop(proc)
    sweeps.append(sweep("record count", "records", rows, ["seconds", "peak_rss_mb"],
                        "cost should grow linearly and memory stay flat"))
    return {"figures": figures, "sweeps": sweeps}


async def _strip(coro) -> dict:
    out = await coro
    out.pop("url", None)
    return out


def _row(x, measured: dict, **more) -> dict:
    """A sweep row: the swept value, the medians (without the repeat count), extra columns."""
    return {"x": x, **{k: v for k, v in measured.items() if k != "repeats"}, **more}


async def _changes(sim: dict, n: int, mix: dict, rate: float, collision: float = 0.0, per_event: int = 1,
                   fields: int = 1) -> None:
    before = (await sim_admin(sim, "GET", "/__sim/traffic")).json()["made"]
    await sim_admin(sim, "PUT", "/__sim/traffic", {
        "running": True, "rate": rate, "mix": mix, "objects": ["Account"], "changes": before + n,
        "fields_per_update": fields, "transaction_size": 1, "records_per_event": per_event,
        "collision_rate": collision})

    async def done():
        return (await sim_admin(sim, "GET", "/__sim/traffic")).json()["made"] >= before + n
    await until(done, timeout=n / 300 + 120, interval=0.1)


async def _drain(sim: dict, url: str, cfg, n: int, **change) -> dict:
    """Make n changes with replicator stopped, then time applying them: events/s and rows written per event."""
    await _changes(sim, n, rate=50_000, **change)
    target = await published(sim)
    svc, task = await start_service(cfg)
    t0 = time.monotonic()
    await until(lambda: _applied_at_least(url, target), timeout=900, interval=0.02)
    seconds = time.monotonic() - t0
    svc.stop.set()
    await task
    s = svc.streams["Account"].stats
    events = max(s.events, 1)
    return {"events_per_s": s.events / seconds, "rows_per_event": (s.upserts + s.updates + s.deletes) / events,
            "peak_rss_mb": _peak_rss_mb()}


async def stream(plan: Plan) -> dict:
    """Events/s against apply batch size, event mix and key collisions; lag p50/p99 against offered rate."""
    proc, sim = await _sim(plan.stream_records)
    sweeps, figures = [], {}
    try:
        url = await fresh_database(plan.server_url, "replicator_bench_stream")
        cfg = settings(sim, url, 2_000)
        svc, task = await start_service(cfg)  # backfill, then streaming: the checkpoint exists afterwards
        await until(lambda: _streaming(svc), timeout=600)
        svc.stop.set()
        await task
        from .stream import copy_rate

        copy = await copy_rate(url)
        figures["copy_rows_per_s"] = copy
        n = plan.stream_events
        narrow = {"mix": {"UPDATE": 1.0}}
        rows = []
        for batch in plan.batch_sizes:
            m = await median_of(plan.repeat, lambda b=batch: _drain(sim, url, settings(sim, url, b), n, **narrow))
            rows.append(_row(batch, m, ratio_to_copy=m["events_per_s"] / copy))
        sweeps.append(sweep("apply batch size", "batch_max_events", rows, ["events_per_s", "peak_rss_mb"],
                            f"{n:,} narrow UPDATE events drained"))
        mixes = [("narrow updates", {"mix": {"UPDATE": 1.0}}), ("full creates", {"mix": {"CREATE": 1.0}}),
                 ("deletes and undeletes", {"mix": {"DELETE": 0.5, "UNDELETE": 0.5}}),
                 ("5-record update events", {"mix": {"UPDATE": 1.0}, "per_event": 5})]
        rows = []
        for label, change in mixes:
            m = await median_of(plan.repeat, lambda c=change: _drain(sim, url, cfg, n, **c))
            rows.append(_row(label, m, ratio_to_copy=m["events_per_s"] / copy))
        sweeps.append(sweep("event mix", "events", rows, ["events_per_s"], "batch 2,000"))
        rows = []
        for rate in plan.collisions:
            m = await median_of(plan.repeat, lambda r=rate: _drain(sim, url, cfg, n, mix={"UPDATE": 1.0},
                                                                   collision=r))
            rows.append(_row(rate, m))
        sweeps.append(sweep("key collisions", "collision_rate", rows, ["events_per_s", "rows_per_event"],
                            "folding: changes to one key in a batch become one row write"))
        rows = []
        for rate in plan.rates:
            lag = await lag_at(sim, cfg, rate, plan.lag_seconds)
            rows.append({"x": rate, "events": lag["events"], "lag_p50_s": lag["lag_p50_s"],
                         "lag_p99_s": lag["lag_p99_s"], "lag_max_s": lag["lag_max_s"]})
        sweeps.append(sweep("offered rate", "changes_per_s", rows, ["lag_p50_s", "lag_p99_s"],
                            f"narrow updates for {plan.lag_seconds:g} s; lag = commit → applied"))
        figures["peak_rss_mb"] = _peak_rss_mb()
    finally:
        _stop(proc)
    return {"figures": figures, "sweeps": sweeps}


async def ceiling(plan: Plan) -> dict:
    """Each stage alone, medians of the plan's repeats."""
    proc, sim = await _sim(plan.stream_records)
    try:
        first = await _backfill_once(sim, plan, 250_000 if not plan.quick else plan.stream_records, 1)
        fields = await _fields(first["url"])
        await _changes(sim, plan.ceiling_events, mix={"UPDATE": 1.0}, rate=50_000, fields=2)

        async def once() -> dict:
            with tempfile.TemporaryDirectory() as tmp:
                return await ceilings.measure(sim, first["url"], fields, Path(tmp), plan.ceiling_events)
        figures = await median_of(plan.repeat, once)
    finally:
        _stop(proc)
    return {"figures": figures, "sweeps": []}


SCENARIOS = {"ceilings": ceiling, "backfill": backfill, "stream": stream}


def run(name: str, plan: Plan) -> dict:
    return asyncio.run(SCENARIOS[name](plan))
