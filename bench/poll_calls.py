"""API calls per polling round, as the simulator counts them (docs/polling.md): `python -m bench.poll_calls`.

Task is polled (`mode = "poll"`, default settings but `poll_interval_s`); after its backfill each case changes the
org, then one round runs. Calls are `DailyApiRequests` used (REST `/limits`, every `/services/data` request counts,
Bulk API 2.0 included) before and after the round, less the call that reads it. Between cases the clock passes the
lookback, so a round re-reads nothing of the case before (rounds are `poll_interval_s` apart in a service).
"""

from __future__ import annotations

import asyncio
import sys
import time

from replicator.app.runtime import open_store, salesforce_client
from replicator.app.service import Service
from replicator.config import load_settings
from replicator.pipeline.poll import ObjectPoller
from replicator.postgres.server import fresh_database
from replicator.sim.admin_client import sim_admin
from replicator.sim.server import SimulatorThread

from .stream import until

SERVER = "postgresql://127.0.0.1:5432/postgres"


def _settings(sim: dict, url: str):
    return load_settings(overrides={
        "salesforce": {"instance_url": sim["instance_url"], "client_id": sim["client_id"],
                       "client_secret": sim["client_secret"], "ca_file": sim["ca_file"],
                       "pubsub_endpoint": sim["pubsub_endpoint"]},
        "postgres": {"url": url, "schema": "bench_poll"},
        "backfill": {"poll_max_s": 0.2},
        "service": {"port": 0, "host": "127.0.0.1"},
        "objects": {"Task": {"mode": "poll", "poll_interval_s": 3600}},
    })


async def _used(client) -> int:
    limits = (await client.limits())["DailyApiRequests"]
    return limits["Max"] - limits["Remaining"]


async def _case(sim, client, poller: ObjectPoller, label: str, changes: list[dict], wait_s: float) -> dict:
    for body in changes:
        await sim_admin(sim, "POST", "/__sim/changes", body)
    settled = time.time() + wait_s
    await until(lambda: _passed(settled), timeout=wait_s + 5)
    before, rounds_bulk = await _used(client), poller.bulk_rounds
    started = time.monotonic()
    if label.startswith("key reconciliation"):
        await poller.reconcile()
    else:
        await poller.round()
    took = time.monotonic() - started
    calls = await _used(client) - before - 1
    if label.startswith("key reconciliation"):
        label = f"key reconciliation ({poller.reconciled_ids:,} ids)"
    return {"case": label, "calls": calls, "bulk": poller.bulk_rounds > rounds_bulk, "seconds": round(took, 2)}


async def _passed(when: float) -> bool:
    return time.time() >= when


async def main(records: int = 20_000) -> list[dict]:
    with SimulatorThread(records=records, seed=5) as thread:
        sim = thread.info
        settings = _settings(sim, await fresh_database(SERVER, "replicator_bench_poll"))
        svc = Service(settings)
        task = asyncio.create_task(svc.run())
        try:
            await until(lambda: _phase_streaming(svc), timeout=600)
        finally:
            svc.stop.set()
            await task
        wait = settings.poll.lookback_s + 1.5
        creates = [{"object": "Task", "type": "CREATE", "fields": {"Subject": "bench"}, "count": 1}]
        async with salesforce_client(settings) as client, open_store(settings) as store:
            poller = ObjectPoller(client, store, settings, "Task", settings.objects["Task"])
            await poller.prepare()
            await _case(sim, client, poller, "warm-up", [], wait)
            out = [await _case(sim, client, poller, "idle round", [], wait)]
            for n in (1, 1_000, 5_000, 9_999, 25_000):
                out.append(await _case(sim, client, poller, f"{n:,} records changed", [
                    [{**creates[0], "count": n}]], wait))
            out.append(await _case(sim, client, poller, "key reconciliation", [], 0))
        return out


async def _phase_streaming(svc: Service) -> bool:
    h = svc.metrics.object("Task")
    return h.phase == "STREAMING" and h.mode == "poll" and h.checkpoint_saved is not None


if __name__ == "__main__":
    rows = asyncio.run(main(int(sys.argv[1]) if len(sys.argv) > 1 else 20_000))
    print("| case | API calls | Bulk | seconds |\n|---|---|---|---|")
    for r in rows:
        print(f"| {r['case']} | {r['calls']} | {'yes' if r['bulk'] else 'no'} | {r['seconds']} |")
