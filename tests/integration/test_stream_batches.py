"""A batch with bad events, gaps and orphan updates: nothing crashes, nothing is lost, the checkpoint holds."""

from __future__ import annotations

import asyncpg
import pytest
from structlog.testing import capture_logs

from replicator.app.commands import run_backfills
from replicator.app.runtime import open_store, salesforce_client
from replicator.model import Change, StreamEvent, Version
from replicator.pipeline.stream import ObjectStream
from replicator.postgres.state import load_checkpoint
from replicator.sim.server import SimulatorThread

from .helpers import compare_with_truth, ground_truth, settings_for, sim_admin

# The test's own sessions see the default org's state unqualified, as the Store's do (postgres/store.py).
DEFAULT_STATE = {"search_path": "replicator"}

TOPIC = "/data/AccountChangeEvent"


@pytest.fixture(scope="module")
def sim():
    with SimulatorThread(records=60, seed=9) as thread:
        yield thread.info


def ev(replay: int, *changes: Change, **kw) -> StreamEvent:
    ts = max((c.version.commit_timestamp for c in changes), default=None)
    return StreamEvent(TOPIC, replay.to_bytes(10, "big"), tuple(changes), commit_timestamp=ts, **kw)


def upd(rid: str, ts: int, kind: str = "UPDATE", obj: str = "Account", **fields) -> Change:
    return Change(obj, rid, kind, Version(ts), f"t{ts}", fields)


async def test_bad_events_are_dead_letters_and_gaps_and_orphans_are_fetched(sim, pg_url):
    settings = settings_for(sim, pg_url, "batches", objects={"Account": {}})
    await run_backfills(settings, ["Account"])
    truth = {r["Id"]: r for r in await ground_truth(sim, "Account") if not r["IsDeleted"]}
    a, b, c = list(truth)[:3]
    now = 4_000_000_000_000  # newer than any generated record
    conn = await asyncpg.connect(pg_url, server_settings=DEFAULT_STATE)
    await conn.execute("UPDATE batches.account SET name = 'stale' WHERE id = $1", b)  # the gap heals this
    await conn.execute("DELETE FROM batches.account WHERE id = $1", c)  # an update for a row we lack
    async with salesforce_client(settings) as client, open_store(settings) as store:
        stream = ObjectStream(client, None, store, settings, "Account", settings.objects["Account"])
        await stream.applier.load_schema()
        await stream.apply_batch([
            ev(1, error="corrupt Avro payload: unexpected end", payload=b"\x02\xff", schema_id="bad"),
            ev(2, upd("003000000000001AAA", now, obj="Contact", Phone="1")),
            ev(3, upd(a, now, Phone="+1 000")),
            ev(4, upd(b, now, kind="GAP_UPDATE")),
            ev(5, upd(c, now, Phone="+1 111")),
        ])
    try:
        assert await conn.fetchval("SELECT phone FROM batches.account WHERE id = $1", a) == "+1 000"
        dead = await conn.fetch("SELECT object, reason FROM replicator.dead_letters ORDER BY id")
        assert [d["object"] for d in dead] == ["Account", "Contact"]
        assert "undecodable" in dead[0]["reason"] and "not configured" in dead[1]["reason"]
        assert await load_checkpoint(conn, TOPIC) == (5).to_bytes(10, "big")
    finally:
        await conn.close()
    # b and c were fetched by id: equal to the org again (c's phone is the org's, not the event's).
    problems = await compare_with_truth(pg_url, "batches", "Account", "Id", [truth[b], truth[c]])
    assert [p for p in problems if "extra" not in p] == []
    assert stream.stats.refetched == 2


