"""Transitions, tried at random (issue 18 §4): seeded sequences of operations against the simulator, each ending
with `replicator refresh` then `replicator verify` of every configured object, which must be equal.

One sequence = one seed: a fresh simulator (`--seed` = the sequence's seed, a small org), a fresh database, and
`replicator run` as a process of its own with a config file the harness rewrites (`service.lease_s` = 3, so a
takeover takes seconds), and at times a second one on the same database and file (bench/transitions_procs.py).
The seed alone makes the list of operations (printed before it runs), so `python -m bench --only transitions --seed
N --sequences 1` replays sequence N; `--ops "kill; mode:Contact:poll; traffic:200"` runs a list given by hand (to
minimise a failing one).

Operations (`--kinds` picks some; each is `kind[:arg…]`):

    traffic:N            the simulator's generator makes N changes (creates, updates, deletes, undeletes) at 100/s on
                         all four objects, configured or not; the next operation starts when half are made
    late:OBJ:K:S         a long transaction: K records of OBJ updated, stamped now, visible S seconds later
    wait                 until every late commit so far is visible and the service has settled
    kill / term          SIGKILL / SIGTERM the first `replicator run`, a few changes while it is down, start it again
    resync:OBJ           `replicator resync OBJ` beside the running service
    resynckill:OBJ       the same, then SIGKILL of the process holding OBJ as soon as it is RESYNCING, a few
                         changes, a restart
    remove:OBJ / add:OBJ the object taken out of / put back into the configuration, then a restart (of both
                         processes when two run, as every configuration change)
    mode:OBJ:M           `mode = M` (auto, cdc, poll) for OBJ, then a restart
    channel:on|off       `stream.channel = "/data/ChangeEvents"` or none, then a restart
    cdc:OBJ:off|on       the entity deselected from / selected again for Change Data Capture (simulator admin)
    alloc:off|on         the event delivery allocation used up / given back (simulator limits admin)
    field:OBJ            a custom field added to OBJ in the org, then set on a few records
    pgrestart:fast|immediate  the Postgres server restarted, cleanly or as after a crash (only with
                         `--own-postgres`: never the shared one)
    replica:start        a second `replicator run` (same config file; its own service.port and service.replica_id);
                         it stands by (drawn only while none runs)
    replica:kill         SIGKILL the second, a few changes; the first takes over what it held
    replica:killfirst    SIGKILL the first while a second runs, a few changes, until the second took everything
                         over; then a new first in its place (without a second: as `kill`)
    replica:pause[:holder|standby]  traffic, then SIGSTOP the process holding the most units (or the other) until
                         the other took its units over and at least lease_s + 2 s passed, then SIGCONT: it must
                         commit nothing after (its replicator_fenced_commits_total is recorded)

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
import datetime as dt
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path

import asyncpg
import httpx

from replicator.postgres.server import fresh_database, with_database
from replicator.sim.admin_client import sim_admin

from .harness import start_sim, stop_sim, sweep
from .stream import org_records
from .transitions_procs import CHANNEL, LEASE_S, Run, held_unmet, live_leases, owner_slot, takeovers

OBJECTS = ("Account", "Contact", "Opportunity", "Invoice__c")
KEYS = {"Invoice__c": "External_Id__c"}
# A field each object lets a change set (a late commit changes it).
SETTABLE = {"Account": ("Phone", "str"), "Contact": ("Phone", "str"), "Opportunity": ("Amount", "num"),
            "Invoice__c": ("Amount__c", "num")}
KINDS = ("traffic", "late", "wait", "kill", "term", "resync", "resynckill", "remove", "add", "mode", "channel", "cdc", "alloc", "field",
         "pgrestart", "replica")
REPLICA = ("start", "kill", "killfirst", "pause")  # replica:ACTION
# How often each kind is drawn (those that cannot apply in the current state are skipped).
WEIGHTS = {"traffic": 3, "late": 2, "wait": 1, "kill": 2, "term": 1, "resync": 1.5, "resynckill": 1, "remove": 1.2, "add": 1.5, "mode": 1.5,
           "channel": 1, "cdc": 1.2, "alloc": 1, "field": 0.5, "pgrestart": 0.7, "replica": 2}
RECORDS = 300  # per object: a backfill or resync takes a second or two
SETTLE_S = 30  # longest wait for the service to settle after an operation before it is noted as stuck
VERIFY_S = 20  # how long refresh + verify is repeated at the end before the sequence counts as failed
RATE = 100  # changes/s of a traffic operation
# poll.lookback_s: a margin re-read before each poll position. In production it is 10 s against a topic check every
# 300 s; here topic checks run every 0.5 s, so any margin would cover a hole a production ratio leaves open. With no
# margin, a hole in a handoff (a position taken too late) shows as a difference.
LOOKBACK_S = 0
# poll.handoff_lookback_s: events -> poll starts this much before the object's own position, for a transaction that
# committed unread before the switch (production: 600 s, the longest a Salesforce transaction runs). Here it is the
# longest late commit a sequence draws (`late:OBJ:K:S`, S at most LATE_MAX_S), so a position taken later than that
# still shows as a difference.
LATE_MAX_S = 5


@dataclass
class World:
    """The harness's model of what the operations have done so far: what the configuration says and what the org
    was told. Generating against it keeps every operation meaningful (no `add` of a configured object, no `mode =
    cdc` for a deselected entity, which is a configuration error by design, docs/polling.md)."""

    configured: list[str] = field(default_factory=lambda: list(OBJECTS))
    modes: dict[str, str] = field(default_factory=lambda: dict.fromkeys(OBJECTS, "auto"))
    channel: bool = False
    deselected: set[str] = field(default_factory=set)
    exhausted: bool = False
    fields: int = 0
    second: bool = False  # a second `replicator run` runs

    def apply(self, op: str) -> None:
        kind, *args = op.split(":")
        if kind == "remove":
            self.configured.remove(args[0])
        elif kind == "add":
            self.configured.append(args[0])
        elif kind == "mode":
            self.modes[args[0]] = args[1]
        elif kind == "channel":
            self.channel = args[0] == "on"
        elif kind == "cdc":
            (self.deselected.add if args[1] == "off" else self.deselected.discard)(args[0])
        elif kind == "alloc":
            self.exhausted = args[0] == "off"
        elif kind == "field":
            self.fields += 1
        elif kind == "replica" and args[0] in ("start", "kill"):
            self.second = args[0] == "start"

    def expected_mode(self, obj: str) -> str | None:
        """The mode the service should store for `obj` now (None: no firm expectation)."""
        if self.modes[obj] == "poll" or (self.modes[obj] == "auto" and obj in self.deselected):
            return "poll"
        return None if self.exhausted else "cdc"


def _draw(rng: random.Random, world: World, kind: str) -> str | None:
    """One operation of `kind` that makes sense in `world`, or None."""
    configured, out = world.configured, [o for o in OBJECTS if o not in world.configured]
    if kind == "traffic":
        return f"traffic:{rng.choice([100, 200, 400])}"
    if kind == "late":
        return f"late:{rng.choice(OBJECTS)}:{rng.randint(1, 5)}:{rng.randint(2, LATE_MAX_S)}"
    if kind == "pgrestart":
        return f"pgrestart:{rng.choice(['fast', 'immediate'])}"
    if kind in ("kill", "term", "wait"):
        return kind
    if kind in ("resync", "resynckill"):
        return f"{kind}:{rng.choice(configured)}"
    if kind == "remove":
        return f"remove:{rng.choice(configured)}" if len(configured) > 1 else None
    if kind == "add":
        return f"add:{rng.choice(out)}" if out else None
    if kind == "mode":
        obj = rng.choice(OBJECTS)
        choices = [m for m in ("auto", "cdc", "poll") if m != world.modes[obj]
                   and not (m == "cdc" and obj in world.deselected)]
        return f"mode:{obj}:{rng.choice(choices)}"
    if kind == "channel":
        return f"channel:{'off' if world.channel else 'on'}"
    if kind == "cdc":
        if world.deselected and rng.random() < 0.6:
            return f"cdc:{rng.choice(sorted(world.deselected))}:on"
        can = [o for o in OBJECTS if o not in world.deselected and world.modes[o] != "cdc"]
        return f"cdc:{rng.choice(can)}:off" if can else None
    if kind == "alloc":
        return f"alloc:{'on' if world.exhausted else 'off'}"
    if kind == "field":
        return f"field:{rng.choice(OBJECTS)}"
    if kind == "replica":
        if not world.second:
            return "replica:start"
        action = rng.choices(["kill", "killfirst", "pause"], [1, 1, 1.5])[0]
        return "replica:pause:standby" if action == "pause" and rng.random() < 0.25 else f"replica:{action}"
    raise ValueError(kind)


def generate(seed: int, kinds: list[str], length: tuple[int, int] = (5, 15)) -> list[str]:
    """The operations of sequence `seed`: a pure function of the seed, the kinds and the length range."""
    rng = random.Random(seed)
    world = World()
    ops: list[str] = []
    weights = [WEIGHTS[k] for k in kinds]
    n = rng.randint(*length)
    for _ in range(n * 50):  # kinds that cannot apply now are drawn again; a bounded number of times
        if len(ops) == n:
            break
        op = _draw(rng, world, rng.choices(kinds, weights)[0])
        if op is not None:
            world.apply(op)
            ops.append(op)
    return ops


def parse_ops(text: str) -> list[str]:
    ops = [o.strip() for o in text.replace("\n", ";").split(";") if o.strip()]
    for op in ops:
        kind, *args = op.split(":")
        if kind not in KINDS:
            raise ValueError(f"unknown operation {op!r}: kinds are {', '.join(KINDS)}")
        if kind == "replica" and not (args[:1] and args[0] in REPLICA and (
                args[1:] == [] or (args[0] == "pause" and args[1:] in (["holder"], ["standby"])))):
            raise ValueError(f"unknown operation {op!r}: replica:{'|'.join(REPLICA)} or replica:pause:holder|standby")
    return ops


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
    if record["equal"] and not record["exits"] and not record["unexpected_phase_changes"]:
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


def _failure_class(columns: set[str]) -> str:
    """A row's difference, by what went wrong rather than which columns the traffic happened to touch."""
    if "isdeleted" in columns:
        return "IsDeleted differs"
    if "lastmodifieddate" in columns:
        return "a change not applied (stale row)"
    if columns == {"systemmodstamp"}:
        return "systemmodstamp differs (alone)"
    if columns and all(c.startswith("tr") and c.endswith("__c") for c in columns):
        return "added field's values not read"
    return "columns " + ", ".join(sorted(columns))


