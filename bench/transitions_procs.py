"""The `replicator run` processes of a transitions sequence (bench/transitions.py): the first, and a second one on
the same database and configuration file (docs/operating.md "One writer"), each with a replica id and a port of its own.

`Run` is one process slot: started, stopped, killed, paused (SIGSTOP) and resumed, its /readyz and /metrics read.
A restart in a slot takes a new replica id (`first-2`, `second-3`): it is a new process, which waits for the dead
one's leases to expire, as a crashed pod's replacement without a stable name does.

`held_unmet` is the condition a settled pair meets: every configured object is served (/readyz names it in a phase
other than STANDBY) by exactly one live process, that process holds a live lease on the object's unit or on the
channel its members are written under, and every live process answers /readyz 200 (a standby's is 200 too). A
paused process is not asked (it cannot answer); its leases expire and the condition holds once the other took them.
"""

from __future__ import annotations

import json
import random
import signal
import socket
import subprocess
import sys
from pathlib import Path

import asyncpg
import httpx
from prometheus_client.parser import text_string_to_metric_families

LEASE_S = 3  # service.lease_s of the bench's processes (production: 15): takeovers take seconds
CHANNEL = "/data/ChangeEvents"  # the channel `channel:on` configures


def free_port() -> int:
    """A free port below Linux's ephemeral range (32768-60999): a port bind(0) hands out is in that range, and an
    outgoing connection of any process may take it before the service binds it again after a restart."""
    rng = random.SystemRandom()
    for _ in range(100):
        port = rng.randint(20_000, 32_000)
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError("no free port in 20000-32000")


class Run:
    """One `replicator run` slot of a sequence ("first" or "second"): the config file is shared, the port and the
    replica id are the process's own (environment variables, which win over the file)."""

    def __init__(self, slot: str, cfg: Path, env: dict, log):
        self.slot, self.cfg, self.env, self.log = slot, cfg, env, log
        self.starts = 0
        self.proc: subprocess.Popen | None = None
        self.replica = ""
        self.port = 0
        self.paused = False

    def __repr__(self) -> str:
        return self.replica or self.slot

    @property
    def running(self) -> bool:
        """Started and not stopped by the harness (it may have exited on its own: `exited`)."""
        return self.proc is not None

    def exited(self) -> int | None:
        """The exit code of a process that ended without the harness stopping it, else None."""
        return self.proc.poll() if self.proc is not None else None

    @property
    def live(self) -> bool:
        """Running and able to answer: not paused, not exited."""
        return self.proc is not None and not self.paused and self.proc.poll() is None

    def start(self, why: str) -> None:
        self.starts += 1
        self.replica, self.port, self.paused = f"{self.slot}-{self.starts}", free_port(), False
        self.log.write(f"\n=== start {self.replica} on port {self.port} ({why}) ===\n")
        self.log.flush()
        env = dict(self.env, REPLICATOR_SERVICE__PORT=str(self.port), REPLICATOR_SERVICE__REPLICA_ID=self.replica)
        self.proc = subprocess.Popen([sys.executable, "-m", "replicator.cli", "--log-json", "run", "--config",
                                      str(self.cfg)], env=env, stdout=self.log, stderr=self.log)

    def stop(self, sig: signal.Signals = signal.SIGTERM) -> str | None:
        """Signal the process and wait for it (a paused one is resumed after the signal, so SIGTERM is acted
        on); a note when a SIGTERM did not end it cleanly."""
        if self.proc is None:
            return None
        note = None
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            if self.paused:
                self.proc.send_signal(signal.SIGCONT)
        try:
            rc = self.proc.wait(timeout=90)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            rc = self.proc.wait()
            note = f"{self.replica}: SIGTERM: no exit within 90 s"
        if note is None and sig == signal.SIGTERM and rc != 0:
            note = f"{self.replica}: exit {rc} after SIGTERM"
        self.proc, self.paused = None, False
        return note

    def forget(self) -> None:
        """The process exited on its own (already reaped by `exited`)."""
        self.proc, self.paused = None, False

    def pause(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGSTOP)
        self.paused = True
        self.log.write(f"\n=== {self.replica} paused (SIGSTOP) ===\n")
        self.log.flush()

    def resume(self) -> None:
        if self.proc is not None and self.paused:
            self.proc.send_signal(signal.SIGCONT)
            self.log.write(f"\n=== {self.replica} resumed (SIGCONT) ===\n")
            self.log.flush()
        self.paused = False

    async def get(self, path: str) -> tuple[int, str]:
        try:
            async with httpx.AsyncClient(timeout=3) as http:
                r = await http.get(f"http://127.0.0.1:{self.port}{path}")
                return r.status_code, r.text
        except httpx.HTTPError as exc:
            return 0, f"{type(exc).__name__}: {exc}"

    async def fenced_commits(self) -> float | None:
        """replicator_fenced_commits_total over every unit, from /metrics (None: not served)."""
        status, text = await self.get("/metrics")
        if status != 200:
            return None
        return sum(s.value for f in text_string_to_metric_families(text) for s in f.samples
                   if s.name == "replicator_fenced_commits_total")


