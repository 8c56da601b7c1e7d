"""`replicator demo`: the simulator, a Postgres, and a backfill of every simulated object, in one command.

The demo owns a database of its own (`replicator_demo`, made anew each run) on the server it finds, so it
never touches the tables or state of a real deployment on the same server.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import subprocess
import sys
from collections.abc import AsyncIterator

import orjson
from rich.console import Console
from rich.table import Table

from ..config import load_settings
from ..model import ReplicatorError
from ..observe import setup_logging
from ..postgres.server import fresh_database, resolve_database
from ..postgres.status import table_rows
from ..sim.admin_client import sim_admin
from .commands import _Bars, run_backfills
from .runtime import postgres_pool

DEMO_DATABASE = "replicator_demo"
DEMO_OBJECTS = {
    "Account": {},
    "Contact": {},
    "Opportunity": {},
    "Invoice__c": {"key": "External_Id__c"},
}


@contextlib.asynccontextmanager
async def simulator(records: int, seed: int) -> AsyncIterator[dict]:
    """Run `python -m replicator.sim` in its own process (its own core) and yield its ready line."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "replicator.sim", "--records", str(records), "--seed", str(seed), "--port", "0",
        stdout=subprocess.PIPE,
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


async def demo_command(records: int, seed: int, log_json: bool = False) -> int:
    console = Console()
    if not log_json:
        setup_logging("warning")  # the demo shows bars and a table; per-page log lines would bury them
    console.print(f"[bold]replicator demo[/]: simulated org with {records:,} records per object")
    async with simulator(records, seed) as sim, resolve_database(os.environ.get("DATABASE_URL"), keep=True) as server_url:
        url = await fresh_database(server_url, DEMO_DATABASE)
        console.print(f"org {sim['org_id']} at {sim['instance_url']}; Postgres database {DEMO_DATABASE}")
        settings = load_settings(
            overrides={
                "salesforce": {
                    "instance_url": sim["instance_url"],
                    "client_id": sim["client_id"],
                    "client_secret": sim["client_secret"],
                    "ca_file": sim["ca_file"],
                },
                "postgres": {"url": url},
                "objects": DEMO_OBJECTS,
            }
        )
        names = list(DEMO_OBJECTS)
        bars = _Bars(names)
        with bars.bars:
            results = await run_backfills(settings, names, bars.update)
        counts = (await sim_admin(sim, "GET", "/__sim/counts")).json()
        async with postgres_pool(settings) as pool, pool.acquire() as conn:
            table = Table("object", "rows in org", "rows in Postgres", "seconds", "load rows/s", "result")
            ok = True
            for name in names:
                r = results[name]
                pg_rows = await table_rows(conn, settings.postgres.schema_, name.lower())
                org_rows = counts[name]["total"]
                good = not isinstance(r, BaseException) and pg_rows == org_rows
                ok &= good
                failed = isinstance(r, BaseException)
                seconds = "-" if failed else f"{r.finished - r.started:.1f}"
                rate = "-" if failed else f"{r.rows_done / max(r.load_s, 1e-9):,.0f}"
                table.add_row(name, f"{org_rows:,}", f"{pg_rows:,}", seconds, rate,
                              "equal" if good else f"[red]{r}[/]")
        console.print(table)
    psql = _psql_line(url)
    console.print(f"Look at the data: [bold]{psql} -c 'SELECT id, name, billingcity FROM salesforce.account LIMIT 5'[/]")
    if server_url.startswith("postgresql://postgres@127.0.0.1") or os.environ.get("DATABASE_URL"):
        return 0 if ok else 1
    console.print("The demo's own Postgres keeps running for that; stop it with: replicator demo --stop-postgres")
    return 0 if ok else 1


def _psql_line(url: str) -> str:
    return f"psql '{url}'"