def signature(record: dict) -> list[str]:
    """What a failure looks like, independent of which records and columns: per object, the class of each
    differing row (or missing / extra rows). A minimised sequence must fail the same way, not by another defect."""
    out = set()
    for line in record.get("explain", []):
        obj, _, rest = line.partition(" ")
        _, _, what = rest.partition("): ")
        what = what.split(" [_sf_deleted_at")[0]
        if what.startswith("org ") and "table" in what:
            out.add(f"{obj}: row {what}")
        else:
            out.add(f"{obj}: {_failure_class({part.split(':')[0] for part in what.split('; ')})}")
    obj = None
    for line in (record.get("verify") or "").splitlines():  # a column verify found missing names no row
        if not line.startswith(" ") and ":" in line:
            obj = line.split(":")[0]
        elif "columns missing in Postgres" in line:
            out.add(f"{obj}: {line.strip()}")
    if not out and not record["equal"]:
        out.add(record["verify"].splitlines()[0] if record["verify"] else "no verify output")
    return sorted(out)


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


def _norm(value, pg_type: str):
    """A value of the org's dump or of a Postgres row in one comparable form (enough to name differing columns;
    `replicator verify` is the judge)."""
    if value is None or value == "":
        return None
    if isinstance(value, str):
        if pg_type == "timestamptz":
            return dt.datetime.fromisoformat(value.replace("Z", "+00:00").replace("+0000", "+00:00"))
        if pg_type == "date":
            return dt.date.fromisoformat(value)
        if pg_type in ("numeric", "integer", "bigint", "double precision"):
            return Decimal(value).normalize()
        if pg_type == "time":
            return dt.time.fromisoformat(value.rstrip("Z"))
        if pg_type == "boolean":
            return value.lower() == "true"
        return value
    if isinstance(value, bool):
        return value
    if isinstance(value, int | float | Decimal):
        return Decimal(str(value)).normalize()
    if isinstance(value, dt.time):
        return value.replace(tzinfo=None)
    return value


