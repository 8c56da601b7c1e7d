"""Fleet: three `replicator run` replicas serving three orgs of four objects each, with faults at random moments
(docs/replicas.md, docs/orgs.md; issue 19 §4).

One simulator process serves 3 orgs (`replicator sim --orgs 3`), each with Account, Contact, Opportunity and
Invoice__c (keyed by External_Id__c), every object publishing change events; one configuration names the three
orgs (`[orgs.org1]` ...), and three `replicator run` processes serve all of them, each with its own replica id and
metrics port. Every org has traffic throughout (`rate` creates and updates a second on its 4 objects: no deletes,
so no cascade publishes events on topics counted apart). Every 10-20 s (seeded) a random running replica gets one
fault, the kinds drawn from a shuffled bag so each comes as often:

- `sigkill`: a lost pod; a replacement starts at once under a new replica id;
- `sigstop`: a pause past its lease: SIGCONT once every unit it held is held by another (or `lease_s` + 10 s),
  after which its commits are refused by the fence and it stands by under the same id;
- `sigterm`: a rolling update: the replica drains and exits; its replacement starts at once under a new id.

What is measured, all from Postgres (each org's `replicator_<org>.leases` and `.checkpoints`, polled every
`POLL_S` by the bench), with the fault's moment taken by the bench's clock right after the signal (Postgres runs on
the same host: one clock):

- **takeover** of each unit the victim held (a live lease of its at the signal): from the signal to the first
  checkpoint commit of that unit's topic under the new lease (the first lease row with a higher fence; its
  `checkpoints.updated_at` at or after the new lease's `acquired_at`). `updated_at` is the commit's transaction
  start (now()); the poll sees only the latest commit, so when the new owner commits more than once within one
  poll the figure is late by at most `POLL_S`: an upper bound, never flattering. `held_s`: signal to the new
  lease's `acquired_at` (the figure `bench.handover` reports). p50 / p99 / max per fault kind (nearest rank);
- **fenced commits**: `replicator_fenced_commits_total` of each process, scraped every `SCRAPE_S` and once more
  before each SIGTERM the bench sends at the end, summed; beside it the `lease.fenced` lines of the logs;
- **balance**: units each running replica holds of each org (live leases) at every poll: min and max;
- **double holders**: a unit reported held (`replicator_unit_held` = 1) by two replicas in one scrape round
  (`double_held`), apart from those where one of the two was resumed under `RESUMED_S` ago and has not yet found
  its leases taken (`double_held_just_resumed`: its view is stale, its commits are fenced);
- **events**: at the end, each org's sum(`events_applied`) over its checkpoints against the simulator's
  `events_published` for that org; then `replicator refresh --org` and `replicator verify --org` for each org.

Anything that breaks a goal (a takeover over `lease_s` + 5 s for sigkill/sigstop or over 5 s for sigterm, a unit
never taken over, events applied ≠ published, verify unequal, a replica exiting non-zero on SIGTERM) is listed in
`failures`; the logs stay in `logs` for the evidence.

    python -m bench --only fleet --out /tmp/fleet1                 # 3 minutes of faults
    python -m bench --only fleet --duration 60 --seed 7 --out /tmp/f
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import random
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import asyncpg
import httpx
from prometheus_client.parser import text_string_to_metric_families

from replicator.postgres.server import fresh_database
from replicator.sim.admin_client import sim_admin

from .e2e import OBJECTS
from .fleet_report import (
    KINDS,
    POLL_S,
    RESUMED_S,
    SCRAPE_S,
    Balance,
    Lease,
    Snapshot,
    Takeovers,
    double_holders,
    goal_s,
)
from .harness import start_sim_orgs, stop_sim, sweep

# ---------------------------------------------------------------------------------------------------- processes


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def config(sims: dict[str, dict], url: str, lease_s: float) -> str:
    out = [f'[postgres]\nurl = "{url}"\n',
           f'[service]\nhost = "127.0.0.1"\nport = 0\nlease_s = {lease_s}\nshutdown_timeout_s = 15\n',
           "[backfill]\npoll_max_s = 1.0\n[stream]\nbatch_max_wait_s = 0.1\n"]
    for org, sim in sims.items():
        out.append(f'[orgs.{org}.salesforce]\ninstance_url = "{sim["instance_url"]}"\n'
                   f'client_id = "{sim["client_id"]}"\nclient_secret = "{sim["client_secret"]}"\n'
                   f'ca_file = "{sim["ca_file"]}"\npubsub_endpoint = "{sim["pubsub_endpoint"]}"\n')
        for name, opts in OBJECTS.items():
            out.append(f"[orgs.{org}.objects.{name}]\n" + "".join(f'{k} = "{v}"\n' for k, v in opts.items()))
    return "".join(out)


class Replica:
    """One `replicator run` of every org, with its own replica id, metrics port and log file."""

    def __init__(self, cfg: Path, name: str, logs: Path):
        self.name, self.port, self.stopped = name, _free_port(), False
        self.path = logs / f"{name}.log"
        env = dict(os.environ, REPLICATOR_SERVICE__PORT=str(self.port), REPLICATOR_SERVICE__REPLICA_ID=name)
        env.pop("DATABASE_URL", None)  # it would win over the file's database
        self.log = open(self.path, "wb")  # noqa: SIM115 (closed in reap)
        self.proc = subprocess.Popen([sys.executable, "-m", "replicator.cli", "--log-json", "run", "--config",
                                      str(cfg)], env=env, stdout=self.log, stderr=self.log)
        self.fenced = 0.0  # replicator_fenced_commits_total at the last scrape
        self.resumed = 0.0  # time.time() of its last SIGCONT
        self.exit: int | None = None

    async def scrape(self, http: httpx.AsyncClient) -> list[tuple[str, float, dict]] | None:
        if self.stopped or self.proc.poll() is not None:
            return None
        with contextlib.suppress(httpx.HTTPError):
            text = (await http.get(f"http://127.0.0.1:{self.port}/metrics")).text
            return [(s.name, s.value, s.labels) for f in text_string_to_metric_families(text) for s in f.samples]
        return None

    def reap(self, timeout: float) -> int:
        self.exit = self.proc.wait(timeout)
        self.log.close()
        return self.exit

    def log_counts(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for line in self.path.read_bytes().splitlines():
            with contextlib.suppress(ValueError):
                rec = json.loads(line)
                event = rec.get("event", "")
                if event.startswith("lease.") or rec.get("level") in ("error", "critical"):
                    key = event if event.startswith("lease.") else f"{rec['level']}:{event}"
                    counts[key] = counts.get(key, 0) + 1
        return counts


async def _snapshot(conn: asyncpg.Connection, orgs: list[str]) -> Snapshot:
    now = await conn.fetchval("SELECT extract(epoch FROM now())::float8")
    leases, checkpoints = {}, {}
    for org in orgs:
        rows = await conn.fetch(f"SELECT unit, owner, fence, extract(epoch FROM acquired_at)::float8 a, "
                                f"extract(epoch FROM expires_at)::float8 e FROM replicator_{org}.leases")
        leases[org] = {r["unit"]: Lease(r["owner"], r["fence"], r["a"], r["e"]) for r in rows}
        rows = await conn.fetch(f"SELECT topic, extract(epoch FROM updated_at)::float8 u FROM replicator_{org}.checkpoints")
        checkpoints[org] = {r["topic"]: r["u"] for r in rows}
    return Snapshot(now, leases, checkpoints)


async def _wait(pred, timeout: float, interval: float = 0.2) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if await pred():
            return True
        await asyncio.sleep(interval)
    return False


async def _sum_applied(conn: asyncpg.Connection, org: str) -> int:
    return int(await conn.fetchval(f"SELECT coalesce(sum(events_applied), 0) FROM replicator_{org}.checkpoints"))


async def run(server_url: str, database: str, *, duration: float, rate: float, records: int, lease_s: float,
              seed: int, orgs: int = 3, gap: tuple[float, float] = (10.0, 20.0)) -> dict:
    rng = random.Random(seed)
    proc, infos = start_sim_orgs(orgs, records, "--seed", str(seed))
    names = [info["org"] for info in infos]
    sims = dict(zip(names, infos, strict=True))
    logs = Path(tempfile.mkdtemp(prefix="bench-fleet-"))
    url = await fresh_database(server_url, database)
    cfg = logs / "fleet.toml"
    cfg.write_text(config(sims, url, lease_s))
    units = len(OBJECTS)
    replicas: list[Replica] = []
    count = 0
    faults: list[dict] = []
    takeovers, balance = Takeovers(), Balance()
    doubles: list[dict] = []
    failures: list[str] = []
    verify: dict[str, bool] = {}
    conn = await asyncpg.connect(url)
    tasks: list[asyncio.Task] = []
    finished = False

    def start() -> Replica:
        nonlocal count
        count += 1
        r = Replica(cfg, f"r{count}", logs)
        replicas.append(r)
        return r

    def running() -> list[Replica]:
        return [r for r in replicas if r.proc.poll() is None and r.exit is None]

    async def monitor() -> None:
        """Every POLL_S: each org's leases and checkpoints (the takeovers, the balance)."""
        own = await asyncpg.connect(url)  # a connection of its own: one asyncpg connection runs one query at a time
        try:
            while True:
                snap = await _snapshot(own, names)
                takeovers.observe(snap)
                balance.sample(snap, [r.name for r in running()], units)
                await asyncio.sleep(POLL_S)
        finally:
            await own.close()

    async def scraper() -> None:
        """Every SCRAPE_S: each running replica's fenced commits and the units it says it holds (apart from the
        polls, so a replica slow to answer never delays them)."""
        async with httpx.AsyncClient(timeout=1.0) as http:
            while True:
                held: dict[str, list[tuple[str, str]]] = {}
                for r in running():
                    samples = await r.scrape(http)
                    if samples is None:
                        continue
                    r.fenced = sum(v for n, v, _ in samples if n == "replicator_fenced_commits_total")
                    held[r.name] = [(lb["org"], lb["unit"]) for n, v, lb in samples
                                    if n == "replicator_unit_held" and v == 1]
                now = time.time()
                woke = {r.name for r in replicas if now - r.resumed < RESUMED_S}
                for org, unit, who in double_holders(held):
                    doubles.append({"t": round(now, 2), "org": org, "unit": unit, "replicas": who,
                                    "just_resumed": sorted(woke & set(who))})
                await asyncio.sleep(SCRAPE_S)

    t0 = time.monotonic()
    try:
        for _ in range(3):
            start()

        async def streaming() -> bool:
            with contextlib.suppress(asyncpg.UndefinedTableError, asyncpg.InvalidSchemaNameError):
                n = 0
                for org in names:
                    n += await conn.fetchval(f"SELECT count(*) FROM replicator_{org}.objects WHERE phase = 'STREAMING'")
                return n == units * len(names)
            return False
        if not await _wait(streaming, 600):
            raise RuntimeError(f"the orgs did not all reach STREAMING; logs: {logs}")
        startup_s = time.monotonic() - t0
        for sim in infos:
            await sim_admin(sim, "PUT", "/__sim/traffic", {"running": True, "rate": rate, "changes": None,
                                                           "objects": list(OBJECTS),
                                                           "mix": {"CREATE": 0.2, "UPDATE": 0.8}})
        tasks = [asyncio.create_task(monitor()), asyncio.create_task(scraper())]
        bag: list[str] = []
        began = time.monotonic()
        at = began + rng.uniform(*gap)
        while at < began + duration:
            await asyncio.sleep(max(at - time.monotonic(), 0))
            if not bag:
                bag = list(KINDS)
                rng.shuffle(bag)
            kind = bag.pop()
            victim = rng.choice(sorted((r for r in running() if not r.stopped), key=lambda r: r.name))
            snap = await _snapshot(conn, names)
            sig = {"sigkill": signal.SIGKILL, "sigstop": signal.SIGSTOP, "sigterm": signal.SIGTERM}[kind]
            victim.proc.send_signal(sig)
            signalled = time.time()
            held = snap.held_by(victim.name)
            fault = {"n": len(faults) + 1, "kind": kind, "victim": victim.name, "at_s": round(time.monotonic() - began, 1),
                     "units": len(held)}
            faults.append(fault)
            takeovers.lost(fault["n"], kind, victim.name, signalled, held)
            if kind == "sigstop":
                victim.stopped = True
                mine = [t for t in takeovers.items if t.fault == fault["n"]]

                async def moved(m=mine) -> bool:
                    return all(t.acquired is not None for t in m)
                if not await _wait(moved, lease_s + 10):  # the evidence: who waits on whom, who idles in a transaction
                    fault["sessions"] = [dict(r) for r in await conn.fetch(
                        "SELECT pid, application_name, state, wait_event_type, wait_event, pg_blocking_pids(pid) AS"
                        " blocked_by, left(query, 200) AS query, now() - state_change AS for FROM pg_stat_activity"
                        " WHERE datname = current_database() AND (cardinality(pg_blocking_pids(pid)) > 0"
                        " OR state LIKE 'idle in transaction%')")]
                await asyncio.sleep(1.0)
                victim.proc.send_signal(signal.SIGCONT)
                victim.resumed, victim.stopped = time.time(), False
                fault["stopped_s"] = round(time.time() - signalled, 1)
                fault["not_taken_over"] = [f"{t.org} {t.unit}" for t in takeovers.resumed(fault["n"])]
            else:
                if kind == "sigkill":
                    victim.reap(30)
                fault["replacement"] = start().name  # the Deployment's new pod, under a new id
                if kind == "sigterm":
                    asyncio.get_running_loop().run_in_executor(None, victim.reap, 90)
            at = signalled - time.time() + time.monotonic() + rng.uniform(*gap)
        # the last faults' units: followed until taken over (or given up on)
        await _wait(lambda: _true(not takeovers.pending()), lease_s + 30)
        for sim in infos:
            await sim_admin(sim, "PUT", "/__sim/traffic", {"running": False})
        published = {org: (await sim_admin(sims[org], "GET", "/__sim/stats")).json()["events_published"]
                     for org in names}

        async def drained() -> bool:
            return all([await _sum_applied(conn, org) >= published[org] for org in names])
        await _wait(drained, 180, 0.5)
        applied = {org: await _sum_applied(conn, org) for org in names}
        await asyncio.sleep(SCRAPE_S + POLL_S)  # one more scrape round of every process before it ends
        finished = True
    finally:
        for task in tasks:
            if task.done() and not task.cancelled() and task.exception() is not None:  # the figures stopped there
                failures.append(f"the bench's polls or scrapes failed: {task.exception()!r}")
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await conn.close()
        exits = {}
        for r in replicas:
            if r.exit is None and r.proc.poll() is None:
                r.proc.send_signal(signal.SIGCONT)
                r.proc.send_signal(signal.SIGTERM)
        for r in replicas:
            if r.exit is None:
                try:
                    exits[r.name] = r.reap(90)
                except subprocess.TimeoutExpired:
                    r.proc.kill()
                    exits[r.name] = r.reap(30)
            else:
                exits[r.name] = r.exit
        try:  # the org is needed by refresh and verify
            if finished:
                verify = _refresh_verify(cfg, names, failures)
        finally:
            stop_sim(proc)

    by_kind = takeovers.by_kind()
    for t in takeovers.items:
        bound = goal_s(t.kind, lease_s)
        if t.kept:
            failures.append(f"fault {t.fault} ({t.kind} of {t.victim}): {t.org} {t.unit} not taken over by anybody "
                            f"while its owner was paused ({faults[t.fault - 1].get('stopped_s')} s, lease_s {lease_s:g})")
        elif t.takeover_s is None:
            failures.append(f"fault {t.fault} ({t.kind} of {t.victim}): {t.org} {t.unit} not taken over and committed")
        elif t.takeover_s > bound:
            failures.append(f"fault {t.fault} ({t.kind} of {t.victim}): {t.org} {t.unit} took {t.takeover_s} s "
                            f"> {bound} s (held again after {t.held_s} s by {t.owner})")
    for d in doubles:
        if not d["just_resumed"]:
            failures.append(f"{d['org']} {d['unit']} reported held by {' and '.join(d['replicas'])} at once")
    for org in names:
        if applied[org] != published[org]:
            failures.append(f"{org}: events applied {applied[org]} != published {published[org]}")
    killed = {f["victim"] for f in faults if f["kind"] == "sigkill"}
    for name, code in exits.items():
        if name not in killed and code != 0:
            failures.append(f"{name} exited {code} on SIGTERM")
    fenced = sum(r.fenced for r in replicas)
    log_counts: dict[str, int] = {}
    for r in replicas:
        for k, v in r.log_counts().items():
            log_counts[k] = log_counts.get(k, 0) + v
    detail = {"faults": faults, "takeovers": [dict(vars(t), held_s=t.held_s, takeover_s=t.takeover_s)
                                              for t in takeovers.items],
              "balance_per_replica": balance.per_replica, "doubles": doubles, "exits": exits, "log_counts": log_counts}
    (logs / "detail.json").write_text(json.dumps(detail, indent=2, default=str))
    figures = {"orgs": len(names), "objects_per_org": units, "lease_s": lease_s, "duration_s": duration,
               "rate_per_org": rate, "seed": seed, "startup_s": round(startup_s, 1), "faults": len(faults),
               **{f"faults_{k}": sum(f["kind"] == k for f in faults) for k in KINDS},
               "units_moved": len(takeovers.items)}
    for kind, s in by_kind.items():
        figures.update({f"{kind}_p50_s": s["p50_s"], f"{kind}_p99_s": s["p99_s"], f"{kind}_max_s": s["max_s"],
                        f"{kind}_not_taken_over": s["not_taken_over"]})
    figures.update({"fenced_commits_metrics": fenced, "fenced_log_lines": log_counts.get("lease.fenced", 0),
                    "double_held": sum(not d["just_resumed"] for d in doubles),
                    "double_held_just_resumed": sum(bool(d["just_resumed"]) for d in doubles),
                    "events_published": sum(published.values()), "events_applied": sum(applied.values()),
                    "verify_equal_orgs": sum(verify.values()), "failures": len(failures)})
    kind_rows = [{"x": k, "units": s["n"] + s["unfinished"], "p50_s": s["p50_s"], "p99_s": s["p99_s"],
                  "max_s": s["max_s"], "goal_s": goal_s(k, lease_s), "held_p50_s": s["held_p50_s"],
                  "not_taken_over": s["not_taken_over"], "unfinished": s["unfinished"]} for k, s in by_kind.items()]
    org_rows = [{"x": org, **b, "published": published[org], "applied": applied[org], "verify_equal": int(verify[org])}
                for org, b in balance.per_org().items()]
    fault_rows = []
    for f in faults:
        mine = [t for t in takeovers.items if t.fault == f["n"]]
        done = [t.takeover_s for t in mine if t.takeover_s is not None]
        fault_rows.append({"x": f"{f['n']} {f['kind']} {f['victim']}", "at_s": f["at_s"], "units": f["units"],
                           "takeover_max_s": max(done, default=None),
                           "not_taken_over": sum(t.kept for t in mine), "unfinished": len(mine) - len(done)})
    note = (f"3 replicas, {len(names)} orgs x {units} objects, {rate:g} creates/updates a second per org throughout, "
            f"lease_s = {lease_s:g}; a fault every {gap[0]:g}-{gap[1]:g} s (seed {seed}) for {duration:g} s; takeover: "
            "signal -> the new owner's first checkpoint commit of the unit (upper bound, polled every 0.2 s)")
    return {"figures": figures, "failures": failures, "logs": str(logs),
            "sweeps": [sweep("takeover by fault kind", "fault", kind_rows, ["p50_s", "p99_s", "max_s"], note),
                       sweep("balance and events by org", "org", org_rows, ["min", "max"],
                             "units held of the org by each running replica at every poll: min, max; all_held: share "
                             "of polls with every unit under a live lease; over_share: polls with a replica above its "
                             "fair share"),
                       sweep("faults", "fault", fault_rows, ["takeover_max_s"], "each fault: when, units the victim held")]}


def _refresh_verify(cfg: Path, names: list[str], failures: list[str]) -> dict[str, bool]:
    """`replicator refresh --org` (formula fields change in the org without events), then `verify --org`, for each
    org: {org: verify equal}; anything non-zero goes to `failures`."""
    verify = {}
    for org in names:
        for command in ("refresh", "verify"):
            out = subprocess.run([sys.executable, "-m", "replicator.cli", command, "--config", str(cfg), "--org", org],
                                 env={k: v for k, v in os.environ.items() if k != "DATABASE_URL"},
                                 capture_output=True, text=True, timeout=600)
            if command == "verify":
                verify[org] = out.returncode == 0
            if out.returncode != 0:
                failures.append(f"{command} --org {org}: exit {out.returncode}: {out.stdout[-1500:]} {out.stderr[-500:]}")
    return verify


async def _true(value: bool) -> bool:
    return value