async def test_a_value_postgres_refuses_is_a_dead_letter_and_the_rest_applies(sim, pg_url):
    settings = settings_for(sim, pg_url, "refused", objects={"Account": {}})
    await run_backfills(settings, ["Account"])
    a, b = [r["Id"] for r in await ground_truth(sim, "Account") if not r["IsDeleted"]][:2]
    now = 4_000_000_000_000
    async with salesforce_client(settings) as client, open_store(settings) as store:
        stream = ObjectStream(client, None, store, settings, "Account", settings.objects["Account"])
        await stream.applier.load_schema()
        # NumberOfEmployees is an int column: a value past its range is refused by Postgres, not by Python
        await stream.apply_batch([ev(7, upd(a, now, NumberOfEmployees=2**40)), ev(8, upd(b, now, Phone="+1 222"))])
    conn = await asyncpg.connect(pg_url, server_settings=DEFAULT_STATE)
    try:
        assert await conn.fetchval("SELECT phone FROM refused.account WHERE id = $1", b) == "+1 222"
        reasons = [r[0] for r in await conn.fetch("SELECT reason FROM replicator.dead_letters")]
        assert len(reasons) == 1 and "postgres refused" in reasons[0]
        assert await load_checkpoint(conn, TOPIC) == (8).to_bytes(10, "big")
    finally:
        await conn.close()


async def test_gap_then_delete_keeps_the_deleted_records_last_values(sim, pg_url):
    settings = settings_for(sim, pg_url, "gapdel", objects={"Account": {}})
    await run_backfills(settings, ["Account"])
    acc = [r["Id"] for r in await ground_truth(sim, "Account") if not r["IsDeleted"]][20]
    # In the org: a change our stream only sees as a GAP event, then a delete of the same record.
    await sim_admin(sim, "POST", "/__sim/changes", [{"object": "Account", "type": "UPDATE", "ids": [acc],
                                                    "fields": {"Phone": "+1 999"}, "force_gap": True}])
    await sim_admin(sim, "POST", "/__sim/changes", [{"object": "Account", "type": "DELETE", "ids": [acc]}])
    truth = [r for r in await ground_truth(sim, "Account") if r["Id"] == acc]
    t = truth[0]["SystemModstamp"]
    import datetime as dt

    ms = int(dt.datetime.fromisoformat(t.replace("Z", "+00:00")).timestamp() * 1000)
    async with salesforce_client(settings) as client, open_store(settings) as store:
        stream = ObjectStream(client, None, store, settings, "Account", settings.objects["Account"])
        await stream.applier.load_schema()
        await stream.apply_batch([ev(11, upd(acc, ms - 1, kind="GAP_UPDATE")), ev(12, upd(acc, ms, kind="DELETE"))])
    problems = await compare_with_truth(pg_url, "gapdel", "Account", "Id", truth)
    assert [p for p in problems if not p.endswith(": extra")] == []  # only this record is compared
    conn = await asyncpg.connect(pg_url, server_settings=DEFAULT_STATE)
    try:
        row = await conn.fetchrow("SELECT phone, isdeleted FROM gapdel.account WHERE id = $1", acc)
    finally:
        await conn.close()
    assert (row["phone"], row["isdeleted"]) == ("+1 999", True)


async def test_fields_outside_a_configured_subset_cost_one_describe_per_schema(sim, pg_url):
    # `objects.X.fields` replicates a subset: events still carry the other fields. Deciding that once per schema
    # id, not once per batch, keeps a busy stream from calling describe (an API call) for every batch.
    obj = {"Account": {"fields": ["Id", "Name", "SystemModstamp", "IsDeleted"]}}
    settings = settings_for(sim, pg_url, "subset", objects=obj)
    await run_backfills(settings, ["Account"])
    ids = [r["Id"] for r in await ground_truth(sim, "Account") if not r["IsDeleted"]][:3]
    now = 4_000_000_000_000
    async with salesforce_client(settings) as client, open_store(settings) as store:
        stream = ObjectStream(client, None, store, settings, "Account", settings.objects["Account"])
        await stream.applier.load_schema()
        describes = []
        real = client.describe

        async def counted(name):
            describes.append(name)
            return await real(name)

        client.describe = counted
        for n, rid in enumerate(ids):
            change = Change("Account", rid, "UPDATE", Version(now + n), f"t{n}", {"Name": f"N{n}", "Phone": "+1 5"},
                            schema_id="schema-1")
            await stream.apply_batch([ev(20 + n, change)])
    assert len(describes) <= 1
    conn = await asyncpg.connect(pg_url, server_settings=DEFAULT_STATE)
    try:
        names = {r["id"]: r["name"] for r in await conn.fetch("SELECT id, name FROM subset.account WHERE id = ANY($1)",
                                                               ids)}
    finally:
        await conn.close()
    assert names == {rid: f"N{n}" for n, rid in enumerate(ids)}