async def explain(sim: dict, url: str, verify_out: str, per_object: int = 3) -> list[str]:
    """For the first example keys of each object verify names: which columns differ between the org and the
    row (with both values), or whether the row is missing, soft-deleted or extra."""
    examples: dict[str, list[tuple[str, str]]] = {}
    obj = None
    for line in verify_out.splitlines():
        if not line.startswith(" ") and ":" in line:
            obj = line.split(":")[0]
        elif obj and line.strip().split(":")[0] in ("missing", "extra", "different"):
            kind, _, keys = line.strip().partition(": ")
            examples.setdefault(obj, []).extend((kind, k.strip()) for k in keys.split(",")[:per_object])
    out: list[str] = []
    conn = await asyncpg.connect(url)
    try:
        for obj, keys in examples.items():
            key_field = KEYS.get(obj, "Id")
            truth = {r.get(key_field): r async for r in org_records(sim, obj)}
            types = {r["column_name"]: r["t"] for r in await conn.fetch(
                "SELECT column_name, CASE WHEN data_type = 'timestamp with time zone' THEN 'timestamptz' "
                "WHEN data_type LIKE 'time%' THEN 'time' ELSE data_type END AS t FROM information_schema.columns WHERE table_schema = 'salesforce' "
                "AND table_name = $1", obj.lower())}
            for kind, key in keys:
                row = await conn.fetchrow(f'SELECT * FROM salesforce."{obj.lower()}" WHERE "{key_field.lower()}" = $1',
                                          key)
                rec = truth.get(key)
                if row is None or rec is None:
                    out.append(f"{obj} {key} ({kind}): org {'has it' if rec else 'lacks it'}"
                               f"{' (IsDeleted)' if rec and rec.get('IsDeleted') else ''}, table "
                               f"{'lacks it' if row is None else 'has it'}")
                    continue
                cols = [f"{c}: org {rec[f]!r} table {row[c]!r}" for f in rec if (c := f.lower()) in types
                        and not c.startswith("_sf_") and _norm(rec[f], types[c]) != _norm(row[c], types[c])]
                meta = f"_sf_deleted_at {row['_sf_deleted_at']}, _sf_version {row['_sf_version']}"
                out.append(f"{obj} {key} ({kind}): {'; '.join(cols) or 'no column differs now'} [{meta}]")
    finally:
        await conn.close()
    return out


