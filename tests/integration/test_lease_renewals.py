"""Lease renewals batched per process (app/units.py; docs/scale.md "Batch renewals per replica"): every third of
`service.lease_s` one statement renews every lease the process holds, on a real Postgres. The statements are counted
as the database driver sends them (a query logger on each of the store's connections), the renewals by the rows'
`renewed_at`: one statement's rows share its transaction's `now()`."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator

import asyncpg
import pytest
from structlog.testing import capture_logs

from replicator.app.units import Units
from replicator.config import ServiceSettings
from replicator.observe.metrics import Metrics
from replicator.postgres.store import Store

from .helpers import wait_for

UNITS = [f"object:O{i:02d}" for i in range(20)]
LEASE_S = 1.5  # a renewal every half second
STATE = {"search_path": "replicator"}  # the state schema of the org `default`, as Store.open sets it


class _Counted:
    """The lease renewals the database was sent: statements that UPDATE the leases' `renewed_at`."""

    def __init__(self) -> None:
        self.renewals = 0

    def log(self, query) -> None:
        text = " ".join(query.query.split())
        if text.startswith(("UPDATE leases", "UPDATE replicator.leases")) and "renewed_at = now()" in text:
            self.renewals += 1

    async def init(self, conn: asyncpg.Connection) -> None:
        conn.add_query_logger(self.log)


@pytest.fixture
async def counted(pg_url) -> AsyncIterator[tuple[Store, _Counted]]:
    async with Store.open(pg_url, 2):  # migrated
        pass
    counter = _Counted()
    pool = await asyncpg.create_pool(pg_url, min_size=0, max_size=6, init=counter.init, server_settings=STATE)
    try:
        yield Store(pool), counter
    finally:
        await pool.close()


class _Gated(Store):
    """A store whose lease renewals wait at `gate` (open unless a test closes it) before they reach the database, and
    fail while `failing` (as when the database does not answer)."""

    def __init__(self, pool: asyncpg.Pool):
        super().__init__(pool)
        self.gate, self.waiting, self.renewed = asyncio.Event(), asyncio.Event(), asyncio.Event()
        self.gate.set()
        self.failing = False

    async def renew_leases(self, owner: str, fences: dict[str, int], lease_s: float) -> set[str]:
        self.waiting.set()
        await self.gate.wait()
        if self.failing:
            raise ConnectionResetError("the database does not answer")
        try:
            return await super().renew_leases(owner, fences, lease_s)
        finally:
            self.renewed.set()


@pytest.fixture
async def gated(counted, pg_url) -> AsyncIterator[_Gated]:
    pool = await asyncpg.create_pool(pg_url, min_size=0, max_size=4, server_settings=STATE)
    try:
        yield _Gated(pool)
    finally:
        await pool.close()


@contextlib.asynccontextmanager
async def _holding(store: Store, units: list[str], drain_s: float = 30,
                   stubborn: bool = False) -> AsyncIterator[tuple[Units, dict[str, asyncio.Task]]]:
    """One process (`Units`) holding `units`, each with work that runs until its unit's stop (`stubborn`: until
    cancelled)."""
    stop = asyncio.Event()
    settings = ServiceSettings(lease_s=LEASE_S, replica_id="only", shutdown_timeout_s=drain_s)
    held = Units(store, settings, Metrics(), stop)

    async def work(unit: str) -> None:
        async with held.hold(unit) as unit_stop:
            await (asyncio.Event() if stubborn else unit_stop).wait()

    tasks = {unit: asyncio.ensure_future(work(unit)) for unit in units}
    try:
        await wait_for(lambda: _async(len(held.held()) == len(units)), timeout=20)
        yield held, tasks
    finally:
        stop.set()
        await asyncio.wait_for(asyncio.gather(*tasks.values(), return_exceptions=True), 20)
        await held.close()


async def _rows(store: Store) -> dict[str, dict]:
    return {r["unit"]: r for r in await store.leases()}


async def _async(value):
    return value


