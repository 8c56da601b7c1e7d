"""Issue 21 "Upgrades": a database the release of 2026-11-30 (5e43839) wrote, upgraded in place, ends equal to the
org. The fixture (tests/fixtures/upgrade_2026_11_30, README there) is the state and rows that release left after a
backfill and a stream of org.json's transactions; the test makes the same org again (the simulator's seed and
records, the transactions replayed at their recorded commit times, checked against the org's recorded ground truth),
restores the database, and runs this release's service on it: migrations, the streams resumed from the old
checkpoints, and the derivation repairs (pipeline/repairs.py) once.

Without the repairs, 8 rows stay different for good after `refresh`: verify Contact different=6 (four computed
names: two whose components events changed, one created and one undeleted by an event, left NULL; Notes__c written
as a diff; the SystemModstamp of a late soft delete), Account different=2 (Description written as a diff; the
SystemModstamp of a late commit); the first test stops at the name the issue names ('Günter Dubois', the org
'Dr. Ana Tanaka')."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import asyncpg
import pytest

from replicator.sim.server import SimulatorThread

from .helpers import all_equal, pg_value, running_service, settings_for, sim_admin, wait_for

pytestmark = pytest.mark.slow  # the service on an old release's database

FIXTURE = Path(__file__).parents[1] / "fixtures" / "upgrade_2026_11_30"
ORG = json.loads((FIXTURE / "org.json").read_text())
OBJECTS = {name: {} for name in ORG["objects"]}
ANA = "0035g0000000003AAA"  # FirstName, LastName, then Salutation changed by events: the org says 'Dr. Ana Tanaka'
OLD_JOBS = {"Contact": "7505g0000000001AAA", "Account": "7505g0000000002AAA"}  # the old release's backfills


@pytest.fixture
def sim():
    """An org of this test's own: the fixture's org exactly, no other test's changes."""
    with SimulatorThread(records=ORG["records"], seed=ORG["seed"], keepalive_seconds=0.2) as thread:
        yield thread.info


async def _the_fixtures_org(sim: dict) -> None:
    """The org as the old release streamed it: org.json's transactions at their recorded times."""
    for tx in ORG["transactions"]:
        await sim_admin(sim, "POST", "/__sim/changes",
                        {k: tx[k] for k in ("commit_timestamp", "system_modstamp", "changes") if k in tx})
    truth = json.loads((FIXTURE / "truth.json").read_text())
    for name, digest in truth.items():
        records = (await sim_admin(sim, "GET", f"/__sim/objects/{name}/records")).content
        assert hashlib.sha256(records).hexdigest() == digest, \
            f"{name}: the simulator's org is not the one the fixture was made from: make the fixture again " \
            "(tests/fixtures/upgrade_2026_11_30/README.md)"


async def _the_old_releases_database(pg_url: str) -> None:
    conn = await asyncpg.connect(pg_url)
    try:
        await conn.execute((FIXTURE / "state.sql").read_bytes().decode())  # bytes: values hold CRLF line breaks
    finally:
        await conn.close()


def _settings(sim: dict, pg_url: str, **stream):
    return settings_for(sim, pg_url, "salesforce", salesforce={"pubsub_endpoint": sim["pubsub_endpoint"]},
                        stream={"batch_max_wait_s": 0.05, **stream}, service={"control_poll_s": 0.2},
                        objects=OBJECTS)


async def _streams(sim: dict, pg_url: str, phone: str) -> None:
    """A change made now on every object, waited for in the copy: each object's stream runs (its repairs done)."""
    ids = {"Account": "0015g0000000006AAA", "Contact": "0035g0000000004AAA"}
    for name, record in ids.items():
        await sim_admin(sim, "POST", "/__sim/changes",
                        [{"object": name, "type": "UPDATE", "ids": [record], "fields": {"Phone": phone}}])
    for name, record in ids.items():
        await wait_for(lambda n=name, r=record: pg_value(
            pg_url, f"SELECT phone = '{phone}' FROM salesforce.{n.lower()} WHERE id = '{r}'"), timeout=60)


async def _repairs(pg_url: str) -> dict[tuple[str, str], tuple]:
    conn = await asyncpg.connect(pg_url)
    try:
        rows = await conn.fetch("SELECT * FROM replicator.repairs")
    finally:
        await conn.close()
    return {(r["object"], r["repair"]): (r["outcome"], r["job_id"], r["finished_at"]) for r in rows}


async def _queries(sim: dict) -> list[str]:
    """The query of every Bulk job the org has run."""
    return [job["query"] for job in (await sim_admin(sim, "GET", "/__sim/jobs")).json()]


