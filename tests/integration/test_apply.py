"""Applying folded changes to a real Postgres: partial updates, the version guard, deletes, checkpoints."""

from __future__ import annotations

import asyncpg
import pytest

from replicator.model import (
    Change,
    Checkpoint,
    DeadLetter,
    FieldSpec,
    ObjectDescribe,
    RejectedDataError,
    RowOp,
    TableInfo,
    Version,
)
from replicator.pipeline.changes import ColumnMap, fold
from replicator.pipeline.schema import table_spec, version_column
from replicator.postgres.state import load_checkpoint
from replicator.postgres.state import ms_to_datetime as _ts
from replicator.postgres.store import Store

DESCRIBE = ObjectDescribe(name="Account", fields=(
    FieldSpec("Id", "id"), FieldSpec("Name", "string"), FieldSpec("Phone", "phone"), FieldSpec("Fax", "phone"),
    FieldSpec("BillingAddress", "address"),
    FieldSpec("BillingCity", "string", compound_field_name="BillingAddress"),
    FieldSpec("BillingState", "string", compound_field_name="BillingAddress"),
    FieldSpec("IsDeleted", "boolean"), FieldSpec("LastModifiedDate", "datetime"),
    FieldSpec("SystemModstamp", "datetime"),
))
T0 = 1_700_000_000_000


def ch(kind, ts, fields=None, nulled=(), rid="001000000000001AAA"):
    return Change("Account", rid, kind, Version(ts), "txn", fields or {}, frozenset(nulled))


@pytest.fixture
async def sink(pg_url):
    # the test's own view of the tables, and of the default org's state (postgres/store.py: its search path)
    pool = await asyncpg.create_pool(pg_url, min_size=1, max_size=2, server_settings={"search_path": "replicator"})
    async with Store.open(pg_url, pool_size=4) as store:
        spec = table_spec(DESCRIBE, schema="apply")
        info = TableInfo(spec, version_column(spec), True, hard_deletes=False)
        await store.page_sink(info).prepare()
        yield store.stream_sink(info), ColumnMap(spec, DESCRIBE), pool
    await pool.close()


async def _apply(sink, cmap, changes, replay=b"\x01"):
    s, m, _ = sink, cmap, None
    return await s.apply(list(fold(changes, m).values()), [], Checkpoint("/data/AccountChangeEvent", replay, None))


async def _row(pool):
    async with pool.acquire() as conn:
        return dict(await conn.fetchrow("SELECT * FROM apply.account"))


async def test_partial_update_touches_only_changed_columns(sink):
    s, cmap, pool = sink
    full = {"Name": "Acme", "Phone": "1", "Fax": "2", "BillingAddress": {"City": "Paris", "State": "IDF"}}
    await _apply(s, cmap, [ch("CREATE", T0, full)])
    before = await _row(pool)
    assert (before["name"], before["fax"], before["billingcity"], before["isdeleted"]) == ("Acme", "2", "Paris", False)

    r = await _apply(s, cmap, [ch("UPDATE", T0 + 10, {"Phone": "9"})])
    row = await _row(pool)
    assert r.updates == 1 and row["phone"] == "9"
    assert {k: row[k] for k in ("name", "fax", "billingcity", "billingstate")} == \
        {"name": "Acme", "fax": "2", "billingcity": "Paris", "billingstate": "IDF"}

    await _apply(s, cmap, [ch("UPDATE", T0 + 20, {}, nulled=["Fax"])])
    assert (await _row(pool))["fax"] is None

    await _apply(s, cmap, [ch("UPDATE", T0 + 30, {"BillingAddress.State": "CA"})])
    row = await _row(pool)
    assert (row["billingstate"], row["billingcity"], row["phone"]) == ("CA", "Paris", "9")
    assert row["_sf_version"] == row["systemmodstamp"]