async def test_one_statement_per_tick_renews_every_lease_the_process_holds(counted):
    store, counter = counted
    async with _holding(store, UNITS) as (units, _):
        rows = await _rows(store)
        acquired = max(r["acquired_at"] for r in rows.values())

        async def all_renewed() -> bool:
            return min(r["renewed_at"] for r in (await _rows(store)).values()) > acquired
        await wait_for(all_renewed, timeout=10)
        rows = await _rows(store)
        assert len({r["renewed_at"] for r in rows.values()}) == 1, "renewed together, by one statement"
        assert {u: r["fence"] for u, r in rows.items()} == units.held() == dict.fromkeys(UNITS, 1)

        before = counter.renewals
        await asyncio.sleep(LEASE_S * 2)  # about six ticks of a third of the lease
        statements = counter.renewals - before
        assert 4 <= statements <= 8, f"{statements} renewal statements for {len(UNITS)} units over six ticks"
        assert all(r["live"] for r in (await _rows(store)).values())


async def test_a_unit_taken_over_is_lost_in_the_batch_and_its_work_stops_while_the_others_stay_held(counted, pg_url):
    store, _ = counted
    taken = UNITS[7]
    with capture_logs() as logs:
        async with _holding(store, UNITS) as (units, tasks):
            conn = await asyncpg.connect(pg_url)
            try:  # another process took the unit over (this one was paused past its lease, say)
                bumped = await conn.fetchval(
                    "UPDATE replicator.leases SET owner = 'thief', fence = fence + 1, renewed_at = now(),"
                    " expires_at = now() + interval '60 seconds' WHERE unit = $1 RETURNING renewed_at", taken)
            finally:
                await conn.close()
            await wait_for(lambda: _async(taken not in units.held()), timeout=10)
            await asyncio.wait_for(tasks[taken], 10)  # its work ended on the unit's stop
            others = [u for u in UNITS if u != taken]
            assert units.held() == dict.fromkeys(others, 1)
            assert not any(tasks[u].done() for u in others)

            async def others_renewed() -> bool:
                rows = await _rows(store)
                return min(rows[u]["renewed_at"] for u in others) > bumped
            await wait_for(others_renewed, timeout=10)
            rows = await _rows(store)
            assert len({rows[u]["renewed_at"] for u in others}) == 1, "the others renewed together, by one statement"
            assert all(rows[u]["live"] and rows[u]["owner"] == "only" for u in others)
            assert (rows[taken]["owner"], rows[taken]["fence"]) == ("thief", 2)
            await wait_for(lambda: _async(units.standby() == [taken]), timeout=10)
    lost = [e for e in logs if e["event"] == "lease.lost"]
    assert [(e["unit"], e["fence"]) for e in lost] == [(taken, 1)]


async def test_a_release_while_a_renewal_is_in_flight_stays_released(gated):
    """The renewer's statement carries every lease held when it started; a unit handed back meanwhile is released
    after that statement, never before it (the renewal would extend the released lease again: the unit would wait
    for an expiry, `lease_s`, instead of moving at once)."""
    store = gated
    moved, kept = UNITS[:2]
    with capture_logs() as logs:
        async with _holding(store, [moved, kept]) as (units, tasks):
            # another live replica (holding nothing, running nothing): this one is not alone, so it does not take
            # back at once the unit it hands back (app/fleet.py), and the released row stays released
            await store.heartbeat("other", [], 0, 60)
            await wait_for(lambda: _async(units.fleet.replicas == 2), timeout=10)
            store.gate.clear()
            store.waiting.clear()
            await asyncio.wait_for(store.waiting.wait(), 10)  # a renewal of both, on its way
            store.renewed.clear()
            units.drain(units._leases[moved], "handed back")
            await asyncio.wait_for(tasks[moved], 10)  # its work ended: its keeper releases it
            await asyncio.sleep(0.3)
            store.gate.set()
            await asyncio.wait_for(store.renewed.wait(), 10)
            await wait_for(lambda: _async(any(e["event"] == "lease.released" for e in logs)), timeout=10)
            rows = await _rows(store)
            assert (rows[moved]["live"], rows[kept]["live"]) == (False, True)
            assert units.held() == {kept: 1}