async def test_text_sent_as_a_diff_is_applied_to_the_stored_value_or_fetched(sim, pg_url):
    import difflib
    import hashlib

    def sf_diff(old: str, new: str) -> str:
        hunks = list(difflib.unified_diff(old.split("\n"), new.split("\n"), n=0, lineterm=""))[2:]
        return "--- \n+++ " + hashlib.sha256(new.encode()).hexdigest() + "\n" + "\n".join(hunks)

    long = "\n".join(f"Paragraph {i}: business applications are moving to the cloud." for i in range(40))
    a, b = [r["Id"] for r in await ground_truth(sim, "Account") if not r["IsDeleted"]][30:32]
    await sim_admin(sim, "POST", "/__sim/changes", [{"object": "Account", "type": "UPDATE", "ids": [a, b],
                                                    "fields": {"Description": long}}])
    settings = settings_for(sim, pg_url, "diffs", objects={"Account": {}})
    await run_backfills(settings, ["Account"])  # Postgres holds `long` for both
    new_a = long.replace("Paragraph 3: business applications", "Paragraph 3: business apps")
    new_b = long.replace("Paragraph 9:", "Paragraph nine:")
    await sim_admin(sim, "POST", "/__sim/changes", [
        {"object": "Account", "type": "UPDATE", "ids": [a], "fields": {"Description": new_a}},
        {"object": "Account", "type": "UPDATE", "ids": [b], "fields": {"Description": new_b}}])
    now = 4_000_000_000_000

    def diff_change(rid: str, n: int, diff: str) -> Change:
        return Change("Account", rid, "UPDATE", Version(now + n), f"d{n}", {"Description": diff},
                      diff_fields=frozenset({"Description"}), replay_id=(40 + n).to_bytes(10, "big"))

    async with salesforce_client(settings) as client, open_store(settings) as store:
        stream = ObjectStream(client, None, store, settings, "Account", settings.objects["Account"])
        await stream.applier.load_schema()
        stale = long.replace("Paragraph 1:", "Paragraph one:")  # b's diff was made from a value we never had
        await stream.apply_batch([ev(40, diff_change(a, 0, sf_diff(long, new_a))),
                                  ev(41, diff_change(b, 1, sf_diff(stale, stale.replace("Paragraph 9:", "P9:"))))])
    conn = await asyncpg.connect(pg_url, server_settings=DEFAULT_STATE)
    try:
        rows = {r["id"]: r["description"] for r in await conn.fetch(
            "SELECT id, description FROM diffs.account WHERE id = ANY($1)", [a, b])}
    finally:
        await conn.close()
    assert rows[a] == new_a  # the diff applied to the stored value, its SHA-256 checked
    assert rows[b] == new_b  # the diff did not fit: the record was fetched from the org
    assert stream.stats.refetched == 1


class _RefusingPubSub:
    """Pub/Sub that answers INVALID_ARGUMENT without an error-code trailer to one stored position (a fake stream
    is enough here: what is tested is the lifecycle's answer to a refusal, not the transport)."""

    def __init__(self, refused: bytes, fresh: bytes, stop):
        self.refused, self.fresh, self.stop, self.subscribed = refused, fresh, stop, []

    def subscribe(self, topic, *, replay_id, **_):
        self.subscribed.append(replay_id)
        return _Sub(self, replay_id)

    async def current_position(self, topic, timeout):
        return self.fresh


class _Sub:
    connected = False

    def __init__(self, pubsub, replay_id):
        self.pubsub, self.replay_id = pubsub, replay_id

    def take_ready(self, limit):
        return []

    async def wait_ready(self, timeout):
        from replicator.model import TerminalError

        if self.replay_id == self.pubsub.refused:
            raise TerminalError("Subscribe /data/AccountChangeEvent: gRPC INVALID_ARGUMENT", code="INVALID_ARGUMENT")
        self.pubsub.stop.set()  # streaming from the fresh position: the test is over

    async def close(self):
        pass