async def test_version_guard_skips_older_changes_and_replays_are_idempotent(sink):
    s, cmap, pool = sink
    await _apply(s, cmap, [ch("CREATE", T0, {"Name": "new"})])
    await _apply(s, cmap, [ch("UPDATE", T0 + 100, {"Name": "newer"})])
    r = await _apply(s, cmap, [ch("UPDATE", T0 + 50, {"Name": "older"})])
    assert r.skipped == 1 and (await _row(pool))["name"] == "newer"
    before = await _row(pool)
    r = await _apply(s, cmap, [ch("UPDATE", T0 + 100, {"Name": "newer"})])  # the same change again
    after = await _row(pool)
    assert {k: v for k, v in after.items() if k != "_sf_synced_at"} == \
        {k: v for k, v in before.items() if k != "_sf_synced_at"}


async def test_soft_delete_then_undelete(sink):
    s, cmap, pool = sink
    await _apply(s, cmap, [ch("CREATE", T0, {"Name": "x", "Phone": "1"})])
    await _apply(s, cmap, [ch("DELETE", T0 + 5)])
    row = await _row(pool)
    assert row["isdeleted"] and row["_sf_deleted_at"] is not None and row["name"] == "x"
    # An undelete lands as the record fetched from the org (the stream fetches it: fields events never carry).
    undeleted = RowOp("001000000000001AAA", "upsert", {"name": "x", "phone": "1", "isdeleted": False},
                      commit_ms=T0 + 9, fetched=True)
    await s.apply([undeleted], [], None)
    row = await _row(pool)
    assert not row["isdeleted"] and row["_sf_deleted_at"] is None


async def test_checkpoint_and_dead_letters_commit_with_the_rows(sink):
    s, cmap, pool = sink
    ops = list(fold([ch("CREATE", T0, {"Name": "a"})], cmap).values())
    dead = [DeadLetter("Account", "undecodable event: test", source="stream", payload={"p": 1})]
    await s.apply(ops, dead, Checkpoint("/data/AccountChangeEvent", b"\x00\x01\x02", T0))
    async with pool.acquire() as conn:
        assert await load_checkpoint(conn, "/data/AccountChangeEvent") == b"\x00\x01\x02"
        assert await conn.fetchval("SELECT count(*) FROM replicator.dead_letters") == 1
    # A failing batch commits nothing: neither rows nor checkpoint.
    bad = list(fold([ch("CREATE", T0 + 1, {"Name": "b"}, rid="001000000000002AAA")], cmap).values())
    bad[0].values["phone"] = 12345678  # not text: asyncpg refuses the array, the transaction rolls back
    with pytest.raises(RejectedDataError):
        await s.apply(bad, [], Checkpoint("/data/AccountChangeEvent", b"\x09", T0 + 1))
    async with pool.acquire() as conn:
        assert await load_checkpoint(conn, "/data/AccountChangeEvent") == b"\x00\x01\x02"
        assert await conn.fetchval("SELECT count(*) FROM apply.account") == 1


def at(kind, ts, replay: int, fields=None, commit_number=0, rid="001000000000001AAA"):
    """A change as the stream delivers it: its event's replay id is its place in the topic's order."""
    return Change("Account", rid, kind, Version(ts, commit_number), f"t{replay}", fields or {},
                  replay_id=replay.to_bytes(10, "big"))


async def test_a_replayed_older_event_of_the_same_second_changes_nothing(sink):
    # Salesforce stamps whole seconds: two changes of one record in one second are common. Replay order
    # decides between them; a redelivered older event must not move the row back.
    s, cmap, pool = sink
    await _apply(s, cmap, [at("CREATE", T0 - 1000, 1, {"Name": "a", "Phone": "1"})])
    await _apply(s, cmap, [at("UPDATE", T0, 2, {"Phone": "2"})])
    await _apply(s, cmap, [at("UPDATE", T0, 3, {"Phone": "3"})])  # the same second, later: applied
    assert (await _row(pool))["phone"] == "3"
    r = await _apply(s, cmap, [at("UPDATE", T0, 2, {"Phone": "2"})])  # delivered again
    assert r.skipped == 1 and (await _row(pool))["phone"] == "3"


