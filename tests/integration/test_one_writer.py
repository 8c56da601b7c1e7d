"""One writer per object (docs/design.md, contract 10): two `replicator run` on one database. One applies, the other
stands by and takes over when the first dies; a first process paused past its lease and resumed commits nothing
(its commit is fenced and counted) and every published event is applied exactly once."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import asyncpg
import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from replicator.config import load_settings
from replicator.sim.server import SimulatorThread

from .helpers import all_equal, finish, free_port, pg_value, sim_admin, start_logged, wait_for

pytestmark = pytest.mark.slow  # `replicator run` subprocesses

LEASE_S = 2  # short, so a takeover takes seconds (the default is 15)
UNIT = "object:Account"


@pytest.fixture(scope="module")
def sim():
    with SimulatorThread(records=200, seed=61, keepalive_seconds=0.2) as thread:
        yield thread.info


def _config(tmp_path, sim, pg_url: str, channel: str | None = None) -> str:
    cfg = tmp_path / "run.toml"
    cfg.write_text(
        "[salesforce]\n"
        f'instance_url = "{sim["instance_url"]}"\nclient_id = "{sim["client_id"]}"\nca_file = "{sim["ca_file"]}"\n'
        f'pubsub_endpoint = "{sim["pubsub_endpoint"]}"\n'
        f'[postgres]\nurl = "{pg_url}"\nschema = "one"\n'
        f'[service]\nhost = "127.0.0.1"\nshutdown_timeout_s = 15\ncontrol_poll_s = 0.2\nlease_s = {LEASE_S}\n'
        "[backfill]\npoll_max_s = 0.2\n[stream]\nbatch_max_wait_s = 0.05\n"
        + (f'channel = "{channel}"\n' if channel else "") + "[objects.Account]\n")
    return str(cfg)


class _Run:
    """One `replicator run` with a replica id and a metrics port of its own."""

    def __init__(self, cfg: str, sim, replica: str, unit: str = UNIT):
        self.replica, self.unit, self.port = replica, unit, free_port()
        env = dict(os.environ, REPLICATOR_SALESFORCE__CLIENT_SECRET=sim["client_secret"],
                   REPLICATOR_SERVICE__PORT=str(self.port), REPLICATOR_SERVICE__REPLICA_ID=replica)
        self.proc: subprocess.Popen = start_logged(
            [sys.executable, "-m", "replicator.cli", "--log-json", "run", "--config", cfg], env)

    async def get(self, path: str) -> httpx.Response | None:
        try:
            async with httpx.AsyncClient(timeout=2) as http:
                return await http.get(f"http://127.0.0.1:{self.port}{path}")
        except httpx.HTTPError:
            return None

    async def fenced_commits(self) -> float:
        r = await self.get("/metrics")
        assert r is not None, "metrics not served"
        return sum(s.value for f in text_string_to_metric_families(r.text) for s in f.samples
                   if s.name == "replicator_fenced_commits_total")

    async def standing_by(self) -> bool:
        r = await self.get("/readyz")
        return r is not None and r.json().get("standby") == [self.unit]

    def stop(self) -> tuple[int | None, str]:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGCONT)  # a paused process cannot drain
            self.proc.send_signal(signal.SIGTERM)
        err = finish(self.proc, 60)
        return self.proc.returncode, err


async def _stats(sim) -> dict:
    return (await sim_admin(sim, "GET", "/__sim/stats")).json()


async def _owner(pg_url: str, unit: str = UNIT) -> str | None:
    return await pg_value(pg_url, f"SELECT owner FROM replicator.leases WHERE unit = '{unit}'")


async def _applied(pg_url: str) -> int:
    return await pg_value(pg_url, "SELECT coalesce(sum(events_applied), 0) FROM replicator.checkpoints") or 0


async def _traffic(sim, changes: int, wait: bool = True) -> int:
    """Make `changes` more changes of Accounts (and with `wait` wait until the org made them); the events published
    so far (by this module's org: earlier tests' included). Creates and updates only: a deleted Account's Contacts
    and Opportunities are deleted with it, and their events (on topics not replicated here) would count."""
    target = (await sim_admin(sim, "GET", "/__sim/traffic")).json()["made"] + changes
    await sim_admin(sim, "PUT", "/__sim/traffic", {"running": True, "rate": 200, "changes": target,
                                                   "transaction_size": 2, "objects": ["Account"],
                                                   "mix": {"CREATE": 0.2, "UPDATE": 0.8}})

    async def made() -> bool:
        return (await sim_admin(sim, "GET", "/__sim/traffic")).json()["made"] >= target
    if wait:
        await wait_for(made, timeout=60)
    return (await _stats(sim))["events_published"]


async def _streaming(pg_url: str) -> bool:
    return await pg_value(pg_url, "SELECT phase = 'STREAMING' FROM replicator.objects WHERE object = 'Account'")


@pytest.mark.parametrize("channel", [None, "/data/ChangeEvents"], ids=["object", "channel"])
async def test_second_run_stands_by_then_takes_over_after_sigkill(sim, pg_url, tmp_path, channel):
    """Per object, and for a channel (its members written under the channel's lease)."""
    cfg = _config(tmp_path, sim, pg_url, channel)
    unit = f"channel:{channel}" if channel else UNIT
    before = (await _stats(sim))["events_published"]  # by earlier tests: the backfill covers them
    first = _Run(cfg, sim, "first", unit)
    second = None
    try:
        await wait_for(lambda: _streaming(pg_url), timeout=90)
        second = _Run(cfg, sim, "second", unit)
        await wait_for(lambda: second.get("/healthz"), timeout=30)
        published = await _traffic(sim, 150) - before
        await wait_for(lambda: _applied_at_least(pg_url, published), timeout=60)
        assert await _applied(pg_url) == published, "each event applied once, by one of the two"
        assert await _owner(pg_url, unit) == "first"
        await wait_for(second.standing_by, timeout=10)

        first.proc.send_signal(signal.SIGKILL)
        first.proc.wait(timeout=30)
        killed = time.monotonic()
        published = await _traffic(sim, 150) - before
        await wait_for(lambda: _applied_at_least(pg_url, published), timeout=60)
        assert time.monotonic() - killed < 20, "the standby applies within 20 s of the first's death"
        assert await _owner(pg_url, unit) == "second"
        assert await _applied(pg_url) == published
    finally:
        first.stop()
        code, err = second.stop() if second is not None else (0, "")
    assert code == 0, err[-3000:]
    assert '"event": "lease.standing_by"' in err and '"event": "lease.taken_over"' in err, err[-3000:]
    assert await all_equal(_settings(cfg, sim), refresh=True)  # formulas change without events


def _settings(cfg: str, sim):
    return load_settings(cfg, overrides={"salesforce": {"client_secret": sim["client_secret"]}})


async def _applied_at_least(pg_url: str, n: int) -> bool:
    return await _applied(pg_url) >= n


async def _waiting_on_checkpoints(conn: asyncpg.Connection) -> bool:
    """Another session waits for the lock `conn` holds on replicator.checkpoints (only the first process writes
    there; asyncpg prepares each statement first, and a Parse waiting for its table's lock shows as 'idle' with
    its previous query, so the wait is all there is to match)."""
    return bool(await conn.fetchval(
        "SELECT count(*) FROM pg_locks l JOIN pg_stat_activity a USING (pid) WHERE NOT l.granted"
        " AND l.relation = 'replicator.checkpoints'::regclass AND a.datname = current_database()"))


async def test_run_paused_past_its_lease_commits_nothing_when_resumed(sim, pg_url, tmp_path):
    cfg = _config(tmp_path, sim, pg_url)
    before = (await _stats(sim))["events_published"]  # by earlier tests: the backfill covers them
    first = _Run(cfg, sim, "first")
    second = None
    lock = None
    try:
        await wait_for(lambda: _streaming(pg_url), timeout=90)
        second = _Run(cfg, sim, "second")
        await wait_for(second.standing_by, timeout=30)
        # Catch the first process inside a commit: its checkpoint write waits on this lock; paused there, its
        # transaction stays open (its rows written, the commit not yet asked for) past its lease.
        lock = await asyncpg.connect(pg_url)
        tr = lock.transaction()
        await tr.start()
        await lock.execute("LOCK TABLE replicator.checkpoints IN EXCLUSIVE MODE")
        await _traffic(sim, 20, wait=False)
        await wait_for(lambda: _waiting_on_checkpoints(lock), timeout=30)
        first.proc.send_signal(signal.SIGSTOP)
        await tr.rollback()
        await wait_for(lambda: _owner_is(pg_url, "second"), timeout=30)  # its lease expired: the standby holds it
        first.proc.send_signal(signal.SIGCONT)
        await wait_for(lambda: _fenced(first), timeout=30)
        published = await _traffic(sim, 100) - before
        await wait_for(lambda: _applied_at_least(pg_url, published), timeout=60)
        assert await _applied(pg_url) == published, "the paused process's batch was not committed"
        assert await _owner(pg_url) == "second"
    finally:
        if lock is not None:
            await lock.close()
        code1, err1 = first.stop()
        code2, err2 = second.stop() if second is not None else (0, "")
    assert (code1, code2) == (0, 0), (err1 + err2)[-3000:]
    assert '"event": "lease.lost"' in err1, err1[-3000:]
    assert await all_equal(_settings(cfg, sim), refresh=True)  # formulas change without events


async def _owner_is(pg_url: str, owner: str) -> bool:
    return await _owner(pg_url) == owner


async def _fenced(run: _Run) -> bool:
    return await run.fenced_commits() >= 1
