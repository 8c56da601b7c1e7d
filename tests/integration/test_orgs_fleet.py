"""Two orgs and three `replicator run` on one database (docs/orgs.md, docs/replicas.md): every unit of each org
held by exactly one replica; SIGKILL of an owner: its units applied by another within lease + 5 s; an owner
SIGSTOPped inside a commit and resumed after the takeover writes nothing (fenced, counted); SIGTERM of one moves
its units within 5 s; `replicator verify --org` equal for both orgs."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time

import asyncpg
import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from replicator.sim.server import SimulatorThread

from .helpers import finish, free_port, sim_admin, start_logged, wait_for
from .test_orgs import ORGS, fresh, org_rows, orgs_toml

pytestmark = pytest.mark.slow  # three services and two orgs

OBJECTS = ("Account", "Contact", "Opportunity")
LEASE_S = 6.0
UNITS = {(org, f"object:{o}") for org in ORGS for o in OBJECTS}


@pytest.fixture(scope="module")
def sims():
    with SimulatorThread(orgs=2, records=100, seed=41, keepalive_seconds=0.2) as thread:
        yield dict(zip(ORGS, thread.infos, strict=True))


class _Run:
    """One `replicator run` of both orgs, with a replica id and a metrics port of its own."""

    def __init__(self, cfg: str, replica: str):
        self.replica, self.port = replica, free_port()
        env = dict(os.environ, REPLICATOR_SERVICE__PORT=str(self.port), REPLICATOR_SERVICE__REPLICA_ID=replica)
        self.proc = start_logged([sys.executable, "-m", "replicator.cli", "--log-json", "run", "--config", cfg], env)

    async def samples(self, name: str) -> list[tuple[dict, float]]:
        with contextlib.suppress(httpx.HTTPError):
            async with httpx.AsyncClient(timeout=2) as http:
                text = (await http.get(f"http://127.0.0.1:{self.port}/metrics")).text
            return [(s.labels, s.value) for f in text_string_to_metric_families(text) for s in f.samples
                    if s.name == name]
        return []

    def stop(self) -> tuple[int | None, str]:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGCONT)
            self.proc.send_signal(signal.SIGTERM)
        err = finish(self.proc, 60)
        return self.proc.returncode, err


async def _owners(pg_url: str) -> dict[tuple[str, str], str]:
    """{(org, unit): owner} of the live leases of both orgs."""
    try:
        rows = await org_rows(pg_url, "SELECT unit, owner FROM leases WHERE expires_at > now()")
    except (asyncpg.UndefinedTableError, asyncpg.InvalidSchemaNameError):  # not migrated yet
        return {}
    return {(org, unit): owner for org, pairs in rows.items() for unit, owner in pairs}


async def _applied(pg_url: str, org: str) -> int:
    return (await org_rows(pg_url, "SELECT coalesce(sum(events_applied), 0) FROM checkpoints"))[org][0][0]


async def _published(sim: dict) -> int:
    return (await sim_admin(sim, "GET", "/__sim/stats")).json()["events_published"]


async def _traffic(sim: dict, changes: int, wait: bool = True) -> None:
    """`changes` more creates and updates of Accounts (deletes would cascade to topics counted apart)."""
    target = (await sim_admin(sim, "GET", "/__sim/traffic")).json()["made"] + changes
    await sim_admin(sim, "PUT", "/__sim/traffic", {"running": True, "rate": 200, "changes": target,
                                                   "objects": ["Account"], "mix": {"CREATE": 0.2, "UPDATE": 0.8}})

    async def made() -> bool:
        return (await sim_admin(sim, "GET", "/__sim/traffic")).json()["made"] >= target
    if wait:
        await wait_for(made, timeout=60)


def _caught_up(pg_url: str, sims: dict, org: str):
    async def check() -> bool:
        return await _applied(pg_url, org) >= await _published(sims[org])
    return check


def _balanced(pg_url: str, runs: list[_Run]):
    """Every unit held, each replica one unit of each org (its fair share: 3 units ÷ 3 replicas)."""
    async def check() -> bool:
        owners = await _owners(pg_url)
        per = {(org, r.replica): sum(1 for (o, _), owner in owners.items() if o == org and owner == r.replica)
               for org in ORGS for r in runs}
        return set(owners) == UNITS and set(per.values()) == {1}
    return check


def _moved(pg_url: str, units: set, leaving: str):
    async def check() -> bool:
        owners = await _owners(pg_url)
        return all(owners.get(u) not in (None, leaving) for u in units)
    return check


async def _waiting_in(pg_url: str, org: str, replica: str) -> bool:
    """A session of `replica`'s for `org` waits on the lock the test holds on the org's checkpoints."""
    conn = await asyncpg.connect(pg_url)
    try:
        return bool(await conn.fetchval(
            "SELECT count(*) FROM pg_locks l JOIN pg_stat_activity a USING (pid) WHERE NOT l.granted"
            " AND l.relation = format('replicator_%s.checkpoints', $1::text)::regclass AND a.application_name = $2",
            org, f"replicator {org} {replica}"))
    finally:
        await conn.close()


async def _fenced(run: _Run) -> float:
    return sum(v for _, v in await run.samples("replicator_fenced_commits_total"))


async def test_two_orgs_three_replicas_kill_pause_and_sigterm(sims, pg_url, tmp_path):
    await fresh(pg_url)
    cfg = tmp_path / "orgs.toml"
    text = orgs_toml(sims, pg_url, 0, lease_s=LEASE_S)
    cfg.write_text(text.replace('[orgs.acme.objects.Contact]\n', '[orgs.acme.objects.Contact]\n'
                                '[orgs.acme.objects.Opportunity]\n')
                   .replace('[orgs.globex.objects.Contact]\n', '[orgs.globex.objects.Contact]\n'
                            '[orgs.globex.objects.Opportunity]\n'))
    runs = [_Run(str(cfg), f"r{i}") for i in (1, 2, 3)]
    lock = None
    try:
        await wait_for(_balanced(pg_url, runs), timeout=120)
        # exactly one replica holds each unit, by the replicas' own word (their metrics) as by the leases
        held: dict[tuple[str, str], list[str]] = {}
        for r in runs:
            for labels, value in await r.samples("replicator_unit_held"):
                if value == 1:
                    held.setdefault((labels["org"], labels["unit"]), []).append(r.replica)
        assert {u: len(v) for u, v in held.items()} == {u: 1 for u in UNITS}, held
        for org in ORGS:
            await _traffic(sims[org], 40)
            await wait_for(_caught_up(pg_url, sims, org), timeout=60)

        # SIGKILL the owner of acme's Account: another applies its units within lease + 5 s
        owners = await _owners(pg_url)
        victim = next(r for r in runs if r.replica == owners[("acme", "object:Account")])
        units = {u for u, o in owners.items() if o == victim.replica}
        victim.proc.send_signal(signal.SIGKILL)
        victim.proc.wait(30)
        killed = time.monotonic()
        await _traffic(sims["acme"], 30)
        await wait_for(_moved(pg_url, units, victim.replica), timeout=LEASE_S + 5)
        await wait_for(_caught_up(pg_url, sims, "acme"), timeout=LEASE_S + 5 - (time.monotonic() - killed))
        print(f"after SIGKILL: {len(units)} units applied by others in {time.monotonic() - killed:.2f} s")
        runs.remove(victim)
        finish(victim.proc, 5)
        runs.append(_Run(str(cfg), "r4"))  # the Deployment's replacement pod
        await wait_for(_balanced(pg_url, runs), timeout=60)

        # SIGSTOP the owner of globex's Account inside a commit, past its lease; resumed, it commits nothing
        holder = (await _owners(pg_url))[("globex", "object:Account")]
        owner = next(r for r in runs if r.replica == holder)
        lock = await asyncpg.connect(pg_url)
        tr = lock.transaction()
        await tr.start()
        await lock.execute("LOCK TABLE replicator_globex.checkpoints IN EXCLUSIVE MODE")
        await _traffic(sims["globex"], 20, wait=False)
        await wait_for(lambda: _waiting_in(pg_url, "globex", owner.replica), timeout=30)
        owner.proc.send_signal(signal.SIGSTOP)
        await tr.rollback()
        await wait_for(_moved(pg_url, {("globex", "object:Account")}, owner.replica), timeout=LEASE_S + 10)
        owner.proc.send_signal(signal.SIGCONT)
        await wait_for(lambda: _fenced_at_least(owner), timeout=30)
        await _traffic(sims["globex"], 30)
        await wait_for(_caught_up(pg_url, sims, "globex"), timeout=60)
        for org in ORGS:
            assert await _applied(pg_url, org) == await _published(sims[org]), f"{org}: each event applied once"

        # SIGTERM one: its units move within 5 s
        await wait_for(_balanced(pg_url, runs), timeout=60)
        owners = await _owners(pg_url)
        leaving = runs[0]
        units = {u for u, o in owners.items() if o == leaving.replica}
        leaving.proc.send_signal(signal.SIGTERM)
        signalled = time.monotonic()
        await wait_for(_moved(pg_url, units, leaving.replica), timeout=5)
        print(f"after SIGTERM: {len(units)} units held by others in {time.monotonic() - signalled:.2f} s")
        errors = finish(leaving.proc, 60)
        assert leaving.proc.returncode == 0, errors[-3000:]
        runs.remove(leaving)
        for org in ORGS:
            await _traffic(sims[org], 20)
            await wait_for(_caught_up(pg_url, sims, org), timeout=60)
    except (AssertionError, TimeoutError) as exc:  # what each replica did of its units, in the failure's report
        for r in runs:
            exc.add_note(f"{r.replica}'s last lease and fleet log lines:\n{_lease_lines(r)}")
        raise
    finally:
        if lock is not None:
            await lock.close()
        results = [(r.replica, *r.stop()) for r in runs]
    assert all(code == 0 for _, code, _ in results), [(n, e[-2000:]) for n, c, e in results if c != 0]

    env = dict(os.environ)
    for org in ORGS:  # formula fields change in the org without events: refresh, then compare
        for command in ("refresh", "verify"):
            out = subprocess.run([sys.executable, "-m", "replicator.cli", command, "--config", str(cfg), "--org", org],
                                 env=env, capture_output=True, text=True, timeout=300)
            assert out.returncode == 0, (command, org, out.stdout[-2000:], out.stderr[-2000:])


def _lease_lines(run: _Run, last: int = 12) -> str:
    run.proc.log_file.seek(0)  # type: ignore[attr-defined]
    lines = [line[:300] for line in run.proc.log_file.read().decode(errors="replace").splitlines()  # type: ignore[attr-defined]
             if '"event": "lease.' in line or '"event": "fleet.' in line]
    run.proc.log_file.seek(0, os.SEEK_END)  # type: ignore[attr-defined]
    return "\n".join(lines[-last:])


async def _fenced_at_least(run: _Run) -> bool:
    return await _fenced(run) >= 1