async def test_a_batch_applies_changes_in_replay_order_not_by_commit_number(sink):
    # commitNumber is diagnostic only (docs/pubsub-cdc.md §5): delivery (replay) order decides.
    s, cmap, pool = sink
    await _apply(s, cmap, [at("CREATE", T0 - 1000, 1, {"Name": "a"})])
    await _apply(s, cmap, [at("UPDATE", T0, 2, {"Name": "first"}, commit_number=9),
                           at("UPDATE", T0, 3, {"Name": "second"}, commit_number=1)])
    assert (await _row(pool))["name"] == "second"


async def _stage_and_repair(store, spec, version_col, phone: str, stamp) -> int:
    header = ",".join(c.field for c in spec.columns)
    values = {"Id": "001000000000001AAA", "Name": "a", "Phone": phone, "IsDeleted": "false",
              "SystemModstamp": stamp.isoformat().replace("+00:00", "Z"), "LastModifiedDate": ""}
    line = ",".join(values.get(c.field, "") for c in spec.columns)

    async def chunks():
        yield f"{header}\n{line}\n".encode()

    async with store.comparison(spec, hard_deletes=False) as cmp:
        await cmp.load(chunks())
        fixed = await cmp.repair(version_col, await store.now())
    return fixed.kept_newer


async def test_a_repair_extract_of_the_same_second_does_not_undo_the_stream(pg_url):
    # `verify --repair` runs beside a streaming service: an extract row stamped in the second of a change the
    # stream applied after the extract read it must not replace the stream's newer values.
    import datetime as dt

    async with Store.open(pg_url, pool_size=2) as store:
        spec = table_spec(DESCRIBE, schema="repairtie")
        info = TableInfo(spec, version_column(spec), True, hard_deletes=False)
        await store.page_sink(info).prepare()
        cmap = ColumnMap(spec, DESCRIBE)
        stream = store.stream_sink(info)
        await _apply(stream, cmap, [at("CREATE", T0 - 1000, 1, {"Name": "a", "Phone": "old"})])
        await _apply(stream, cmap, [at("UPDATE", T0, 2, {"Phone": "new"})])
        stamp = dt.datetime.fromtimestamp(T0 / 1000, dt.UTC)
        assert await _stage_and_repair(store, spec, info.version_column, "old", stamp) == 1
        conn = await asyncpg.connect(pg_url)
        try:
            assert await conn.fetchval("SELECT phone FROM repairtie.account") == "new"
        finally:
            await conn.close()


async def test_systemmodstamp_is_the_saved_time_a_change_carries_not_its_commit_time(sink):
    # Change events carry no SystemModstamp. A long transaction saves at T0 and commits 3 s later: its events carry
    # LastModifiedDate T0 (the org stamps both fields in one save) and commitTimestamp T0 + 3 s, the row's version.
    s, cmap, pool = sink
    saved = 1_700_000_000_000
    await _apply(s, cmap, [at("CREATE", saved - 60_000, 1, {"Name": "a", "LastModifiedDate": saved - 60_000})])
    await _apply(s, cmap, [at("UPDATE", saved + 3_000, 2, {"Phone": "late", "LastModifiedDate": saved})])
    row = await _row(pool)
    assert row["systemmodstamp"] == row["lastmodifieddate"] == _ts(saved)
    assert row["_sf_version"] == _ts(saved + 3_000)
    # A delete carries no field: its commit time is the nearest the event tells (an update and a delete folded in
    # one batch too: the delete is the record's last save, and it leaves LastModifiedDate alone)
    await _apply(s, cmap, [at("UPDATE", saved + 10_000, 3, {"Phone": "x", "LastModifiedDate": saved + 10_000}),
                           at("DELETE", saved + 12_000, 4)])
    row = await _row(pool)
    assert row["isdeleted"] and row["phone"] == "x" and row["lastmodifieddate"] == _ts(saved + 10_000)
    assert row["systemmodstamp"] == row["_sf_version"] == _ts(saved + 12_000)


async def test_changes_then_a_delete_in_one_batch_land_together(sink):
    s, cmap, pool = sink
    await _apply(s, cmap, [at("CREATE", T0 - 1000, 1, {"Name": "a", "Phone": "1"})])
    r = await _apply(s, cmap, [at("UPDATE", T0, 2, {"Phone": "2"}), at("DELETE", T0, 3)])
    row = await _row(pool)
    assert r.deletes == 1 and row["isdeleted"] and row["phone"] == "2"