async def test_a_position_refused_twice_without_a_reason_resyncs_loudly(sim, pg_url):
    import asyncio

    from replicator.model import Checkpoint

    settings = settings_for(sim, pg_url, "refused", objects={"Account": {}})
    await run_backfills(settings, ["Account"])
    refused, fresh = (7).to_bytes(10, "big"), (9).to_bytes(10, "big")
    stop = asyncio.Event()
    pubsub = _RefusingPubSub(refused, fresh, stop)
    async with salesforce_client(settings) as client, open_store(settings) as store:
        await store.save_checkpoint(Checkpoint(TOPIC, refused, None))
        stream = ObjectStream(client, pubsub, store, settings, "Account", settings.objects["Account"])
        await asyncio.wait_for(stream.run(stop), timeout=60)
        state = await store.get_object("Account")
    assert pubsub.subscribed == [refused, refused, fresh]  # once more, then a resync from a captured position
    assert stream.stats.resyncs == 1 and state.phase == "STREAMING"


async def test_a_subscription_refused_even_from_a_fresh_position_stops_instead_of_resyncing_forever(sim, pg_url):
    import asyncio

    from replicator.model import Checkpoint, TerminalError

    settings = settings_for(sim, pg_url, "refused2", objects={"Account": {}})
    await run_backfills(settings, ["Account"])
    refused = (7).to_bytes(10, "big")
    pubsub = _RefusingPubSub(refused, refused, asyncio.Event())  # the captured position is refused too
    async with salesforce_client(settings) as client, open_store(settings) as store:
        await store.save_checkpoint(Checkpoint(TOPIC, refused, None))
        stream = ObjectStream(client, pubsub, store, settings, "Account", settings.objects["Account"])
        with pytest.raises(TerminalError, match="INVALID_ARGUMENT"):
            await asyncio.wait_for(stream.run(asyncio.Event()), timeout=60)
    assert stream.stats.resyncs == 1 and len(pubsub.subscribed) == 3


async def test_dead_letters_postgres_refuses_too_do_not_stop_the_stream(sim, pg_url):
    # The row-by-row fallback ends with one commit of the dead letters and the checkpoint. If Postgres refuses
    # that too, the letters are logged in full and the checkpoint still moves on: the object never gets stuck.
    from structlog.testing import capture_logs

    settings = settings_for(sim, pg_url, "stuck", objects={"Account": {}})
    await run_backfills(settings, ["Account"])
    a, b = [r["Id"] for r in await ground_truth(sim, "Account") if not r["IsDeleted"]][:2]
    conn = await asyncpg.connect(pg_url, server_settings=DEFAULT_STATE)
    await conn.execute("ALTER TABLE replicator.dead_letters ADD CONSTRAINT poison "
                       "CHECK (payload::text NOT LIKE '%1099511627776%')")
    async with salesforce_client(settings) as client, open_store(settings) as store:
        stream = ObjectStream(client, None, store, settings, "Account", settings.objects["Account"])
        await stream.applier.load_schema()
        with capture_logs() as logs:
            await stream.apply_batch([ev(7, upd(a, 4_000_000_000_000, NumberOfEmployees=2**40)),
                                      ev(8, upd(b, 4_000_000_000_000, Phone="+1 333"))])
    try:
        assert await conn.fetchval("SELECT phone FROM stuck.account WHERE id = $1", b) == "+1 333"
        assert await load_checkpoint(conn, TOPIC) == (8).to_bytes(10, "big")
        letters = await conn.fetch("SELECT record_key, payload FROM replicator.dead_letters")
        assert [r["record_key"] for r in letters] == [a]  # kept, with its payload in the log
        logged = [e for e in logs if e["event"] == "stream.dead_letters_refused"]
        assert logged and "1099511627776" in str(logged[0]["dead_letters"])
    finally:
        await conn.close()


