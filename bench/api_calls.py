"""API calls per unit of work (issue 12 §4): `python -m bench.api_calls`.

Counts what the org's DailyApiRequests allocation is charged (the simulator counts every session-authenticated REST
and Bulk request, as Salesforce does: replicator/sim/limits.py) for three kinds of work, with the default settings:

- a backfill (Bulk API 2.0 query job: describe, create, status polls, result pages) of Account at two sizes; the
  calls per 1,000,000 rows are extrapolated linearly from the two (a fixed part per job plus a part per result page),
  because a million-row org per run is too slow for this machine shared by five engineers;
- polling: 1,000 records changed between two rounds, then one round (`ObjectPoller.round`: queryAll pages of
  `poll.page_size` plus one getDeleted); and an idle round;
- a refresh of 100 objects a day (the formula refresh: one Bulk query job per object per day), computed from the
  calls of one small Bulk job measured here: 100 × (calls of one job).

Postgres: DATABASE_URL, else 127.0.0.1:5432 (database `replicator_bench_calls`, dropped and created).
"""

from __future__ import annotations

import argparse
import asyncio
import os

from replicator.app.commands import run_backfills
from replicator.app.runtime import open_store, salesforce_client
from replicator.config import load_settings
from replicator.pipeline.poll import ObjectPoller
from replicator.postgres.server import fresh_database, resolve_database
from replicator.sim.admin_client import sim_admin
from replicator.sim.server import SimulatorThread


def _settings(sim: dict, url: str, objects: dict):
    return load_settings(overrides={
        "salesforce": {"instance_url": sim["instance_url"], "client_id": sim["client_id"],
                       "client_secret": sim["client_secret"], "ca_file": sim["ca_file"]},
        "postgres": {"url": url}, "objects": objects})


async def _used(sim: dict) -> int:
    return (await sim_admin(sim, "GET", "/__sim/limits")).json()["api_used"]


async def backfill_calls(server_url: str, rows: int, obj: str = "Account") -> int:
    """API requests of one `replicator backfill` of `rows` records."""
    with SimulatorThread(records=rows, seed=3) as thread:
        sim = thread.info
        url = await fresh_database(server_url, "replicator_bench_calls")
        before = await _used(sim)
        results = await run_backfills(_settings(sim, url, {obj: {}}), [obj])
        if isinstance(results[obj], BaseException):
            raise results[obj]
        return await _used(sim) - before  # /__sim/ admin reads are not counted


async def poll_calls(server_url: str, changes: int) -> dict:
    """Calls of one round after `changes` records changed, and of an idle round, by kind."""
    with SimulatorThread(records=2000, seed=3) as thread:
        sim = thread.info
        url = await fresh_database(server_url, "replicator_bench_calls")
        settings = _settings(sim, url, {"Task": {"mode": "poll"}})
        await run_backfills(settings, ["Task"])
        async with salesforce_client(settings) as client, open_store(settings) as store:
            poller = ObjectPoller(client, store, settings, "Task", settings.objects["Task"])
            await poller.applier.load_schema()
            await poller.capture_position()
            await poller.round()  # reads what the backfill read in the lookback window
            await sim_admin(sim, "POST", "/__sim/changes", [
                {"object": "Task", "type": "CREATE", "fields": {"Subject": f"bench {k}"}, "count": changes // 10}
                for k in range(10)])
            before = dict(client.calls_by_kind)
            await poller.round()
            busy = {k: v - before.get(k, 0) for k, v in client.calls_by_kind.items() if v - before.get(k, 0)}
            before = dict(client.calls_by_kind)
            await poller.round()
            idle = {k: v - before.get(k, 0) for k, v in client.calls_by_kind.items() if v - before.get(k, 0)}
    return {"busy": busy, "idle": idle}


async def main_async(small: int, large: int, changes: int) -> None:
    async with resolve_database(os.environ.get("DATABASE_URL")) as server_url:
        a, b = await backfill_calls(server_url, small), await backfill_calls(server_url, large)
        per_row = (b - a) / (large - small)
        fixed = a - per_row * small
        million = fixed + per_row * 1_000_000
        job = await backfill_calls(server_url, 1000, "Contact")
        polled = await poll_calls(server_url, changes)
    print(f"backfill Account {small:,} rows: {a} calls; {large:,} rows: {b} calls")
    print(f"  linear: {fixed:.1f} calls per job + {per_row * 1e6:.1f} per 1,000,000 rows "
          f"→ {million:.0f} calls per 1,000,000 rows backfilled (one object, default settings)")
    print(f"one small Bulk job (Contact, 1,000 rows, as a refresh of one object): {job} calls "
          f"→ refresh of 100 objects a day: 100 × {job} = {100 * job} calls a day")
    busy = sum(polled["busy"].values())
    print(f"poll round after {changes:,} changes: {busy} calls {polled['busy']} "
          f"→ {busy * 1000 / changes:.1f} calls per 1,000 changes polled (all in one round)")
    print(f"idle poll round: {sum(polled['idle'].values())} calls {polled['idle']}")


def main() -> None:
    ap = argparse.ArgumentParser(prog="python -m bench.api_calls", description=__doc__.split("\n\n")[0])
    ap.add_argument("--small", type=int, default=20_000, help="rows of the smaller backfill (default 20,000)")
    ap.add_argument("--large", type=int, default=200_000, help="rows of the larger backfill (default 200,000)")
    ap.add_argument("--changes", type=int, default=1000, help="records changed between two poll rounds")
    args = ap.parse_args()
    asyncio.run(main_async(args.small, args.large, args.changes))


if __name__ == "__main__":
    main()
