"""Several replicas on one database share the units (docs/replicas.md; app/fleet.py): each takes at
most its fair share (units ÷ live replicas, rounded up), the first, which took everything alone, hands extras back
when a second joins, and a replica that stops hands its units over within seconds, not a lease later. Leases are
long here (LEASE_S): a unit that moves within seconds was released, never left to expire."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
import time

import httpx
import orjson
import pytest
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from replicator.app.service import Service
from replicator.config import load_settings
from replicator.sim.server import SimulatorThread

from .helpers import (
    OBJECTS,
    all_equal,
    finish,
    free_port,
    pg_value,
    settings_for,
    sim_admin,
    start_logged,
    wait_for,
)

pytestmark = pytest.mark.slow  # several services

LEASE_S = 300  # the standby of a release never waits for an expiry, nor for a renewal period (a third of it)
UNITS = {f"object:{name}" for name in OBJECTS}
HANDOVER_S = 5  # the bound for a SIGTERM; about a second is the aim


@pytest.fixture(scope="module")
def sim():
    with SimulatorThread(records=150, seed=19, keepalive_seconds=0.2) as thread:
        yield thread.info


def _settings(sim, pg_url: str, replica: str):
    return settings_for(sim, pg_url, "fleet", salesforce={"pubsub_endpoint": sim["pubsub_endpoint"]},
                        service={"lease_s": LEASE_S, "replica_id": replica, "control_poll_s": 0.2,
                                 "shutdown_timeout_s": 15},
                        stream={"batch_max_wait_s": 0.05})


async def _owners(pg_url: str) -> dict[str, str]:
    """{unit: owner} of the live leases."""
    rows = await pg_value(pg_url, "SELECT coalesce(jsonb_object_agg(unit, owner), '{}') FROM replicator.leases"
                                  " WHERE expires_at > now()")
    return orjson.loads(rows) if rows else {}


def _counts(owners: dict[str, str]) -> dict[str, int]:
    out: dict[str, int] = {}
    for owner in owners.values():
        out[owner] = out.get(owner, 0) + 1
    return out


class _Replica:
    """One `Service` in this process, with a replica id of its own."""

    def __init__(self, settings):
        self.name = settings.service.replica_id
        self.svc = Service(settings)
        self.task = asyncio.create_task(self.svc.run())

    def held(self) -> set[str]:
        units = getattr(self.svc, "units", None)
        return set(units.held()) if units is not None else set()

    def sees(self, replicas: int) -> bool:
        units = getattr(self.svc, "units", None)
        return units is not None and units.fleet.replicas == replicas

    async def get(self, path: str) -> httpx.Response:
        async with httpx.AsyncClient(timeout=5) as http:
            return await http.get(f"http://127.0.0.1:{self.svc.endpoints.port}{path}")

    async def stop(self) -> int:
        self.svc.stop.set()
        return await asyncio.wait_for(self.task, 60)


async def _stats(sim) -> dict:
    return (await sim_admin(sim, "GET", "/__sim/stats")).json()


async def _traffic(sim, changes: int) -> int:
    """`changes` more creates and updates over the four objects, made; the events published so far."""
    target = (await sim_admin(sim, "GET", "/__sim/traffic")).json()["made"] + changes
    await sim_admin(sim, "PUT", "/__sim/traffic", {"running": True, "rate": 200, "changes": target,
                                                   "transaction_size": 2, "mix": {"CREATE": 0.2, "UPDATE": 0.8}})

    async def made() -> bool:
        return (await sim_admin(sim, "GET", "/__sim/traffic")).json()["made"] >= target
    await wait_for(made, timeout=60)
    return (await _stats(sim))["events_published"]


async def _applied(pg_url: str) -> int:
    return await pg_value(pg_url, "SELECT coalesce(sum(events_applied), 0) FROM replicator.checkpoints") or 0


async def _all_streaming(pg_url: str) -> bool:
    return await pg_value(pg_url, "SELECT count(*) = 4 FROM replicator.objects WHERE phase = 'STREAMING'")


async def _async(value):
    return value


async def test_replicas_share_the_units_and_hand_them_over_when_one_stops(sim, pg_url):
    """The first replica takes all four objects alone, hands two back when a second joins (2 + 2), a third takes
    the one its share gives it (2 + 1 + 1: app/fleet.py `shares`; none above ceil(4/3) = 2, each unit held once),
    and a replica that stops hands its units to the others within seconds while changes keep arriving."""
    before = (await _stats(sim))["events_published"]
    a = _Replica(_settings(sim, pg_url, "a"))
    replicas = [a]
    everyone = [a]
    try:
        await wait_for(lambda: _async(a.held() == UNITS), timeout=60)  # alone: it takes every unit
        await wait_for(lambda: _all_streaming(pg_url), timeout=90)
        b = _Replica(_settings(sim, pg_url, "b"))
        replicas.append(b)
        everyone.append(b)
        await wait_for(lambda: _async(len(a.held()) == 2 and len(b.held()) == 2), timeout=30)
        assert a.held() | b.held() == UNITS
        assert _counts(await _owners(pg_url)) == {"a": 2, "b": 2}

        c = _Replica(_settings(sim, pg_url, "c"))
        replicas.append(c)
        everyone.append(c)
        await wait_for(lambda: _async(all(r.sees(3) for r in replicas)), timeout=30)
        # a replica above its share hands one unit to the third (a drain, then the third takes it)
        await wait_for(lambda: _async(sorted(len(r.held()) for r in replicas) == [1, 1, 2]), timeout=30)
        owners = await _owners(pg_url)
        assert set(owners) == UNITS and max(_counts(owners).values()) <= 2
        assert a.held() | b.held() | c.held() == UNITS
        small = next(r for r in replicas if len(r.held()) == 1)
        ready = await small.get("/readyz")  # ready, and standing by for the units the others hold
        assert ready.status_code == 200 and ready.json()["standby"] == sorted(UNITS - small.held()), ready.text

        def fences() -> set[tuple[str, str]]:  # each unit's holder, as this replica last read the leases
            seen = generate_latest(small.svc.metrics.registry).decode()
            return {(s.labels["unit"], s.labels["owner"]) for f in text_string_to_metric_families(seen)
                    for s in f.samples if s.name == "replicator_unit_fence"}

        await wait_for(lambda: _async(fences() == set(owners.items())), timeout=10)  # its next read (lease_poll_s)
        seen = generate_latest(small.svc.metrics.registry).decode()
        assert "replicator_replicas_live 3.0" in seen and "replicator_units_fair_share 1.0" in seen

        leaving = next(r for r in replicas if r.held())
        moved = leaving.held()
        stopped = time.monotonic()
        stopping = asyncio.ensure_future(leaving.stop())
        await wait_for(lambda: _moved(pg_url, moved, leaving.name), timeout=HANDOVER_S)
        handover = time.monotonic() - stopped
        assert await stopping == 0
        replicas.remove(leaving)
        assert {u for r in replicas for u in r.held()} == UNITS
        assert max(len(r.held()) for r in replicas) == 2
        published = await _traffic(sim, 200) - before
        await wait_for(lambda: _applied_at_least(pg_url, published), timeout=60)
        assert await _applied(pg_url) == published, "each event applied once"
        print(f"handover after a stop: {handover:.2f} s")
    finally:
        for r in replicas:
            if not r.task.done():
                assert await r.stop() == 0
    assert len(everyone) == 3 and all(_fenced(r) == 0 for r in everyone), "no commit refused: units handed back"
    assert await all_equal(_settings(sim, pg_url, "verify"), refresh=True)


def _fenced(replica: _Replica) -> float:
    text = generate_latest(replica.svc.metrics.registry).decode()
    return sum(s.value for f in text_string_to_metric_families(text) for s in f.samples
               if s.name == "replicator_fenced_commits_total")


async def _moved(pg_url: str, units: set[str], leaving: str) -> bool:
    """Every one of `units` is held (live) by a replica other than `leaving`."""
    owners = await _owners(pg_url)
    return all(owners.get(u) not in (None, leaving) for u in units)


async def _applied_at_least(pg_url: str, n: int) -> bool:
    return await _applied(pg_url) >= n


def _config(tmp_path, sim, pg_url: str, lease_s: float) -> str:
    cfg = tmp_path / "run.toml"
    cfg.write_text(
        "[salesforce]\n"
        f'instance_url = "{sim["instance_url"]}"\nclient_id = "{sim["client_id"]}"\nca_file = "{sim["ca_file"]}"\n'
        f'pubsub_endpoint = "{sim["pubsub_endpoint"]}"\n'
        f'[postgres]\nurl = "{pg_url}"\nschema = "fleet"\n'
        f'[service]\nhost = "127.0.0.1"\nshutdown_timeout_s = 15\ncontrol_poll_s = 0.2\nlease_s = {lease_s}\n'
        "[backfill]\npoll_max_s = 0.2\n[stream]\nbatch_max_wait_s = 0.05\n"
        + "".join(f"[objects.{name}]\n" + "".join(f'{k} = "{v}"\n' for k, v in opts.items())
                  for name, opts in OBJECTS.items()))
    return str(cfg)


class _Run:
    """One `replicator run` process with a replica id and a metrics port of its own."""

    def __init__(self, cfg: str, sim, replica: str):
        self.replica, self.port = replica, free_port()
        env = dict(os.environ, REPLICATOR_SALESFORCE__CLIENT_SECRET=sim["client_secret"],
                   REPLICATOR_SERVICE__PORT=str(self.port), REPLICATOR_SERVICE__REPLICA_ID=replica)
        self.proc = start_logged([sys.executable, "-m", "replicator.cli", "--log-json", "run", "--config", cfg], env)

    async def up(self) -> bool:
        with contextlib.suppress(httpx.HTTPError):
            async with httpx.AsyncClient(timeout=2) as http:
                return (await http.get(f"http://127.0.0.1:{self.port}/healthz")).status_code == 200
        return False

    async def metrics(self) -> dict[str, list]:
        async with httpx.AsyncClient(timeout=5) as http:
            text = (await http.get(f"http://127.0.0.1:{self.port}/metrics")).text
        out: dict[str, list] = {}
        for family in text_string_to_metric_families(text):
            for s in family.samples:
                out.setdefault(s.name, []).append((s.labels, s.value))
        return out

    def stop(self) -> tuple[int | None, str]:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        err = finish(self.proc, 60)
        return self.proc.returncode, err


async def test_sigterm_hands_a_replicas_units_to_the_other_within_5_s(sim, pg_url, tmp_path):
    """Two `replicator run`: SIGTERM of the one that holds Account moves every unit it held to the other within
    5 s (it drains them and releases the leases; the other reads the leases every service.lease_poll_s), and the
    other applies what follows."""
    cfg = _config(tmp_path, sim, pg_url, LEASE_S)
    before = (await _stats(sim))["events_published"]
    runs = [_Run(cfg, sim, "one"), _Run(cfg, sim, "two")]
    errors = ""
    try:
        await wait_for(lambda: _all_streaming(pg_url), timeout=90)
        await wait_for(lambda: _all_up(runs), timeout=30)
        await wait_for(lambda: _all_held(pg_url), timeout=30)
        # balanced first (2 units each): the first replica up takes all four, then hands two back by fair share
        # (released "fair share", not "the service stops"); a snapshot before that counted them as the leaver's
        await wait_for(lambda: _balanced(pg_url), timeout=30)
        owners = await _owners(pg_url)
        leaving = next(r for r in runs if r.replica == owners["object:Account"])
        staying = next(r for r in runs if r is not leaving)
        moved = {u for u, o in owners.items() if o == leaving.replica}
        published = await _traffic(sim, 100) - before
        await wait_for(lambda: _applied_at_least(pg_url, published), timeout=60)

        leaving.proc.send_signal(signal.SIGTERM)
        signalled = time.monotonic()
        await wait_for(lambda: _moved(pg_url, moved, leaving.replica), timeout=HANDOVER_S)
        handover = time.monotonic() - signalled
        errors = finish(leaving.proc, 60)  # it exits by itself: one signal only (a second exits at once)
        assert leaving.proc.returncode == 0, errors[-3000:]
        fences = (await staying.metrics())["replicator_unit_fence"]
        assert {(s["unit"], s["owner"]) for s, _ in fences} == {(u, staying.replica) for u in UNITS}
        published = await _traffic(sim, 100) - before
        await wait_for(lambda: _applied_at_least(pg_url, published), timeout=60)
        assert await _applied(pg_url) == published, "each event applied once"
        print(f"handover after SIGTERM: {handover:.2f} s for {len(moved)} units")
    finally:
        for r in runs:
            code, err = r.stop()
            assert code == 0, err[-3000:]
    released = {e["unit"] for e in _events(errors) if e.get("event") == "lease.released"
                and e.get("why") == "the service stops"}
    assert released == moved, errors[-3000:]  # drained and released, none left to expire
    assert await all_equal(load_settings(cfg, overrides={"salesforce": {"client_secret": sim["client_secret"]}}),
                           refresh=True)


def _events(log: str) -> list[dict]:
    out = []
    for line in log.splitlines():
        with contextlib.suppress(orjson.JSONDecodeError):
            out.append(orjson.loads(line))
    return [e for e in out if isinstance(e, dict)]


async def _all_up(runs: list[_Run]) -> bool:
    return all([await r.up() for r in runs])


async def _all_held(pg_url: str) -> bool:
    return set(await _owners(pg_url)) == UNITS


async def _balanced(pg_url: str) -> bool:
    owners = await _owners(pg_url)
    return set(owners) == UNITS and sorted(_counts(owners).values()) == [2, 2]
