"""Many objects in one process, the objects500 scenario: 500 generated small custom objects (`replicator sim
--objects 500`), backfilled and streamed by one `replicator run`, once with one subscription per object and once
over ONE channel (`stream.channel = "/data/ChangeEvents"`).

Figures per mode:
- `startup_s`: `replicator run` started → every object STREAMING (mode decided, described, position captured,
  extracted) and then every subscription serving (each topic's checkpoint committed again after that, a keepalive's
  at least);
- `peak_rss_mb`: the peak resident memory of the `replicator run` process (VmHWM), read before it stops;
- `lag_p50_s`, `lag_p99_s`: commit → applied, over every row the stream wrote while the org made `rate` changes a
  second spread over all 500 objects for `seconds` seconds: `_sf_synced_at` (the applying transaction's start)
  minus `_sf_version` (the change's commitTimestamp; the simulator keeps milliseconds here:
  `--timestamp-precision ms`). Goals (issue 12 §3): peak RSS ≤ 500 MB, lag p99 ≤ 1 s.
- `subscriptions`: Subscribe calls open at the end; `peak_streams_per_connection`: the most one HTTP/2 connection
  held at once (the simulator counts them; Salesforce allows 100 concurrent streams on one).

`python -m bench --only objects500` (`--quick`: 50 objects, 300 changes/s for 5 s).
"""

from __future__ import annotations

import math
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from replicator.postgres.server import fresh_database
from replicator.sim.admin_client import sim_admin

from .harness import start_sim, stop_sim, sweep
from .stream import q, until

CHANNEL = "/data/ChangeEvents"


def names(n: int) -> list[str]:
    return [f"Gen{k:03d}__c" for k in range(1, n + 1)]


def config(sim: dict, url: str, objects: list[str], channel: str) -> str:
    lines = ["[salesforce]", f'instance_url = "{sim["instance_url"]}"', f'client_id = "{sim["client_id"]}"',
             f'ca_file = "{sim["ca_file"]}"', f'pubsub_endpoint = "{sim["pubsub_endpoint"]}"',
             "[postgres]", f'url = "{url}"', "[backfill]", "poll_max_s = 0.5", "[stream]", "batch_max_wait_s = 0.1",
             f'channel = "{channel}"', "[service]", "port = 0"]
    for name in objects:
        lines.append(f"[objects.{name}]")
    return "\n".join(lines) + "\n"