async def test_a_database_from_the_2026_11_30_release_upgraded_in_place_ends_equal(sim, pg_url):
    await _the_fixtures_org(sim)
    await _the_old_releases_database(pg_url)
    # As the old release left them: the computed name of the contact whose components events changed, NULL for
    # one created by an event, a diff for a long text value.
    assert await pg_value(pg_url, f"SELECT name FROM salesforce.contact WHERE id = '{ANA}'") == "Günter Dubois"
    assert await pg_value(pg_url, "SELECT name FROM salesforce.contact WHERE lastname = 'Sato'") is None
    assert await pg_value(pg_url, "SELECT left(description, 4) FROM salesforce.account"
                                  " WHERE id = '0015g0000000002AAA'") == "--- "
    settings = _settings(sim, pg_url)

    async with running_service(settings):
        await _streams(sim, pg_url, "upgraded-1")
    # The streams resumed from the old release's checkpoints: no new backfill, no resync.
    for name, job in OLD_JOBS.items():
        assert await pg_value(pg_url, f"SELECT job_id || ':' || resyncs || ':' || phase FROM replicator.objects"
                                      f" WHERE object = '{name}'") == f"{job}:0:STREAMING"
    assert await pg_value(pg_url, f"SELECT name FROM salesforce.contact WHERE id = '{ANA}'") == "Dr. Ana Tanaka"
    assert await all_equal(settings, refresh=True)

    repairs = await _repairs(pg_url)
    assert {key: outcome for key, (outcome, _, _) in repairs.items()} == {
        ("Account", "computed-name"): "not_needed",  # Account.Name is a field of its own, not computed
        ("Account", "text-diffs"): "repaired", ("Account", "stream-modstamp"): "repaired",
        ("Contact", "computed-name"): "repaired", ("Contact", "text-diffs"): "repaired",
        ("Contact", "stream-modstamp"): "repaired"}
    jobs = (await sim_admin(sim, "GET", "/__sim/jobs")).json()
    repair_jobs = {job for _, job, _ in repairs.values() if job}
    repair_queries = {j["query"] for j in jobs if j["id"] in repair_jobs}
    assert len(repair_jobs) == len(repair_queries) == 2  # one extract per object, for all its repairs
    queries = [j["query"] for j in jobs]
    assert all(queries.count(q) == 1 for q in repair_queries)

    # A second start: the repairs are recorded, none runs again.
    async with running_service(settings):
        await _streams(sim, pg_url, "upgraded-2")
    assert await _repairs(pg_url) == repairs
    queries = await _queries(sim)
    assert all(queries.count(q) == 1 for q in repair_queries)
    assert await all_equal(settings)


async def test_a_repair_cut_short_records_nothing_and_runs_at_the_next_start(sim, pg_url):
    """The service stops while a repair's extract runs: nothing is written or recorded; the next start repairs."""
    await _the_fixtures_org(sim)
    await _the_old_releases_database(pg_url)
    settings = _settings(sim, pg_url)
    await sim_admin(sim, "PUT", "/__sim/faults", {"hold_jobs": True})

    async def a_repair_job_is_held():
        return any(job["state"] == "UploadComplete" and "SystemModstamp FROM Contact" in job["query"]
                   for job in (await sim_admin(sim, "GET", "/__sim/jobs")).json())

    async with running_service(settings, until=a_repair_job_is_held, timeout=60):
        pass
    assert await pg_value(pg_url, "SELECT count(*) FROM replicator.repairs WHERE outcome = 'repaired'") == 0
    assert await pg_value(pg_url, f"SELECT name FROM salesforce.contact WHERE id = '{ANA}'") == "Günter Dubois"

    await sim_admin(sim, "PUT", "/__sim/faults", {"hold_jobs": False})
    async with running_service(settings):
        await _streams(sim, pg_url, "resumed")
    assert await pg_value(pg_url, "SELECT count(*) FROM replicator.repairs WHERE outcome = 'repaired'") == 5
    assert await all_equal(settings, refresh=True)


async def test_a_channels_members_are_repaired_under_the_channels_lease(sim, pg_url):
    """With `stream.channel`, a member's pending repairs run in the channel's unit, before the channel streams. A
    database this release created needs none; one made to look written by an earlier release (its migrations applied
    apart from 001, the tables loaded through the upsert, a computed name left stale) is repaired once."""
    channel = "/data/ChangeEvents"
    settings = _settings(sim, pg_url, channel=channel)
    # running_service waits for every member to stream on the channel: a change made before that may be read by the
    # first extract itself, and the copy show it before the channel took its members
    async with running_service(settings):
        await _streams(sim, pg_url, "fresh")
    assert {outcome for outcome, _, _ in (await _repairs(pg_url)).values()} == {"not_needed"}

    conn = await asyncpg.connect(pg_url)
    try:
        await conn.execute("DELETE FROM replicator.repairs")
        await conn.execute("UPDATE replicator.schema_migrations SET applied_at = applied_at + interval '1 hour'"
                           " WHERE version > 4")
        await conn.execute("UPDATE replicator.objects SET load_mode = 'upsert'")
        name = await conn.fetchval("SELECT name FROM salesforce.contact WHERE id = $1", ANA)
        await conn.execute("UPDATE salesforce.contact SET name = 'Ana Tanaka' WHERE id = $1", ANA)
    finally:
        await conn.close()
    async with running_service(settings):
        await _streams(sim, pg_url, "channel-repaired")
    assert await pg_value(pg_url, f"SELECT name FROM salesforce.contact WHERE id = '{ANA}'") == name != "Ana Tanaka"
    repairs = await _repairs(pg_url)
    assert repairs[("Contact", "computed-name")][0] == "repaired"
    assert await pg_value(pg_url, "SELECT string_agg(unit, ',' ORDER BY unit) FROM replicator.leases") \
        == f"channel:{channel}"  # no unit of its own: the members were repaired under the channel's lease
    assert await all_equal(settings, refresh=True)