async def test_a_resync_removes_rows_the_org_no_longer_has(sim, pg_url):
    # Records purged from the Recycle Bin (or hard-deleted while the stream was away) publish no change event:
    # only the resync's extract shows they are gone. Rows it lacks, that nothing wrote since it began, go.
    settings = settings_for(sim, pg_url, "purged", objects={"Account": {}})
    await run_backfills(settings, ["Account"])
    conn = await asyncpg.connect(pg_url, server_settings=DEFAULT_STATE)
    ghost, kept = "001000000000GHOSTA", [r["Id"] for r in await ground_truth(sim, "Account")][:1]
    await conn.execute("INSERT INTO purged.account (id, name, isdeleted, systemmodstamp, _sf_synced_at) "
                       "VALUES ($1, 'purged in the org', false, now() - interval '1 day', now() - interval '1 day')",
                       ghost)
    try:
        async with salesforce_client(settings) as client, open_store(settings) as store:
            stream = ObjectStream(client, None, store, settings, "Account", settings.objects["Account"])
            await stream.resync("test: the stream was away")
        row = await conn.fetchrow("SELECT isdeleted FROM purged.account WHERE id = $1", ghost)
        assert row is not None and row["isdeleted"] is True  # soft deletes: kept, marked deleted
        assert await conn.fetchval("SELECT count(*) FROM purged.account WHERE id = $1 AND NOT isdeleted", kept[0]) \
            == (0 if next(r for r in await ground_truth(sim, "Account") if r["Id"] == kept[0])["IsDeleted"] else 1)
    finally:
        await conn.close()
    problems = await compare_with_truth(pg_url, "purged", "Account", "Id", await ground_truth(sim, "Account"))
    assert problems == [f"Account {ghost}: extra"]  # the row stays as history, marked deleted (soft deletes)


async def test_records_purged_while_the_stream_was_away_leave_the_table_at_the_resync(sim, pg_url):
    settings = settings_for(sim, pg_url, "away", objects={"Account": {"deletes": "hard"}})
    await run_backfills(settings, ["Account"])
    live = [r["Id"] for r in await ground_truth(sim, "Account") if not r["IsDeleted"]]
    purged, hard = live[40], live[41]
    # While the stream is away: one record deleted then emptied from the Recycle Bin, one hard-deleted.
    for change in ({"object": "Account", "type": "DELETE", "ids": [purged]},
                   {"object": "Account", "type": "PURGE", "ids": [purged]},
                   {"object": "Account", "type": "HARD_DELETE", "ids": [hard]}):
        r = await sim_admin(sim, "POST", "/__sim/changes", [change])
        assert r.status_code == 200, r.text
    async with salesforce_client(settings) as client, open_store(settings) as store:
        stream = ObjectStream(client, None, store, settings, "Account", settings.objects["Account"])
        await stream.resync("test: replay position expired")
    truth = [r for r in await ground_truth(sim, "Account") if not r["IsDeleted"]]  # hard deletes: live rows only
    assert await compare_with_truth(pg_url, "away", "Account", "Id", truth) == []


async def test_batch_lines_carry_the_replay_id_range_and_page_lines_a_duration(sim, pg_url):
    # An operator following a batch from the log to Pub/Sub (or a page to its Bulk job) needs where it began and
    # ended, and how long a page took.
    settings = settings_for(sim, pg_url, "lines", objects={"Account": {}})
    with capture_logs() as logs:
        await run_backfills(settings, ["Account"])
        a = next(iter(r["Id"] for r in await ground_truth(sim, "Account") if not r["IsDeleted"]))
        async with salesforce_client(settings) as client, open_store(settings) as store:
            stream = ObjectStream(client, None, store, settings, "Account", settings.objects["Account"])
            await stream.applier.load_schema()
            await stream.apply_batch([ev(0x10, upd(a, 4_000_000_000_000, Phone="1")),
                                      ev(0x2A, upd(a, 4_000_000_001_000, Phone="2"))])
    pages = [e for e in logs if e["event"] == "backfill.page"]
    assert pages and all(isinstance(e["duration_s"], float) and e["duration_s"] >= 0 for e in pages), pages
    (batch,) = [e for e in logs if e["event"] == "stream.batch"]
    assert (batch["first_replay_id"], batch["last_replay_id"]) == ("00" * 9 + "10", "00" * 9 + "2a"), batch