def peak_rss_mb(pid: int) -> float:
    """VmHWM of a running process (Linux), in MB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return round(int(line.split()[1]) / 1024, 1)
    return math.nan


async def _all_streaming(url: str, n: int) -> bool:
    return bool(await q(url, f"SELECT count(*) >= {n} FROM replicator.objects WHERE phase = 'STREAMING'"))


async def _subscribed(url: str, topics: int, after) -> bool:
    """Every topic's checkpoint committed since `after` (a keepalive's, at least): its subscription is serving."""
    return bool(await q(url, f"SELECT count(*) >= {topics} FROM replicator.checkpoints "
                             f"WHERE updated_at > '{after.isoformat()}'::timestamptz"))


async def _made(sim: dict, changes: int) -> bool:
    return (await sim_admin(sim, "GET", "/__sim/traffic")).json()["made"] >= changes


async def _drained(sim: dict, url: str) -> bool:
    published = (await sim_admin(sim, "GET", "/__sim/stats")).json()["events_published"]
    return bool(await q(url, f"SELECT coalesce(sum(events_applied), 0) >= {published} FROM replicator.checkpoints"))


async def lags(url: str, objects: list[str], since: float) -> list[float]:
    """Commit → applied seconds of every row the stream wrote after `since` (epoch seconds)."""
    parts = [f'SELECT extract(epoch FROM _sf_synced_at - _sf_version) AS lag FROM salesforce."{n.lower()}" '
             f"WHERE _sf_stream_position IS NOT NULL AND _sf_version >= to_timestamp({since})" for n in objects]
    got = await q(url, "SELECT array_agg(lag ORDER BY lag) FROM (" + " UNION ALL ".join(parts) + ") s")
    return [float(x) for x in got or []]


def _percentile(values: list[float], p: float) -> float:
    return round(values[min(len(values) - 1, int(len(values) * p))], 3)


async def run_mode(server_url: str, database: str, n: int, channel: str, rate: int, seconds: float) -> dict:
    """One `replicator run` of `n` generated objects on a new org and database; its figures."""
    proc, sim = start_sim(100, "--objects", str(n), "--object-records", "20", "--keepalive-seconds", "1",
                          "--timestamp-precision", "ms", "--cdc-objects", ",".join(names(n)))
    url = await fresh_database(server_url, database)
    objects = names(n)
    cfg = Path(tempfile.mkstemp(suffix=".toml")[1])
    cfg.write_text(config(sim, url, objects, channel))
    log = tempfile.NamedTemporaryFile("w", suffix=".log", prefix="bench-objects500-", delete=False)
    env = dict(os.environ, REPLICATOR_SALESFORCE__CLIENT_SECRET=sim["client_secret"])
    env.pop("DATABASE_URL", None)
    run = subprocess.Popen([sys.executable, "-m", "replicator.cli", "--log-json", "run", "--config", str(cfg)],
                           env=env, stdout=log, stderr=log)
    try:
        t0 = time.monotonic()
        await until(lambda: _all_streaming(url, n), timeout=1800, interval=0.2)
        streaming_at = await q(url, "SELECT now()")
        await until(lambda: _subscribed(url, 1 if channel else n, streaming_at), timeout=600, interval=0.2)
        figures: dict = {"startup_s": round(time.monotonic() - t0, 1)}
        since = time.time()
        changes = int(rate * seconds)
        await sim_admin(sim, "PUT", "/__sim/traffic", {"running": True, "rate": rate, "changes": changes,
                                                       "objects": objects, "transaction_size": 1})
        await until(lambda: _made(sim, changes), timeout=seconds * 10 + 600, interval=0.2)
        await until(lambda: _drained(sim, url), timeout=seconds * 10 + 600, interval=0.2)
        stats = (await sim_admin(sim, "GET", "/__sim/stats")).json()
        samples = await lags(url, objects, since)
        if not samples:
            raise RuntimeError(f"no row written by the stream since the traffic began; replicator's log: {log.name}")
        figures.update(peak_rss_mb=peak_rss_mb(run.pid), lag_p50_s=_percentile(samples, 0.5),
                       lag_p99_s=_percentile(samples, 0.99), rows_sampled=len(samples),
                       events_published=stats["events_published"],
                       subscriptions=stats["subscribers"],
                       peak_streams_per_connection=stats["peak_streams_per_connection"])
    finally:
        run.send_signal(signal.SIGTERM)
        exit_code = run.wait(timeout=120)
        stop_sim(proc)
        log.close()
        cfg.unlink()
    if exit_code != 0:
        raise RuntimeError(f"replicator run exited {exit_code}; its log: {log.name}")
    os.unlink(log.name)
    return figures


async def scenario(plan) -> dict:
    """Both modes, one after the other, on the same sizes."""
    n, rate, seconds = (50, 300, 5.0) if plan.quick else (500, 1_000, 30.0)
    rows = []
    for label, channel in (("one subscription per object", ""), (f"one channel ({CHANNEL})", CHANNEL)):
        figures = await run_mode(plan.server_url, plan.db("_objects500"), n, channel, rate, seconds)
        rows.append({"x": label, **figures})
    note = (f"{n} generated custom objects of 20 records (8 fields), backfilled then streamed by one `replicator "
            f"run`; {rate:,} changes/s spread over all of them for {seconds:g} s; lag = `_sf_synced_at` − "
            "commitTimestamp of every row the stream wrote; goals: peak RSS ≤ 500 MB, lag p99 ≤ 1 s")
    return {"figures": {"objects": n, "rate": rate},
            "sweeps": [sweep("many objects", "mode", rows, ["startup_s", "peak_rss_mb", "lag_p99_s"], note)]}
