"""The whole path at size: backfill, then changes of every kind, then `replicator verify`.

    python -m bench.e2e [--records 200000] [--changes 100000] [--rate 5000]

The simulator runs in its own process with 4 objects of `--records` records; `replicator run` runs in another
and backfills them, then the org makes `--changes` changes (transactions of up to 4 events, events naming up
to 3 records, creates/updates/deletes/undeletes, 5% duplicate deliveries, events over 64 KB as GAP events, one
transaction large enough for GAP_OVERFLOW, and a new field mid-way). When the stream has drained, the service
stops (SIGTERM) and `replicator verify` compares every table with the org. Prints the figures and exits 0 only
when every table is equal.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import subprocess
import sys
import tempfile
import time

from replicator.postgres.server import fresh_database
from replicator.sim.admin_client import sim_admin

from .backfill import SERVER_URL
from .stream import q, start_sim, until

OBJECTS = {"Account": {}, "Contact": {}, "Opportunity": {}, "Invoice__c": {"key": "External_Id__c"}}


def config(sim: dict, url: str) -> str:
    lines = ["[salesforce]", f'instance_url = "{sim["instance_url"]}"', f'client_id = "{sim["client_id"]}"',
             f'ca_file = "{sim["ca_file"]}"', f'pubsub_endpoint = "{sim["pubsub_endpoint"]}"',
             "[postgres]", f'url = "{url}"', "[backfill]", "poll_max_s = 1.0", "[stream]", "batch_max_wait_s = 0.1", "[service]", "port = 0"]
    for name, opts in OBJECTS.items():
        lines.append(f"[objects.{name}]")
        lines += [f'{k} = "{v}"' for k, v in opts.items()]
    return "\n".join(lines) + "\n"


async def traffic(sim: dict, changes: int, rate: int, kill_at: list[int] | None = None, restart=None) -> None:
    """Run the generator until it has made `changes` changes in all (the setting counts from the start);
    when the org has made each count in `kill_at`, `restart()` kills and restarts replicator."""
    await sim_admin(sim, "PUT", "/__sim/traffic", {
        "running": True, "rate": rate, "changes": changes, "transaction_size": 4, "records_per_event": 3,
        "collision_rate": 0.2, "mix": {"CREATE": 0.15, "UPDATE": 0.7, "DELETE": 0.1, "UNDELETE": 0.05}})

    async def made(n):
        return (await sim_admin(sim, "GET", "/__sim/traffic")).json()["made"] >= n
    for point in kill_at or []:
        await until(lambda p=point: made(p), timeout=changes / max(rate, 1) * 5 + 300, interval=0.05)
        restart()

    async def stopped():
        return (await sim_admin(sim, "GET", "/__sim/traffic")).json()["running"] is False
    await until(stopped, timeout=changes / max(rate, 1) * 5 + 300, interval=0.5)


async def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--records", type=int, default=200_000)
    ap.add_argument("--changes", type=int, default=100_000)
    ap.add_argument("--rate", type=int, default=5_000)
    ap.add_argument("--kills", type=int, default=0,
                    help="SIGKILL replicator at this many random moments of the traffic and restart it; then the "
                         "count of applied events must equal the count published (duplicates are turned off)")
    args = ap.parse_args()
    sim_proc, sim = start_sim(args.records)
    url = await fresh_database(SERVER_URL, "replicator_bench_e2e")
    cfg = tempfile.NamedTemporaryFile("w", suffix=".toml", delete=False)
    cfg.write(config(sim, url))
    cfg.close()
    env = dict(os.environ, REPLICATOR_SALESFORCE__CLIENT_SECRET=sim["client_secret"])
    log = open(tempfile.mktemp(suffix=".log"), "w")
    def start() -> subprocess.Popen:
        return subprocess.Popen([sys.executable, "-m", "replicator.cli", "--log-json", "run", "--config", cfg.name],
                                env=env, stdout=log, stderr=log)

    run = start()

    def restart() -> None:
        nonlocal run
        run.send_signal(signal.SIGKILL)
        run.wait()
        run = start()

    rng = __import__("random").Random(7)
    kills = sorted(rng.sample(range(1_000, args.changes - 1_000), args.kills)) if args.kills else []
    figures: dict = {"records_per_object": args.records, "changes": args.changes, "log": log.name}
    try:
        t0 = time.monotonic()
        await until(lambda: q(url, "SELECT count(*) = 4 FROM replicator.objects WHERE phase = 'STREAMING'"),
                    timeout=3600, interval=0.5)
        figures["backfill_s"] = round(time.monotonic() - t0, 1)
        await sim_admin(sim, "PUT", "/__sim/faults", {"gap_event_bytes": 65536,
                                                     "duplicate_rate": 0 if kills else 0.05,
                                                     "overflow_threshold": 100_000})
        t1 = time.monotonic()
        half = args.changes // 2
        await traffic(sim, half, args.rate, [k for k in kills if k < half], restart)
        await sim_admin(sim, "POST", "/__sim/schema/Account/fields", {"name": "Segment__c", "type": "string"})
        await traffic(sim, args.changes, args.rate, [k for k in kills if k >= half], restart)
        figures["kills"] = len(kills)
        await sim_admin(sim, "PUT", "/__sim/faults", {"overflow_threshold": 500})
        await sim_admin(sim, "PUT", "/__sim/traffic", {"transaction_size": 1, "records_per_event": 1})
        records = (json.loads(line) for line in
                   (await sim_admin(sim, "GET", "/__sim/objects/Contact/records")).content.splitlines())
        ids = [r["Id"] for r in records if not r["IsDeleted"]][:600]
        await sim_admin(sim, "POST", "/__sim/changes", [
            {"object": "Contact", "type": "UPDATE", "ids": ids, "fields": {"Phone": "overflow"}}])
        stats = (await sim_admin(sim, "GET", "/__sim/stats")).json()
        figures["changes_made"] = stats["changes"]["total"]
        figures["events_published"] = stats["events_published"]
        await until(lambda: q(url, f"SELECT sum(events_applied) >= {stats['events_published']} "
                                   "FROM replicator.checkpoints"), timeout=1800, interval=0.5)
        await until(lambda: q(url, "SELECT sum(resyncs) >= 1 AND bool_and(phase = 'STREAMING') "
                                   "FROM replicator.objects"), timeout=1800, interval=0.5)  # the overflow's resync
        figures["stream_s"] = round(time.monotonic() - t1, 1)
        figures["resyncs"] = await q(url, "SELECT sum(resyncs) FROM replicator.objects")
        figures["events_applied"] = await q(url, "SELECT sum(events_applied) FROM replicator.checkpoints")
        figures["dead_letters"] = await q(url, "SELECT count(*) FROM replicator.dead_letters")
    finally:
        run.send_signal(signal.SIGTERM)
        figures["run_exit"] = run.wait(timeout=120)
    verify = subprocess.run([sys.executable, "-m", "replicator.cli", "verify", "--config", cfg.name],
                            env=env, capture_output=True, text=True)
    sim_proc.terminate()
    sim_proc.wait()
    figures["verify_exit"] = verify.returncode
    figures["verify"] = verify.stdout.strip().splitlines() + verify.stderr.strip().splitlines()[-3:]
    print(json.dumps(figures, indent=2, default=int))
    exact = not kills or figures.get("events_applied") == figures.get("events_published")
    return 0 if verify.returncode == 0 and figures["run_exit"] == 0 and exact else 1


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
