"""The whole path at size, the e2e scenario: backfill, then changes of every kind, then `replicator verify`.

The simulator runs in its own process with 4 objects of `records` records; `replicator run` runs in another and
backfills them, then the org makes `changes` changes (transactions of up to 4 events, events naming up to 3
records, creates/updates/deletes/undeletes, 5% duplicate deliveries, events over 64 KB as GAP events, one
transaction large enough for GAP_OVERFLOW, and a new field mid-way). When the stream has drained, the service
stops (SIGTERM) and `replicator verify` compares every table with the org. With `kills`, `replicator run` is
SIGKILLed at that many random moments of the traffic and restarted (duplicate deliveries off, so the count of
applied events must equal the count published). A run that does not end equal raises: the scenario fails.

`python -m bench --only e2e` (sweep over kills); this module was the script `python -m bench.e2e`.
tests/integration/test_stream_e2e.py runs the same path at CI size in one process.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from replicator.postgres.server import fresh_database
from replicator.sim.admin_client import sim_admin

from .harness import start_sim, stop_sim
from .stream import org_records, q, until

OBJECTS = {"Account": {}, "Contact": {}, "Opportunity": {}, "Invoice__c": {"key": "External_Id__c"}}


def config(sim: dict, url: str) -> str:
    lines = ["[salesforce]", f'instance_url = "{sim["instance_url"]}"', f'client_id = "{sim["client_id"]}"',
             f'ca_file = "{sim["ca_file"]}"', f'pubsub_endpoint = "{sim["pubsub_endpoint"]}"',
             "[postgres]", f'url = "{url}"', "[backfill]", "poll_max_s = 1.0", "[stream]", "batch_max_wait_s = 0.1",
             "[service]", "port = 0"]
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


class _Replicator:
    """`replicator run` as a process of its own, logging to `log`; `restart()` SIGKILLs it and starts it again."""

    def __init__(self, cfg: Path, sim: dict, log):
        self.args = [sys.executable, "-m", "replicator.cli", "--log-json", "run", "--config", str(cfg)]
        # One replica id for every restart: it takes its units over at once (docs/operating.md "One writer"), as the
        # restarts measured before leases did, rather than after the killed process's lease expires.
        self.env = dict(os.environ, REPLICATOR_SALESFORCE__CLIENT_SECRET=sim["client_secret"],
                        REPLICATOR_SERVICE__REPLICA_ID="bench")
        self.env.pop("DATABASE_URL", None)  # it would win over the config file's database (environment > file)
        self.log = log
        self.proc = self._start()

    def _start(self) -> subprocess.Popen:
        return subprocess.Popen(self.args, env=self.env, stdout=self.log, stderr=self.log)

    def restart(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()
        self.proc = self._start()

    def stop(self) -> int:
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout=120)


async def run(server_url: str, database: str, records: int, changes: int, rate: int, kills: int) -> dict:
    """One run on a new org and a new database; its figures. Raises when a table differs from the org, `run`
    does not exit 0, or (with kills) an event was applied twice or lost."""
    proc, sim = start_sim(records)
    url = await fresh_database(server_url, database)
    cfg = Path(tempfile.mkstemp(suffix=".toml")[1])
    cfg.write_text(config(sim, url))
    log = tempfile.NamedTemporaryFile("w", suffix=".log", prefix="bench-e2e-", delete=False)
    try:
        rng = random.Random(7)
        kill_at = sorted(rng.sample(range(1_000, changes - 1_000), kills)) if kills else []
        figures: dict = {}
        replicator = _Replicator(cfg, sim, log)
        try:
            t0 = time.monotonic()
            await until(lambda: q(url, "SELECT count(*) = 4 FROM replicator.objects WHERE phase = 'STREAMING'"),
                        timeout=3600, interval=0.5)
            figures["backfill_s"] = time.monotonic() - t0
            await sim_admin(sim, "PUT", "/__sim/faults", {"gap_event_bytes": 65536,
                                                         "duplicate_rate": 0 if kills else 0.05,
                                                         "overflow_threshold": 100_000})
            t1 = time.monotonic()
            await changes_then_overflow(sim, url, changes, rate, kill_at, replicator.restart, threshold=500, records=600)
            figures["stream_s"] = time.monotonic() - t1
            figures.update(await counts(sim, url))
        finally:
            figures["run_exit"] = replicator.stop()
        verified = verify(cfg, replicator.env)
    finally:
        stop_sim(proc)
        log.close()
        cfg.unlink()
    figures.update(verdict(verified))
    exact = not kills or figures["events_applied"] == figures["events_published"]
    if verified.returncode != 0 or figures["run_exit"] != 0 or not exact:
        raise RuntimeError(f"e2e with {kills} kills did not end equal: {figures}; verify: {verified.stdout[-2000:]} "
                           f"{verified.stderr[-1000:]}; replicator's log: {log.name}")
    os.unlink(log.name)
    return figures


async def changes_then_overflow(sim: dict, url: str, changes: int, rate: int, kill_at: list[int], restart,
                                threshold: int, records: int) -> None:
    """The traffic's two halves with a field added between them (kills at the counts in `kill_at`), then one
    overflowing transaction; returns once every event is applied and the overflow's resync done."""
    half = changes // 2
    await traffic(sim, half, rate, [k for k in kill_at if k < half], restart)
    await sim_admin(sim, "POST", "/__sim/schema/Account/fields", {"name": "Segment__c", "type": "string"})
    await traffic(sim, changes, rate, [k for k in kill_at if k >= half], restart)
    await overflow(sim, threshold, records)
    await drained(sim, url)