async def test_a_batch_whose_update_finds_no_row_commits_nothing_when_rows_were_not_looked_up(sink):
    """must_find (the applier did not look the rows up first): an update that writes no row rolls back the whole
    batch, its checkpoint included, so the applier can fetch the record and apply again; nothing is lost."""
    from replicator.postgres.apply import UpdatesMissed

    s, cmap, pool = sink
    ops = list(fold([ch("CREATE", T0, {"Name": "New"}, rid="001000000000002AAA"),
                     ch("UPDATE", T0 + 1, {"Phone": "9"}, rid="001000000000003AAA")], cmap).values())
    checkpoint = Checkpoint("/data/AccountChangeEvent", b"\x07", None)
    with pytest.raises(UpdatesMissed, match="1 of 1 updates"):
        await s.apply(ops, [], checkpoint, 2, must_find=True)
    async with pool.acquire() as conn:
        assert await conn.fetchval("SELECT count(*) FROM apply.account") == 0
        assert await load_checkpoint(conn, "/data/AccountChangeEvent") is None
    # looked up (the caller turns the update into a fetch; here: applied as it is): the rest lands
    r = await s.apply(ops, [], checkpoint, 2)
    assert (r.upserts, r.updates, r.skipped) == (1, 0, 1)
    # an update whose row exists but is newer is skipped by the guard, and also reported (the caller looks up)
    with pytest.raises(UpdatesMissed):
        await s.apply(list(fold([ch("UPDATE", T0 - 5, {"Phone": "1"}, rid="001000000000002AAA")], cmap).values()),
                      [], checkpoint, 1, must_find=True)


async def test_many_tables_land_in_one_transaction_across_statements_split_at_the_parameter_limit(pg_url, monkeypatch):
    """A channel batch: the writes of many tables as few merged statements as the parameter limit allows."""
    from replicator.postgres import apply as apply_mod

    monkeypatch.setattr(apply_mod, "MAX_PARAMS", 12)  # an upsert of this table takes 11 parameters, an update 5
    async with Store.open(pg_url, pool_size=2) as store:
        parts = []
        for k in range(5):
            spec = table_spec(DESCRIBE, schema=f"many{k}")
            info = TableInfo(spec, version_column(spec), True, hard_deletes=False)
            await store.page_sink(info).prepare()
            parts.append(store.stream_sink(info))
        cmap = ColumnMap(table_spec(DESCRIBE, schema="many0"), DESCRIBE)
        creates = [(sink, list(fold([ch("CREATE", T0, {"Name": f"N{k}"}, rid=f"00100000000000{k}AAA")], cmap).values()))
                   for k, sink in enumerate(parts)]
        alone, statements = apply_mod.merged_writes(creates)
        assert alone == [] and len(statements) == 5  # one upsert each: each its own statement at this limit
        results = await store.apply_objects(creates, [], Checkpoint("/data/ChangeEvents", b"\x01", None), 5)
        assert [r.upserts for r in results] == [1] * 5
        updates = [(sink, list(fold([ch("UPDATE", T0 + 1, {"Phone": str(k)}, rid=f"00100000000000{k}AAA")],
                                    cmap).values())) for k, sink in enumerate(parts)]
        assert [len(s[1]) for s in apply_mod.merged_writes(updates)[1]] == [2, 2, 1]  # 10 parameters a statement
        results = await store.apply_objects(updates, [], Checkpoint("/data/ChangeEvents", b"\x02", None), 5,
                                            must_find=True)
        assert [r.updates for r in results] == [1] * 5
    conn = await asyncpg.connect(pg_url)
    try:
        for k in range(5):
            assert tuple(await conn.fetchrow(f"SELECT name, phone FROM many{k}.account")) == (f"N{k}", str(k))
        assert await conn.fetchval("SELECT replay_id FROM replicator.checkpoints WHERE topic = '/data/ChangeEvents'") \
            == b"\x02"
    finally:
        await conn.close()