async def _drop(server_url: str, database: str) -> None:
    conn = await asyncpg.connect(server_url)
    try:
        await conn.execute(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')
    finally:
        await conn.close()


def _kind(op: str) -> str:
    """An operation's kind as counted: `replica:ACTION` apart, the kind."""
    kind, *args = op.split(":")
    return f"replica:{args[0]}" if kind == "replica" else kind


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
            verdict = "equal" if record["equal"] else "DIFFERENT"
            print(f"transitions seed {seed}: {verdict} in {record['seconds']} s, {record['takeovers']} takeovers"
                  + "".join(f"\n  {p['op']}: {p['paused']} paused {p['seconds']} s, {len(p['taken_over'])} of its "
                            f"{len(p['held'])} units taken over, fenced commits after: {p['fenced_commits']}"
                            for p in record["pauses"])
                  + "".join(f"\n  stuck after {st['after']}: {st['unmet']}: {st['detail']}" for st in record["stuck"])
                  + (f"; exits: {record['exits']}" if record["exits"] else "")
                  + (f"; unexpected phase changes: {record['unexpected_phase_changes']} (log kept)"
                     if record.get("unexpected_phase_changes") else "")
                  + ("" if record["equal"] else f"\n{record['verify']}\n" + "\n".join(record.get("explain", []))
                     + f"\nlog: {record.get('log')}"), flush=True)
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
    figures = {"sequences": len(records), "operations": sum(len(r["ops"]) for r in records),
               "equal": len(records) - len(failures), "different": len(failures),
               "stuck_conditions": sum(len(r["stuck"]) for r in records),
               "unexpected_exits": sum(len(r["exits"]) for r in records),
               "unexpected_phase_changes": sum(r.get("unexpected_phase_changes", 0) for r in records),
               "takeovers": sum(r["takeovers"] for r in records),
               "pauses": sum(len(r["pauses"]) for r in records),
               "fenced_commits_after_pauses": sum(p["fenced_commits"] or 0 for r in records for p in r["pauses"]),
               "failing_seeds": ", ".join(str(r["seed"]) for r in failures) or "none"}
    kinds_rows = [{"x": k, "operations": v} for k, v in by_kind.items() if v]
    seq_rows = [{"x": r["seed"], "operations": len(r["ops"]), "equal": "yes" if r["equal"] else "NO",
                 "stuck": len(r["stuck"]), "seconds": r["seconds"], "takeovers": r["takeovers"],
                 "fenced": sum(p["fenced_commits"] or 0 for p in r["pauses"]), "ops": "; ".join(r["ops"])}
                for r in records]
    stuck_rows = [{"x": r["seed"], "after": st["after"], "unmet": ", ".join(st["unmet"]), "ops": "; ".join(r["ops"])}
                  for r in records for st in r["stuck"]]
    fail_rows = [{"x": r["seed"], "signature": "; ".join(r["signature"]),
                  "minimal": "; ".join(r["minimal"]["ops"]) if "minimal" in r else "—"} for r in failures]
    note = (f"{RECORDS} records an object, traffic at {RATE}/s; each sequence ends with refresh + verify of every "
            f"configured object; takeovers: units acquired after standing by (service.lease_s = {LEASE_S}); fenced: "
            "commits refused after a replica:pause")
    return {"figures": figures,
            "sweeps": [sweep("operations by kind", "kind", kinds_rows, ["operations"]),
                       sweep("sequences", "seed", seq_rows, [], note),
                       *([sweep("failures", "seed", fail_rows, [], "minimal: fewest operations that still fail "
                                "alike (--minimise); replay: --seed N --sequences 1 or --ops")] if fail_rows else []),
                       *([sweep("stuck", "seed", stuck_rows, [], f"a condition not met within {SETTLE_S} s of the "
                                "operation (then waived for the rest of the sequence)")] if stuck_rows else [])],
            "failures": failures, "stuck": [{"seed": r["seed"], "stuck": r["stuck"]} for r in records if r["stuck"]]}