async def test_while_renewals_fail_the_leases_run_until_lease_s_after_their_last_renewal(gated):
    """The database does not answer the renewals: every lease still runs until `lease_s` after its last renewal
    (its work goes on), then it is lost and its work stops; once the database answers, the units are taken again."""
    store = gated
    with capture_logs() as logs:
        async with _holding(store, UNITS[:2]) as (units, tasks):
            store.renewed.clear()
            await asyncio.wait_for(store.renewed.wait(), 10)
            store.failing = True
            failing_since = time.monotonic()
            await asyncio.sleep(LEASE_S / 3 * 2)  # a tick or two failed
            assert any(e["event"] == "lease.renew_failed" for e in logs)
            assert units.held() == dict.fromkeys(UNITS[:2], 1)
            assert not any(t.done() for t in tasks.values())
            await wait_for(lambda: _async(units.held() == {}), timeout=10)
            assert time.monotonic() - failing_since >= LEASE_S - LEASE_S / 3  # no sooner than lease_s after the last
            await asyncio.wait_for(asyncio.gather(*tasks.values()), 10)  # the work stopped
            store.failing = False
            await wait_for(lambda: _async(units.held() == dict.fromkeys(UNITS[:2], 2)), timeout=10)
    assert sorted(e["unit"] for e in logs if e["event"] == "lease.lost") == UNITS[:2]


async def test_a_drain_that_overruns_cancels_the_work_then_releases_while_renewals_go_on(gated):
    """A unit handed back whose work ignores its stop: renewed meanwhile, its work cancelled after
    `service.shutdown_timeout_s`, then released."""
    store = gated
    moved, kept = UNITS[:2]
    with capture_logs() as logs:
        async with _holding(store, [moved, kept], drain_s=LEASE_S, stubborn=True) as (units, tasks):
            await store.heartbeat("other", [], 0, 60)  # not alone: the unit released is not taken back at once
            await wait_for(lambda: _async(units.fleet.replicas == 2), timeout=10)
            drained = time.monotonic()
            units.drain(units._leases[moved], "handed back")
            store.renewed.clear()
            await asyncio.wait_for(store.renewed.wait(), 10)
            assert moved in units.held() and not tasks[moved].done()  # draining, renewed meanwhile
            await asyncio.wait_for(tasks[moved], 10)  # cancelled: the hold ends quietly
            assert time.monotonic() - drained >= LEASE_S - 0.1
            await wait_for(lambda: _async(any(e["event"] == "lease.released" for e in logs)), timeout=10)
            assert units.held() == {kept: 1}
            rows = await _rows(store)
            assert (rows[moved]["live"], rows[kept]["live"]) == (False, True)
            units.drain(units._leases[kept], "the test ends")  # stubborn: ends by the drain's cancel, too
    events = [e["event"] for e in logs if e.get("unit") == moved]
    assert events.index("lease.drain_overran") < events.index("lease.work_cancelled") < events.index("lease.released")


async def test_each_org_renews_the_leases_of_its_own_state_schema(counted, pg_url):
    """Two orgs in one database (`replicator` and `replicator_acme`), one process each holding the same unit names:
    each renewal statement renews its own org's rows (the pool's search_path), never the other's."""
    store, _ = counted  # the org `default`
    units = UNITS[:3]
    async with Store.open(pg_url, 4, state_schema="replicator_acme") as acme:
        async with _holding(store, units) as (default_units, _), _holding(acme, units) as (acme_units, _):
            stores = {"default": store, "acme": acme}
            rows = {name: await _rows(s) for name, s in stores.items()}
            started = {name: max(r["acquired_at"] for r in rows[name].values()) for name in stores}

            async def both_renewed() -> bool:
                rows = {name: await _rows(s) for name, s in stores.items()}
                return all(min(r["renewed_at"] for r in rows[name].values()) > started[name] for name in stores)
            await wait_for(both_renewed, timeout=10)
            await asyncio.sleep(LEASE_S * 1.5)  # past a lease: neither org's leases lapsed
            assert default_units.held() == acme_units.held() == dict.fromkeys(units, 1)
            rows = {name: await _rows(s) for name, s in stores.items()}
            assert all(r["live"] for name in stores for r in rows[name].values())
