"""`replicator demo`: the simulator with live traffic, a Postgres, and the service, in one command.

It backfills every simulated object, streams the org's changes while showing a live view per object (rows,
events/s, lag, phase), stops cleanly after `--duration` seconds, refreshes the columns change events never carry
(pipeline/refresh.py), checks every table against the org (a fresh Bulk extract compared row by row) and prints a
summary and a psql line. The demo owns a database of its own
(`replicator_demo`, made anew each run) on the server it finds, so it never touches a real deployment's tables.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import subprocess
import sys
import time
from collections.abc import AsyncIterator

import orjson
from rich.console import Console
from rich.table import Table

from ..config import load_settings
from ..lifecycle import Phase
from ..model import ReplicatorError
from ..observe.logs import setup_logging
from ..pipeline.refresh import refresh_object
from ..pipeline.verify import verify_object
from ..postgres.server import fresh_database, resolve_database
from ..sim.admin_client import sim_admin
from .demo_view import DemoView, summary_table
from .runtime import open_store, salesforce_client
from .service import Service

DEMO_DATABASE = "replicator_demo"
DEMO_OBJECTS = {
    "Account": {},
    "Contact": {},
    "Opportunity": {},
    "Invoice__c": {"key": "External_Id__c"},
}
_DRAIN_S = 60.0  # after the traffic pauses: the longest wait for the stream to apply what is left


@contextlib.asynccontextmanager
async def simulator(records: int, seed: int, *extra: str) -> AsyncIterator[dict]:
    """Run `python -m replicator.sim` in its own process (its own core) and yield its ready line."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "replicator.sim", "--records", str(records), "--seed", str(seed), "--port", "0",
        *extra, stdout=subprocess.PIPE,
    )
    try:
        line = await asyncio.wait_for(proc.stdout.readline(), timeout=120)
        if not line:
            raise ReplicatorError("the simulator exited before it was ready")
        yield orjson.loads(line)
    finally:
        if proc.returncode is None:
            proc.terminate()
            try:
                await asyncio.wait_for(proc.wait(), timeout=10)
            except TimeoutError:
                proc.kill()


async def demo_command(records: int, seed: int, duration: float = 60.0, rate: float = 200.0,
                       log_json: bool = False) -> int:
    console = Console(soft_wrap=True)  # long lines (the psql command) stay whole for copy and paste
    live = console.is_terminal and not log_json
    if not log_json:
        setup_logging("warning")  # the view shows progress; per-batch log lines would bury it
    console.print(f"[bold]replicator demo[/]: a simulated org with {records:,} records per object and "
                  f"{rate:g} changes/s of live traffic, for {duration:g} s")
    traffic = ["--rate", str(rate), "--transaction-size", "3", "--records-per-event", "2", "--keepalive-seconds", "1"]
    async with simulator(records, seed, *traffic) as sim, \
            resolve_database(os.environ.get("DATABASE_URL"), keep=True) as server_url:
        url = await fresh_database(server_url, DEMO_DATABASE)
        console.print(f"org {sim['org_id']} at {sim['instance_url']}; Postgres database {DEMO_DATABASE}")
        settings = load_settings(overrides={
            "salesforce": {"instance_url": sim["instance_url"], "client_id": sim["client_id"],
                           "client_secret": sim["client_secret"], "ca_file": sim["ca_file"],
                           "pubsub_endpoint": sim["pubsub_endpoint"]},
            "postgres": {"url": url},
            "objects": DEMO_OBJECTS,
            "stream": {"position_timeout_s": 30},
            "service": {"port": 0, "host": "127.0.0.1"},
        })
        svc = Service(settings)
        task = asyncio.create_task(svc.run())
        view = DemoView(svc, settings.postgres.schema_, console, live=live)
        try:
            await view.run_until(task, duration)
            if not task.done():
                await sim_admin(sim, "PUT", "/__sim/traffic", {"running": False})
                await _drained(svc, task, since=time.time())
        finally:
            svc.stop.set()
            code = await task  # the service's own error, if it failed, surfaces here as one line
        console.print("stopped cleanly; refreshing what changes without an event (formula fields, LastViewedDate, "
                      "LastActivityDate), then comparing every table with the org (a fresh Bulk extract) …")
        async with salesforce_client(settings) as client, open_store(settings) as store:
            equal = {}
            for name in DEMO_OBJECTS:
                await refresh_object(client, store, settings, name)  # what `replicator refresh` runs
                diff, _ = await verify_object(client, store, settings, name)
                equal[name] = diff
            counts = (await sim_admin(sim, "GET", "/__sim/counts")).json()
            table: Table = await summary_table(store, settings.postgres.schema_, svc, counts, equal)
        console.print(table)
    ok = code == 0 and all(d.equal for d in equal.values())
    console.print(f"Look at the data: [bold]psql '{url}' -c 'SELECT id, name, billingcity, _sf_version "
                  f"FROM salesforce.account ORDER BY _sf_version DESC LIMIT 5'[/]")
    if not (server_url.startswith("postgresql://postgres@127.0.0.1") or os.environ.get("DATABASE_URL")):
        console.print("The demo's own Postgres keeps running for that; stop it with: replicator demo --stop-postgres")
    return 0 if ok else 1


async def _drained(svc: Service, task: asyncio.Task, since: float) -> None:
    """Wait until every object has been seen caught up (connected, nothing left to apply) after `since` plus
    one keepalive interval, so events still in flight when the traffic paused are applied too."""
    deadline = time.monotonic() + _DRAIN_S
    while time.monotonic() < deadline and not task.done():
        objects = svc.metrics.objects.values()
        if all(h.phase == Phase.STREAMING and h.connected and h.idle and (h.caught_up_at or 0) > since + 1.5
               for h in objects):
            return
        await asyncio.wait([task], timeout=0.2)