async def live_leases(url: str) -> dict[str, str] | None:
    """{unit: owner} of the leases live now on the database's clock (None: the database did not answer)."""
    try:
        conn = await asyncpg.connect(url, timeout=5)
    except (TimeoutError, OSError, asyncpg.PostgresError):
        return None
    try:
        rows = await conn.fetch("SELECT unit, owner FROM replicator.leases WHERE expires_at > now()")
    except asyncpg.PostgresError:
        return None
    finally:
        await conn.close()
    return {r["unit"]: r["owner"] for r in rows}


async def held_unmet(runs: list[Run], url: str, configured: list[str]) -> tuple[list[str], str]:
    """The conditions of a settled pair not met now (see the module docstring): `readyz` (a live process does not
    answer 200), `OBJ.held` (no live process serves OBJ, two do, or its server holds no live lease for it); and what
    the live processes said, for a stuck note."""
    out: list[str] = []
    serving: dict[str, list[Run]] = {o: [] for o in configured}
    said = []
    for run in (r for r in runs if r.live):
        status, body = await run.get("/readyz")
        said.append(f"{run.replica} {status} {body[:300]}")
        if status != 200:
            out.append("readyz")
            continue
        try:
            objects = json.loads(body).get("objects", {})
        except ValueError:
            objects = {}
        for obj in configured:
            if objects.get(obj, {}).get("phase", "STANDBY") != "STANDBY":
                serving[obj].append(run)
    leases = await live_leases(url) or {}
    for obj in configured:
        by = serving[obj]
        if len(by) != 1 or by[0].replica not in (leases.get(f"object:{obj}"), leases.get(f"channel:{CHANNEL}")):
            out.append(f"{obj}.held")
    return out, "; ".join(said) + f"; live leases {leases}"


def owner_slot(runs: list[Run], leases: dict[str, str], obj: str | None = None) -> Run | None:
    """The running process holding `obj` (its unit, else the channel), or, without `obj`, the one holding the most
    live leases; None when no running process holds any."""
    by_replica = {r.replica: r for r in runs if r.running}
    if obj is not None:
        for unit in (f"object:{obj}", f"channel:{CHANNEL}"):
            if leases.get(unit) in by_replica:
                return by_replica[leases[unit]]
        return None
    counts = {r: sum(owner == r.replica for owner in leases.values()) for r in by_replica.values()}
    best = max(counts, key=lambda r: counts[r], default=None)
    return best if best is not None and counts[best] else None


def takeovers(logs: list[str]) -> int:
    """Units acquired after standing by (`lease.taken_over`): from a process that died, was stopped or paused, or
    from a crashed predecessor in the same slot."""
    n = 0
    for name in logs:
        try:
            n += Path(name).read_text(errors="replace").count('"event": "lease.taken_over"')
        except OSError:
            pass
    return n