async def overflow(sim: dict, threshold: int, records: int) -> None:
    """One transaction over the (lowered) overflow threshold: GAP_OVERFLOW, which the stream answers with a resync."""
    await sim_admin(sim, "PUT", "/__sim/faults", {"overflow_threshold": threshold})
    await sim_admin(sim, "PUT", "/__sim/traffic", {"transaction_size": 1, "records_per_event": 1})
    ids = [r["Id"] async for r in org_records(sim, "Contact") if not r["IsDeleted"]][:records]
    await sim_admin(sim, "POST", "/__sim/changes", [
        {"object": "Contact", "type": "UPDATE", "ids": ids, "fields": {"Phone": "overflow"}}])


async def drained(sim: dict, url: str) -> None:
    """Every published event applied (the checkpoints count each once) and the overflow's resync done."""
    published = (await sim_admin(sim, "GET", "/__sim/stats")).json()["events_published"]
    await until(lambda: q(url, f"SELECT sum(events_applied) >= {published} FROM replicator.checkpoints"),
                timeout=1800, interval=0.5)
    await until(lambda: q(url, "SELECT sum(resyncs) >= 1 AND bool_and(phase = 'STREAMING') FROM replicator.objects"),
                timeout=1800, interval=0.5)


async def counts(sim: dict, url: str) -> dict:
    stats = (await sim_admin(sim, "GET", "/__sim/stats")).json()
    return {"changes_made": stats["changes"]["total"], "events_published": stats["events_published"],
            "events_applied": int(await q(url, "SELECT sum(events_applied) FROM replicator.checkpoints")),
            "resyncs": int(await q(url, "SELECT sum(resyncs) FROM replicator.objects")),
            "dead_letters": int(await q(url, "SELECT count(*) FROM replicator.dead_letters")),
            "streams_cut": stats.get("streams_cut", 0)}


def verify(cfg: Path, env: dict, history: bool = False) -> subprocess.CompletedProcess:
    """`replicator refresh` (formula values follow their inputs without an event: docs/refresh.md), then
    `replicator verify` of every configured object (`--history` too with `history`); a failed refresh shows as
    differences."""
    subprocess.run([sys.executable, "-m", "replicator.cli", "refresh", "--config", str(cfg)],
                   env=env, capture_output=True, text=True)
    return subprocess.run([sys.executable, "-m", "replicator.cli", "verify", "--config", str(cfg)]
                          + (["--history"] if history else []), env=env, capture_output=True, text=True)


def verdict(verified: subprocess.CompletedProcess, history: bool = False) -> dict:
    """The verify's exit and how many objects it found equal; with `history`, how many history tables too (its
    lines `<Object>: history: …  (equal)`)."""
    lines = verified.stdout.splitlines()
    out = {"verify_exit": verified.returncode,
           "objects_equal": sum(line.endswith("(equal)") and ": history: " not in line for line in lines)}
    if history:
        out["history_equal"] = sum(line.endswith("(equal)") and ": history: " in line for line in lines)
    return out


if __name__ == "__main__":
    raise SystemExit("python -m bench.e2e is retired: python -m bench --only e2e")
