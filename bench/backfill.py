"""Backfill benchmark: replicator's Bulk backfill of N Account rows against a raw COPY of the same rows.

    python -m bench.backfill --records 1000000 [--repeat 3] [--parallel-pages 3] [--page-size 100000]

For each repeat, in the same run and on the same Postgres:
Each side starts after a CHECKPOINT, so neither pays for the other's dirty pages.
1. `replicator backfill Account` runs as a subprocess against the simulator (its own process); we take the
   time from job completion to the last committed page (extract + load, the part replicator controls), the
   end-to-end time, and the subprocess's peak RSS.
2. The ceiling: the same rows, as the simulator's CSV, already on local disk, loaded with one `COPY` into a
   table of the same shape (`LIKE … INCLUDING ALL`: same primary key, same generated columns).
Figures are medians; the ratio is backfill rows/s ÷ COPY rows/s. Results go to bench/results/ as JSON.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import asyncpg

from replicator.sim.admin_client import sim_admin

ROOT = Path(__file__).resolve().parent
RESULTS = ROOT / "results"
SERVER_URL = os.environ.get("DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/test")
DB = "replicator_bench"


def _db_url(server: str, name: str) -> str:
    import urllib.parse

    return urllib.parse.urlunsplit(urllib.parse.urlsplit(server)._replace(path="/" + name))


async def _fresh_db() -> str:
    conn = await asyncpg.connect(SERVER_URL)
    await conn.execute(f'DROP DATABASE IF EXISTS "{DB}" WITH (FORCE)')
    await conn.execute(f'CREATE DATABASE "{DB}"')
    await conn.close()
    return _db_url(SERVER_URL, DB)


async def _checkpoint(url: str) -> None:
    conn = await asyncpg.connect(url)
    try:
        await conn.execute("CHECKPOINT")
    finally:
        await conn.close()


def start_sim(records: int) -> tuple[subprocess.Popen, dict]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "replicator.sim", "--records", str(records), "--port", "0"],
        stdout=subprocess.PIPE,
    )
    line = proc.stdout.readline()
    if not line:
        raise SystemExit("simulator did not start")
    return proc, json.loads(line)


def write_config(sim: dict, url: str, args, obj: str = "Account") -> Path:
    cfg = Path(tempfile.mkstemp(suffix=".toml")[1])
    cfg.write_text(
        f"""[salesforce]
instance_url = "{sim['instance_url']}"
client_id = "{sim['client_id']}"
ca_file = "{sim['ca_file']}"
[postgres]
url = "{url}"
[backfill]
parallel_pages = {args.parallel_pages}
page_size = {args.page_size}
poll_max_s = 1.0
[objects.{obj}]
"""
    )
    return cfg


# The child reports its own peak resident memory at exit: VmHWM of its address space. Neither getrusage nor
# wait4 can say it: Linux carries the pre-exec address space's high-water mark (the forked copy of this
# process, ~90 MB) into the child's ru_maxrss, which hides any peak below this process's own size.
_PEAK_RSS_CHILD = """
import atexit, re, sys
def _peak():
    kb = re.search(r"VmHWM:\\s+(\\d+)", open("/proc/self/status").read()).group(1)
    sys.stderr.write('{"event": "bench.peak_rss", "kb": %s}\\n' % kb)
