"""Handover between replicas (docs/replicas.md): three `replicator run` on one database with the
default `service.lease_s` (15 s) and `service.lease_poll_s` (0.5 s), four objects, changes flowing all along.

Measured, each from the signal to the moment every unit the replica held is held (a live lease) by another:
- `sigterm_s`: SIGTERM (a rolling update, a node drain): the replica drains its units and releases the leases;
- `sigkill_s`: SIGKILL (a lost node, an OOM kill): the leases expire first;
- `sigstop_s`: SIGSTOP past the lease (a frozen VM, a long pause): the same, then SIGCONT: the paused replica's
  commits are refused (`replicator_fenced_commits_total`) and it stands by.
A stopped replica is started again under a new name between measurements, so the three share the units again. At
the end every event published must have been applied once, and `replicator verify` (after `replicator refresh`:
formula fields change without events) must find every table equal.

    python -m bench.handover [--repeat 5] [--records 2000] [--rate 50]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import orjson

from replicator.observe.logs import setup_logging
from replicator.postgres.server import fresh_database, resolve_database
from replicator.sim.admin_client import sim_admin

from .e2e import config
from .harness import start_sim, stop_sim
from .stream import q, until


class _Replica:
    def __init__(self, cfg: Path, sim: dict, name: str, logs: Path):
        self.name = name
        env = dict(os.environ, REPLICATOR_SALESFORCE__CLIENT_SECRET=sim["client_secret"],
                   REPLICATOR_SERVICE__REPLICA_ID=name)
        env.pop("DATABASE_URL", None)
        self.log = open(logs / f"{name}.log", "wb")  # noqa: SIM115 (closed in stop)
        self.proc = subprocess.Popen([sys.executable, "-m", "replicator.cli", "--log-json", "run", "--config",
                                      str(cfg)], env=env, stdout=self.log, stderr=self.log)

    def signal(self, sig: signal.Signals) -> None:
        self.proc.send_signal(sig)

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGCONT)
            self.proc.send_signal(signal.SIGTERM)
        code = self.proc.wait(60)
        self.log.close()
        return code


async def _owners(url: str) -> dict[str, str]:
    raw = await q(url, "SELECT coalesce(jsonb_object_agg(unit, owner), '{}') FROM replicator.leases"
                       " WHERE expires_at > now()")
    return orjson.loads(raw) if raw else {}


async def _balanced(url: str, names: set[str], units: int) -> bool:
    owners = await _owners(url)
    held = [list(owners.values()).count(n) for n in names]
    return len(owners) == units and max(held) <= -(-units // len(names))


async def _handover(url: str, victim: _Replica, sig: signal.Signals, timeout: float) -> float:
    owners = await _owners(url)
    mine = {u for u, o in owners.items() if o == victim.name}
    assert mine, f"{victim.name} holds nothing"
    start = time.monotonic()
    victim.signal(sig)

    async def moved() -> bool:
        now = await _owners(url)
        return all(now.get(u) not in (None, victim.name) for u in mine)
    await until(moved, timeout=timeout, interval=0.02)
    return round(time.monotonic() - start, 2)


async def _fenced(log: Path) -> int:
    return sum(1 for line in log.read_bytes().splitlines() if b'"lease.fenced"' in line or b'"lease.lost"' in line)


async def run(server_url: str, repeat: int, records: int, rate: int) -> dict:
    proc, sim = start_sim(records)
    logs = Path(tempfile.mkdtemp(prefix="handover-"))
    replicas: list[_Replica] = []
    figures: dict[str, list[float]] = {"sigterm_s": [], "sigkill_s": [], "sigstop_s": []}
    try:
        if True:
            url = await fresh_database(server_url, "replicator_bench_handover")
            cfg = logs / "run.toml"
            cfg.write_text(config(sim, url))
            before = (await sim_admin(sim, "GET", "/__sim/stats")).json()["events_published"]
            count = 0

            def start() -> _Replica:
                nonlocal count
                count += 1
                replica = _Replica(cfg, sim, f"r{count}", logs)
                replicas.append(replica)
                return replica

            live = [start() for _ in range(3)]
            await until(lambda: q(url, "SELECT count(*) = 4 FROM replicator.objects WHERE phase = 'STREAMING'"),
                        timeout=600)
            await sim_admin(sim, "PUT", "/__sim/traffic", {"running": True, "rate": rate, "changes": None,
                                                           "mix": {"CREATE": 0.2, "UPDATE": 0.8}})
            for sig, key, timeout in [(signal.SIGTERM, "sigterm_s", 30)] * repeat + \
                    [(signal.SIGKILL, "sigkill_s", 60), (signal.SIGSTOP, "sigstop_s", 60)]:
                await until(lambda: _balanced(url, {r.name for r in live}, 4), timeout=60)
                owners = await _owners(url)
                victim = next(r for r in live if r.name in owners.values())
                figures[key].append(await _handover(url, victim, sig, timeout))
                if sig == signal.SIGSTOP:
                    victim.signal(signal.SIGCONT)  # it wakes up past its lease: refused, then stands by
                    await until(lambda v=victim: _fenced(logs / f"{v.name}.log"), timeout=60)
                    figures["sigstop_refused_then_stood_by"] = [1.0]
                victim.stop()
                live.remove(victim)
                live.append(start())
            await sim_admin(sim, "PUT", "/__sim/traffic", {"running": False})
            published = (await sim_admin(sim, "GET", "/__sim/stats")).json()["events_published"] - before

            async def drained() -> bool:
                return int(await q(url, "SELECT coalesce(sum(events_applied), 0) FROM replicator.checkpoints")
                           or 0) >= published
            await until(drained, timeout=120)
            applied = int(await q(url, "SELECT coalesce(sum(events_applied), 0) FROM replicator.checkpoints"))
            for r in live:
                r.stop()
            env = dict(os.environ, REPLICATOR_SALESFORCE__CLIENT_SECRET=sim["client_secret"])
            # formula fields change in the org without events: refreshed first, as a service does on its schedule
            subprocess.run([sys.executable, "-m", "replicator.cli", "refresh", "--config", str(cfg)], env=env,
                           capture_output=True, check=True)
            verify = subprocess.run([sys.executable, "-m", "replicator.cli", "verify", "--config", str(cfg)],
                                    env=env, capture_output=True, text=True)
            return {"figures": {k: {"median": statistics.median(v), "max": max(v), "runs": v}
                                for k, v in figures.items()},
                    "published": published, "applied": applied, "verify_equal": verify.returncode == 0,
                    "verify": verify.stdout.strip().splitlines(), "logs": str(logs)}
    finally:
        for r in replicas:
            if r.proc.poll() is None:
                r.stop()
        stop_sim(proc)


def main() -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.handover", description=__doc__.split("\n\n")[0])
    ap.add_argument("--repeat", type=int, default=5, help="SIGTERM handovers measured")
    ap.add_argument("--records", type=int, default=2000, help="records per object in the simulated org")
    ap.add_argument("--rate", type=int, default=50, help="changes per second while measuring")
    args = ap.parse_args()
    setup_logging("warning")

    async def go() -> dict:
        async with resolve_database(os.environ.get("DATABASE_URL")) as server:
            return await run(server, args.repeat, args.records, args.rate)
    result = asyncio.run(go())
    print(json.dumps(result, indent=2))
    return 0 if result["verify_equal"] and result["applied"] == result["published"] else 1


if __name__ == "__main__":
    sys.exit(main())
