"""Transitions, tried at random (issue 18 §4): seeded sequences of operations against the simulator, each ending
with `replicator refresh` then `replicator verify` of every configured object, which must be equal.

One sequence = one seed: a fresh simulator (`--seed` = the sequence's seed, a small org), a fresh database, and
`replicator run` as a process of its own with a config file the harness rewrites (`service.lease_s` = 3, so a
takeover takes seconds), and at times a second one on the same database and file (bench/transitions_procs.py).
The seed alone makes the list of operations (printed before it runs), so `python -m bench --only transitions --seed
N --sequences 1` replays sequence N; `--ops "kill; mode:Contact:poll; traffic:200"` runs a list given by hand (to
minimise a failing one).

Operations: bench/transitions_ops.py (what each does, how they are drawn); diagnosis of a failing sequence:
bench/transitions_report.py.

Between operations the harness waits on conditions, never on fixed sleeps: every live process's /readyz 200 and
every configured object served (a phase other than STANDBY) by exactly one of them, which holds a live lease on
its unit or its channel (`replicator.leases`; a paused process is not asked, its leases expire and the condition
waits until the other took them), the state tables (every configured object STREAMING, no resync pending, the mode
a CDC selection or allocation change must lead to), the simulator's counters. A condition not met in time is noted
as `stuck` (with /readyz's body) and the sequence goes on. At the end: traffic paused, late commits visible, the
service caught up, then `replicator refresh` + `replicator verify` (repeated for up to `VERIFY_S`: polled objects
converge a round later) must say equal; otherwise the seed, its operations and verify's output are recorded.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import asyncpg
import httpx

from replicator.postgres.server import fresh_database, with_database
from replicator.sim.admin_client import sim_admin

from .harness import start_sim, stop_sim
from .stream import org_records
from .transitions_ops import (
    KEYS,
    KINDS,
    LATE_MAX_S,
    LOOKBACK_S,
    OBJECTS,
    RATE,
    RECORDS,
    REPLICA,
    SETTABLE,
    SETTLE_S,
    VERIFY_S,
    World,
    _kind,
    generate,
    parse_ops,
)
from .transitions_procs import CHANNEL, LEASE_S, Run, held_unmet, live_leases, owner_slot, takeovers
from .transitions_report import explain, report, signature, verdict_line


class Sequence:
    """One sequence's simulator, database, configuration and `replicator run` processes (the first, and a second
    while one runs: bench/transitions_procs.py)."""

    def __init__(self, seed: int, sim: dict, url: str, log, log2, pg=None, lookback: float = LOOKBACK_S):
        self.seed, self.sim, self.url, self.pg, self.lookback = seed, sim, url, pg, lookback
        self.world = World()
        self.rng = random.Random(seed * 7919 + 1)  # runtime choices (records changed), apart from generation
        self.cfg = Path(tempfile.mkstemp(suffix=".toml", prefix="bench-transitions-")[1])
        self.env = dict(os.environ, REPLICATOR_SALESFORCE__CLIENT_SECRET=sim["client_secret"])
        self.env.pop("DATABASE_URL", None)  # it would win over the config file's database
        self.first = Run("first", self.cfg, self.env, log)
        self.second = Run("second", self.cfg, self.env, log2)
        self.runs = [self.first, self.second]
        self.late_until = 0.0  # monotonic time by which every late commit made so far is visible
        self.stuck: list[dict] = []  # conditions not met in time: after which operation, which, the state
        self.waived: set[str] = set()  # conditions once stuck, not waited for again in this sequence
        self.exits: list[str] = []  # unexpected exit codes of `replicator run`
        self.pauses: list[dict] = []  # per replica:pause: who, how long, units taken over, fenced commits after
        self.write_config()

    # -- the service ---------------------------------------------------------------------------------------------
    def write_config(self) -> None:
        w, sim = self.world, self.sim
        lines = ["[salesforce]", f'instance_url = "{sim["instance_url"]}"', f'client_id = "{sim["client_id"]}"',
                 f'ca_file = "{sim["ca_file"]}"', f'pubsub_endpoint = "{sim["pubsub_endpoint"]}"',
                 "limits_interval_s = 0.5",
                 "[postgres]", f'url = "{self.url}"',
                 "[backfill]", "poll_max_s = 0.2", "page_size = 1000",
                 "[stream]", "batch_max_wait_s = 0.05", "topic_check_s = 0.5", "position_timeout_s = 10",
                 f'channel = "{CHANNEL if w.channel else ""}"',
                 # describe_interval_s: as topic checks, a new field is looked for every second here, not every 600
                 "[poll]", f"lookback_s = {self.lookback}", f"handoff_lookback_s = {max(self.lookback, LATE_MAX_S)}",
                 "page_size = 200", "describe_interval_s = 1",
                 # port and replica_id: each process's own, in its environment (Run.start)
                 "[service]", 'host = "127.0.0.1"', "control_poll_s = 0.3", f"lease_s = {LEASE_S}"]
        for name in w.configured:
            lines += [f"[objects.{name}]", f'mode = "{w.modes[name]}"', "poll_interval_s = 0.5"]
            if name in KEYS:
                lines.append(f'key = "{KEYS[name]}"')
        self.cfg.write_text("\n".join(lines) + "\n")

    def stop(self, run: Run, sig: signal.Signals = signal.SIGTERM) -> None:
        if (note := run.stop(sig)) is not None:
            self.exits.append(note)

    def stop_all(self, sig: signal.Signals = signal.SIGTERM) -> None:
        for run in (self.second, self.first):
            self.stop(run, sig)

    def cli(self, *args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "replicator.cli", *args, "--config", str(self.cfg)],
                              env=self.env, capture_output=True, text=True, timeout=600)

    # -- conditions ----------------------------------------------------------------------------------------------
    async def _rows(self) -> dict[str, dict]:
        try:
            conn = await asyncpg.connect(self.url, timeout=5)
        except (TimeoutError, OSError, asyncpg.PostgresError):
            return {}
        try:
            rows = await conn.fetch("SELECT object, phase, mode, resync_requested FROM replicator.objects")
        except asyncpg.PostgresError:
            return {}
        finally:
            await conn.close()
        return {r["object"]: dict(r) for r in rows}

    async def unmet(self, modes: bool = True) -> tuple[list[str], str]:
        """The conditions of a settled service not met now: the processes up, every configured object served by
        one live process holding its lease (transitions_procs.held_unmet), STREAMING with no resync pending, and
        (with `modes`) in the mode the world leads to; and what the processes said. Conditions waived after they
        were once stuck are left out."""
        if any(run.exited() is not None for run in self.runs):
            return ["process"], ""
        out, said = await held_unmet(self.runs, self.url, self.world.configured)
        rows = await self._rows()
        for obj in self.world.configured:
            row = rows.get(obj)
            if row is None or row["phase"] != "STREAMING":
                out.append(f"{obj}.phase")
            elif row["resync_requested"]:
                out.append(f"{obj}.resync")
            want = self.world.expected_mode(obj) if modes else None
            if row is not None and want is not None and row["mode"] != want:
                out.append(f"{obj}.mode")
        return [c for c in out if c not in self.waived], said

    async def settle(self, op: str, modes: bool = True, timeout: float = SETTLE_S) -> None:
        """Wait until settled; when not in `timeout`, note it as stuck and waive the unmet conditions for the rest
        of the sequence (a resync flag that stays raised would otherwise cost every later operation the timeout)."""
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            for run in self.runs:
                if (rc := run.exited()) is not None:
                    self.exits.append(f"{run.replica}: exit {rc} on its own after {op}")
                    run.forget()
                    run.start(f"after its exit {rc} on its own")  # as an orchestrator would (a port of its own)
            unmet, said = await self.unmet(modes)
            if not unmet:
                return
            await asyncio.sleep(0.2)
        rows = await self._rows()
        state = {o: (r["phase"], r["mode"], r["resync_requested"]) for o, r in rows.items()
                 if o in self.world.configured}
        self.waived.update(c for c in unmet if c != "process")
        self.stuck.append({"after": op, "unmet": unmet, "detail": (
            f"not settled in {timeout:.0f} s: readyz {said}; state {state}; expected modes "
            f"{ {o: self.world.expected_mode(o) for o in self.world.configured} }")})

    # -- the org -------------------------------------------------------------------------------------------------
    async def live(self, obj: str, k: int) -> list[str]:
        """Ids of k live records of obj (the ground truth), picked with the sequence's runtime random."""
        ids = [r["Id"] async for r in org_records(self.sim, obj) if not r["IsDeleted"]]
        return self.rng.sample(ids, min(k, len(ids)))

    async def changes(self, body) -> None:
        """POST /__sim/changes; a row lock a late commit holds may refuse it after 10 s (then it is dropped: the
        org is unchanged, nothing to replicate)."""
        try:
            await sim_admin(self.sim, "POST", "/__sim/changes", body)
        except httpx.HTTPStatusError as exc:
            if exc.response.status_code != 400:
                raise

    async def a_few_changes(self) -> None:
        """Changes of every object while the service is down or its configuration changes."""
        items = []
        for obj in OBJECTS:
            name, kind = SETTABLE[obj]
            ids = await self.live(obj, 3)
            value = f"gap-{self.rng.randint(0, 10**6)}" if kind == "str" else float(self.rng.randint(1, 10**6))
            items.append({"object": obj, "type": "UPDATE", "ids": ids[:2], "fields": {name: value}})
            items.append({"object": obj, "type": "DELETE", "ids": ids[2:]})
            items.append({"object": obj, "type": "CREATE", "fields": {}, "count": 1})
        await self.changes({"changes": items, "separate_transactions": True})

    async def made(self) -> int:
        return (await sim_admin(self.sim, "GET", "/__sim/traffic")).json()["made"]

    async def traffic(self, n: int, until: int) -> None:
        """The generator makes `n` changes at RATE/s; returns once `until` of them are made."""
        before = await self.made()
        await sim_admin(self.sim, "PUT", "/__sim/traffic", {
            "running": True, "rate": RATE, "changes": before + n, "objects": list(OBJECTS),
            "transaction_size": 3, "records_per_event": 2, "collision_rate": 0.3,
            "mix": {"CREATE": 0.2, "UPDATE": 0.6, "DELETE": 0.13, "UNDELETE": 0.07}})
        end = time.monotonic() + n / RATE * 5 + 30
        while await self.made() < before + until and time.monotonic() < end:
            await asyncio.sleep(0.1)

    # -- operations ----------------------------------------------------------------------------------------------
    async def restart(self, op: str, sig: signal.Signals = signal.SIGTERM, runs: list[Run] | None = None) -> None:
        """Stop `runs` (default: the first) with `sig`, rewrite the configuration, a few changes while they are
        down, start them again (the first first) and settle."""
        runs = [r for r in self.runs if r in (runs or [self.first])]
        for run in reversed(runs):
            self.stop(run, sig)
        self.write_config()
        await self.a_few_changes()
        for run in runs:
            run.start(op)
        await self.settle(op)

    async def run_op(self, op: str) -> None:
        kind, *args = op.split(":")
        self.world.apply(op)
        if kind == "traffic":
            await self.traffic(int(args[0]), int(args[0]) // 2)
        elif kind == "late":
            obj, k, secs = args[0], int(args[1]), int(args[2])
            name, vkind = SETTABLE[obj]
            value = f"late-{self.rng.randint(0, 10**6)}" if vkind == "str" else float(self.rng.randint(1, 10**6))
            await self.changes({"visible_after_seconds": secs, "changes": [
                {"object": obj, "type": "UPDATE", "ids": await self.live(obj, k), "fields": {name: value}}]})
            self.late_until = max(self.late_until, time.monotonic() + secs + 1)
        elif kind == "wait":
            while time.monotonic() < self.late_until:
                await asyncio.sleep(0.2)
            await self.settle(op)
        elif kind == "kill":
            await self.restart(op, signal.SIGKILL)
        elif kind == "term":
            await self.restart(op)
        elif kind in ("remove", "add", "mode", "channel"):  # every running process takes the new configuration
            await self.restart(op, runs=[r for r in self.runs if r.running])
        elif kind == "resync":
            done = self.cli("resync", args[0])
            if done.returncode != 0:
                self.stuck.append({"after": op, "unmet": ["resync command"],
                                   "detail": f"exit {done.returncode}: {done.stdout} {done.stderr}"[:500]})
            await self.settle(op)
        elif kind == "resynckill":
            done = self.cli("resync", args[0])
            if done.returncode == 0:
                end = time.monotonic() + 20  # a polled object's resync may never start (noted by the settle below)
                while time.monotonic() < end and (await self._rows()).get(args[0], {}).get("phase") != "RESYNCING":
                    await asyncio.sleep(0.05)
            holder = owner_slot(self.runs, await live_leases(self.url) or {}, args[0])
            await self.restart(op, signal.SIGKILL, [holder or self.first])
        elif kind == "cdc":
            selected = set((await sim_admin(self.sim, "GET", "/__sim/cdc")).json()["objects"])
            selected = selected - {args[0]} if args[1] == "off" else selected | {args[0]}
            await sim_admin(self.sim, "PUT", "/__sim/cdc", {"objects": sorted(selected)})
            await self.settle(op)
        elif kind == "alloc":
            if args[0] == "off":
                used = (await sim_admin(self.sim, "GET", "/__sim/limits")).json()["events_delivered"]
                await sim_admin(self.sim, "PUT", "/__sim/limits", {"event_allocation": used + 5})
                await self.a_few_changes()  # deliveries past the allocation: Subscribe ends with the limit error
            else:
                await sim_admin(self.sim, "PUT", "/__sim/limits", {"event_allocation": 10_000_000, "reset": True})
            await self.settle(op, timeout=60)
        elif kind == "field":
            obj = args[0]
            name = f"Tr{self.world.fields}__c"
            await sim_admin(self.sim, "POST", f"/__sim/schema/{obj}/fields", {"name": name, "type": "string"})
            ids = await self.live(obj, 5)
            await self.changes([{"object": obj, "type": "UPDATE", "ids": ids, "fields": {name: f"v{self.seed}"}}])
            await self.settle(op)
        elif kind == "pgrestart":
            if self.pg is None:
                return  # only against a Postgres of the harness's own (--own-postgres)
            await asyncio.to_thread(self.pg.restart, args[0] if args else "fast")
            await self.settle(op)
        elif kind == "replica":
            await self.replica(op, args[0], args[1] if args[1:] else "holder")
        else:
            raise ValueError(op)

    async def replica(self, op: str, action: str, role: str) -> None:
        """The second process: started, SIGKILLed; the first SIGKILLed while it runs; either paused."""
        if action == "start":
            if not self.second.running:
                self.second.start(op)
            await self.settle(op)
        elif action == "kill":
            self.stop(self.second, signal.SIGKILL)
            await self.a_few_changes()
            await self.settle(op)  # the first takes over what the second held
        elif action == "killfirst" and not self.second.running:
            await self.restart(op, signal.SIGKILL)
        elif action == "killfirst":
            self.stop(self.first, signal.SIGKILL)
            await self.a_few_changes()
            await self.settle(f"{op} (the second takes over)")
            self.first.start(op)  # in the first's place, as for `kill`
            await self.settle(op)
        else:
            await self.pause(op, role)

    async def pause(self, op: str, role: str) -> None:
        """Traffic, then SIGSTOP of the process holding the most units (`holder`) or of the other (`standby`) while
        events arrive, so that a batch is likely in flight; SIGCONT once the other took its units over and
        LEASE_S + 2 s passed. The paused process must commit nothing after: its replicator_fenced_commits_total is
        recorded (a fenced commit is expected); a write that got through would show in verify."""
        leases = await live_leases(self.url) or {}
        holder = owner_slot(self.runs, leases) or self.first
        victim = holder if role == "holder" else next(
            (r for r in self.runs if r.running and r is not holder), holder)
        other = next((r for r in self.runs if r.running and r is not victim), None)
        held = sorted(u for u, owner in leases.items() if owner == victim.replica)
        fenced_before = await victim.fenced_commits()  # the counter is the process's: an earlier pause counted too
        await self.traffic(int(RATE * 1.5), RATE // 5)  # 1.5 s of changes; 0.2 s of them made before the stop
        victim.pause()
        t0 = time.monotonic()
        try:
            if other is not None:
                await self.settle(f"{op} ({victim} paused)")
            if (rest := t0 + LEASE_S + 2 - time.monotonic()) > 0:
                await asyncio.sleep(rest)  # a deliberate pause, not a synchronisation
            after = await live_leases(self.url) or {}
        finally:
            victim.resume()
        paused_s = time.monotonic() - t0
        await self.settle(op)
        fenced = await victim.fenced_commits()
        self.pauses.append({"op": op, "paused": victim.replica, "seconds": round(paused_s, 1), "held": held,
                            "taken_over": sorted(u for u in held if after.get(u) not in (None, victim.replica)),
                            "fenced_commits": None if fenced is None or fenced_before is None
                            else fenced - fenced_before, "fenced_commits_total": fenced})

    async def finish(self) -> subprocess.CompletedProcess:
        """Traffic paused, late commits visible, the service settled, then refresh + verify until equal (or
        VERIFY_S); the last verify."""
        await sim_admin(self.sim, "PUT", "/__sim/traffic", {"running": False})
        while time.monotonic() < self.late_until:
            await asyncio.sleep(0.2)
        await self.settle("the end")
        end = time.monotonic() + VERIFY_S
        while True:
            self.cli("refresh")
            verified = self.cli("verify")
            if verified.returncode == 0 or time.monotonic() > end:
                return verified
            await asyncio.sleep(2)


async def run_sequence(server_url: str, seed: int, ops: list[str], pg=None, lookback: float = LOOKBACK_S) -> dict:
    """One sequence on a new org and database; its record (equal or not, stuck conditions, verify's output)."""
    proc, sim = start_sim(RECORDS, "--seed", str(seed))
    database = f"replicator_tr_{os.getpid()}_{seed}"
    base = pg.url() if pg is not None else server_url
    url = await fresh_database(base, database)
    log = tempfile.NamedTemporaryFile("w", suffix=".log", prefix=f"bench-transitions-{seed}-", delete=False)
    log2 = tempfile.NamedTemporaryFile("w", suffix=".log", prefix=f"bench-transitions-{seed}-second-", delete=False)
    seq = Sequence(seed, sim, url, log, log2, pg, lookback)
    t0 = time.monotonic()
    record: dict = {"seed": seed, "ops": ops}
    try:
        seq.first.start("the start")
        await seq.settle("the start")
        for i, op in enumerate(ops):
            print(f"  [{seed}] {i + 1}/{len(ops)} {op}", flush=True)
            await seq.run_op(op)
        verified = await seq.finish()
        record["takeovers"] = takeovers([log.name, log2.name])  # before the stop, which hands units over too
        seq.stop_all()
        # verify's findings are on stdout (its stderr is the log); the log's tail only when stdout says nothing
        record.update(equal=verified.returncode == 0, verify_exit=verified.returncode,
                      verify=verified.stdout[-3000:] or verified.stderr[-1500:])
        if not record["equal"]:
            try:
                record["explain"] = await explain(sim, url, verified.stdout)
            except Exception as exc:  # diagnosis only: the verdict stands without it
                record["explain"] = [f"explain failed: {type(exc).__name__}: {exc}"]
    except Exception as exc:  # a harness or service failure is a failed sequence too, with its reason
        record.update(equal=False, verify_exit=None, verify=f"harness: {type(exc).__name__}: {exc}")
    finally:  # every process this sequence started ends with it, whatever happened
        seq.stop_all(signal.SIGKILL)
        stop_sim(proc)
        log.close()
        log2.close()
        seq.cfg.unlink(missing_ok=True)
    record.update(stuck=seq.stuck, exits=seq.exits, seconds=round(time.monotonic() - t0, 1),
                  takeovers=record.get("takeovers", takeovers([log.name, log2.name])), pauses=seq.pauses,
                  unexpected_phase_changes=unexpected_phase_changes([log.name, log2.name]))
    if record["equal"] and not record["exits"] and not record["unexpected_phase_changes"] and not record["stuck"]:
        Path(log.name).unlink()
        Path(log2.name).unlink()
        await _drop(base, database)
    else:
        record.update(log=log.name, database=with_database(base, database),
                      **({"log_second": log2.name} if seq.second.starts else {}))
        if not seq.second.starts:
            Path(log2.name).unlink()
    return record


def unexpected_phase_changes(paths: list[str]) -> int:
    """Phase changes the services stored outside lifecycle.PHASES (postgres/state.py logs each as
    `lifecycle.unexpected_phase_change`): the bench's twin of the tests' autouse check."""
    return sum(Path(p).read_text(errors="replace").count("lifecycle.unexpected_phase_change")
               for p in paths if Path(p).exists())


async def minimise(server_url: str, record: dict, pg=None, lookback: float = LOOKBACK_S) -> dict:
    """The fewest operations (greedy: drop one at a time, from the last, keep the drop while the sequence still
    fails with the same signature) that still fail like `record`; returns the minimal record."""
    ops, want, best = list(record["ops"]), signature(record), record
    print(f"minimising seed {record['seed']} ({len(ops)} operations), signature {want}", flush=True)
    i = len(ops) - 1
    while i >= 0 and len(ops) > 1:
        trial = ops[:i] + ops[i + 1:]
        got = await run_sequence(server_url, record["seed"], trial, pg, lookback)
        same = not got["equal"] and signature(got) == want
        print(f"  without {ops[i]}: {'still fails' if same else 'passes or differs'} "
              f"({'equal' if got['equal'] else signature(got)})", flush=True)
        if same:
            ops, best = trial, got
        i -= 1
    return best


async def _drop(server_url: str, database: str) -> None:
    conn = await asyncpg.connect(server_url)
    try:
        await conn.execute(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')
    finally:
        await conn.close()


async def scenario(plan) -> dict:
    """`plan.transitions_sequences` sequences from seed `plan.transitions_seed` on (or one sequence of
    `plan.transitions_ops`): figures, operations by kind, and every failure with its seed."""
    kinds = plan.transitions_kinds or [k for k in KINDS if k != "pgrestart" or plan.transitions_own_postgres]
    pg = None
    if plan.transitions_own_postgres:
        from .own_postgres import PostgresServer

        pg = PostgresServer()
        pg.start()
    records, by_kind = [], dict.fromkeys([k for k in KINDS if k != "replica"] + [f"replica:{a}" for a in REPLICA], 0)
    given = [plan.transitions_ops] if plan.transitions_ops else plan.transitions_fixed  # lists by hand
    try:
        for n in range(len(given) if given else plan.transitions_sequences):
            seed = plan.transitions_seed + n
            ops = parse_ops(given[n]) if given else generate(seed, kinds, plan.transitions_length)
            print(f"transitions seed {seed}: {'; '.join(ops)}", flush=True)
            record = await run_sequence(plan.server_url, seed, ops, pg, plan.transitions_lookback)
            records.append(record)
            if plan.transitions_progress:  # each sequence as it ends, so a run stopped early keeps what it found
                with open(plan.transitions_progress, "a") as fh:
                    fh.write(json.dumps(record, default=str) + "\n")
            for op in ops:
                by_kind[_kind(op)] += 1
            print(verdict_line(record), flush=True)
        failures = [r for r in records if not r["equal"]]
        for r in failures:
            r["signature"] = signature(r)
            if plan.transitions_minimise:
                small = await minimise(plan.server_url, r, pg, plan.transitions_lookback)
                r["minimal"] = {"ops": small["ops"], "verify": small["verify"], "explain": small.get("explain", []),
                                "log": small.get("log")}
                print(f"transitions seed {r['seed']}: minimal: {'; '.join(small['ops'])}\n{small['verify']}\n"
                      + "\n".join(small.get("explain", [])), flush=True)
    finally:
        if pg is not None:
            pg.remove()
    return report(records, failures, by_kind)