atexit.register(_peak)
sys.argv[0] = "replicator"
from replicator.cli import main
main()
"""


def run_backfill(cfg: Path, sim: dict, obj: str = "Account") -> dict:
    """`replicator backfill OBJ` as its own process: its log events, wall time and its own peak RSS."""
    env = dict(os.environ, REPLICATOR_SALESFORCE__CLIENT_SECRET=sim["client_secret"])
    env.pop("DATABASE_URL", None)  # it would win over the config file's database (environment > file)
    t0 = time.monotonic()
    out = subprocess.run(
        [sys.executable, "-c", _PEAK_RSS_CHILD, "--log-json", "backfill", "--config", str(cfg), obj],
        env=env, capture_output=True, text=True,
    )
    wall = time.monotonic() - t0
    if out.returncode != 0:
        raise SystemExit(f"backfill failed: {out.stderr[-2000:]}")
    events = [json.loads(line) for line in out.stderr.splitlines() if line.startswith("{")]
    peak = next(e["kb"] for e in events if e.get("event") == "bench.peak_rss")
    return {"wall_s": wall, "peak_rss_mb": peak / 1024, "events": events}


async def copy_ceiling(url: str, sim: dict, csv_path: Path, table: str = "account") -> float:
    """rows/s of one COPY of the same CSV into a table shaped like salesforce.<table>."""
    conn = await asyncpg.connect(url)
    await conn.execute("DROP TABLE IF EXISTS public.copy_ceiling")
    await conn.execute(f'CREATE TABLE public.copy_ceiling (LIKE salesforce."{table}" INCLUDING ALL)')
    header = csv_path.open("rb").readline().decode().strip()
    columns = [h.strip('"').lower() for h in header.split(",")]
    t0 = time.monotonic()
    status = await conn.copy_to_table(
        "copy_ceiling", schema_name="public", source=str(csv_path), columns=columns, format="csv",
        header=True, force_null=[c for c in columns if c != "id"],
    )
    elapsed = time.monotonic() - t0
    await conn.execute("DROP TABLE public.copy_ceiling")
    await conn.close()
    return int(status.split()[-1]) / elapsed


async def download_csv(sim: dict, fields: list[str], path: Path) -> None:
    """The same rows as one CSV file (header once), fetched from the simulator before timing."""
    from .ceilings import bulk_download  # (ceilings imports this module)

    await bulk_download(sim, fields, path)


def machine() -> dict:
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return {"cores": os.cpu_count(), "memory_gib": round(mem, 1), "python": platform.python_version(),
            "platform": platform.platform()}


async def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--records", type=int, default=1_000_000)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--parallel-pages", type=int, default=3)
    ap.add_argument("--page-size", type=int, default=100_000)
    args = ap.parse_args()
    from replicator.observe.logs import setup_logging

    setup_logging("warning")
    sim_proc, sim = start_sim(args.records)
    runs = []
    try:
        counts = (await sim_admin(sim, "GET", "/__sim/counts")).json()
        for i in range(args.repeat):
            url = await _fresh_db()
            await _checkpoint(url)
            cfg = write_config(sim, url, args)
            result = run_backfill(cfg, sim)
            done = next(e for e in result["events"] if e.get("event") == "backfill.done")
            span, rows = done["load_s"], done["rows"]
            conn = await asyncpg.connect(url)
            pg_version = await conn.fetchval("SHOW server_version")
            fields = [r["column_name"] for r in await conn.fetch(
                "SELECT column_name FROM information_schema.columns WHERE table_schema='salesforce'"
                " AND table_name='account' AND column_name NOT LIKE '\\_sf\\_%' ORDER BY ordinal_position")]
            await conn.close()
            with tempfile.TemporaryDirectory() as tmp:
                csv_path = Path(tmp) / "account.csv"
                await download_csv(sim, fields, csv_path)
                await _checkpoint(url)  # the backfill's dirty pages must not slow the ceiling down
                copy_rate = await copy_ceiling(url, sim, csv_path)
            run = {
                "rows": rows,
                "backfill_rows_per_s": rows / span,
                "end_to_end_rows_per_s": rows / result["wall_s"],
                "copy_rows_per_s": copy_rate,
                "ratio_to_copy": (rows / span) / copy_rate,
                "peak_rss_mb": result["peak_rss_mb"],
            }
            runs.append(run)
            print(json.dumps({"repeat": i + 1, **{k: round(v, 3) for k, v in run.items()}}), flush=True)
    finally:
        sim_proc.terminate()
        sim_proc.wait()
    med = {k: statistics.median(r[k] for r in runs) for k in runs[0]}
    med["peak_rss_mb"] = max(r["peak_rss_mb"] for r in runs)
    report = {
        "scenario": "backfill",
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "command": "python -m bench.backfill " + " ".join(sys.argv[1:]),
        "machine": {**machine(), "postgres": pg_version},
        "org_rows": counts["Account"]["total"],
        "parameters": vars(args),
        "runs": runs,
        "median": med,
    }
    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / (f"{dt.date.today().isoformat()}-backfill-{args.records}"
                     f"-p{args.parallel_pages}-page{args.page_size}.json")
    out.write_text(json.dumps(report, indent=2))
    print(f"\nbackfill {med['backfill_rows_per_s']:,.0f} rows/s (end to end {med['end_to_end_rows_per_s']:,.0f}), "
          f"COPY {med['copy_rows_per_s']:,.0f} rows/s, ratio {med['ratio_to_copy']:.2f}x COPY, "
          f"peak RSS {med['peak_rss_mb']:.0f} MB  -> {out.relative_to(ROOT.parent)}")


if __name__ == "__main__":
    asyncio.run(main())
