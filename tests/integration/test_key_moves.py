"""The key step of a table keyed by an external id, on a real Postgres, for each kind of key column (text, number,
email): moves, swaps and chains by Id, collisions with stale rows, nulled keys; in the stream's sink and in the
backfill's staging upsert."""

from __future__ import annotations

import datetime as dt

import asyncpg
import pytest

from replicator.model import Change, Checkpoint, FieldSpec, ObjectDescribe, TableInfo, Version
from replicator.pipeline.changes import ColumnMap, fold
from replicator.pipeline.schema import table_spec, version_column
from replicator.postgres.store import Store

T0 = 1_700_000_000_000
IDS = [f"a0X00000000000{n}AAA" for n in range(1, 6)]
A, B, C, D, E = IDS
KEYS = {  # key field type → five distinct values of it
    "string": ["X", "Y", "Z", "W", "V"],
    "double": [1, 2, 3, 4, 5.5],
    "email": ["a@x.org", "b@x.org", "c@x.org", "d@x.org", "e@x.org"],
}


def describe(key_type: str) -> ObjectDescribe:
    return ObjectDescribe(name="Invoice__c", fields=(
        FieldSpec("Id", "id"), FieldSpec("Name", "string"),
        FieldSpec("Key__c", key_type, external_id=True, unique=True),
        FieldSpec("IsDeleted", "boolean"), FieldSpec("SystemModstamp", "datetime"),
    ))


@pytest.fixture(params=list(KEYS))
async def table(request, pg_url):
    """(store, TableInfo, ColumnMap, key values, a connection of the test's own) for a key of each type."""
    key_type = request.param
    async with Store.open(pg_url, pool_size=3) as store:
        spec = table_spec(describe(key_type), schema="keys", key_field="Key__c")
        info = TableInfo(spec, version_column(spec), True, hard_deletes=False)
        await store.page_sink(info).prepare()
        conn = await asyncpg.connect(pg_url)
        try:
            yield store, info, ColumnMap(spec, describe(key_type)), KEYS[key_type], conn
        finally:
            await conn.close()


def change(rid: str, kind: str, ts: int, replay: int, **fields) -> Change:
    return Change("Invoice__c", rid, kind, Version(ts), f"t{ts}", fields, replay_id=replay.to_bytes(10, "big"))


async def apply(store, info, cmap, changes, hard=False):
    if hard:
        info = TableInfo(info.spec, info.version_column, info.has_isdeleted, hard_deletes=True)
    sink = store.stream_sink(info)
    return await sink.apply(list(fold(changes, cmap).values()), [],
                            Checkpoint("/data/Invoice__ChangeEvent", changes[-1].replay_id, None))


async def rows(conn) -> dict:
    return {r["id"]: (r["key__c"], r["name"]) for r in await conn.fetch("SELECT id, key__c, name FROM keys.invoice__c")}


async def letters(conn) -> list[dict]:
    import orjson

    return [{**dict(r), "payload": orjson.loads(r["payload"])} for r in await conn.fetch(
        "SELECT record_key, source, reason, payload FROM replicator.dead_letters ORDER BY id")]


def norm(value):
    return float(value) if isinstance(value, int | float) or type(value).__name__ == "Decimal" else value


async def create(store, info, cmap, records: dict[str, object]):
    await apply(store, info, cmap, [change(rid, "CREATE", T0, n + 1, Name=f"n-{rid[-4]}", Key__c=key)
                                    for n, (rid, key) in enumerate(records.items())])


async def test_a_swap_and_a_chain_in_one_batch_move_rows_by_id_for_any_key_type(table):
    store, info, cmap, (x, y, z, w, v), conn = table
    await create(store, info, cmap, {A: x, B: y, C: z, D: w})
    r = await apply(store, info, cmap, [
        change(A, "UPDATE", T0 + 10, 10, Key__c=y), change(B, "UPDATE", T0 + 10, 11, Key__c=x),  # swap
        change(D, "UPDATE", T0 + 10, 12, Key__c=v), change(C, "UPDATE", T0 + 10, 13, Key__c=w),  # chain: C → D's
        change(E, "CREATE", T0 + 10, 14, Name="n-E", Key__c=z),  # a new record takes C's old key
    ])
    got = {rid: (norm(k), name) for rid, (k, name) in (await rows(conn)).items()}
    assert got == {A: (norm(y), "n-1"), B: (norm(x), "n-2"), C: (norm(w), "n-3"), D: (norm(v), "n-4"),
                   E: (norm(z), "n-E")}
    assert (r.updates, r.upserts, r.dead_letters) == (4, 1, 0) and await letters(conn) == []


async def test_a_newer_record_takes_a_key_from_a_stale_row_which_goes_with_a_dead_letter(table):
    store, info, cmap, (x, *_), conn = table
    await create(store, info, cmap, {A: x})
    # C took x in Salesforce, so A left it in a change this copy never received: A's row is stale.
    r = await apply(store, info, cmap, [change(C, "CREATE", T0 + 10, 5, Name="n-C", Key__c=x)])
    assert {k: (norm(v[0]), v[1]) for k, v in (await rows(conn)).items()} == {C: (norm(x), "n-C")}
    (letter,) = await letters(conn)
    assert letter["record_key"] == A and C in letter["reason"] and "retry" in letter["reason"]
    assert letter["payload"]["other_record"] == C and letter["payload"]["outcome"] == "displaced"
    assert letter["payload"]["last_values"]["name"] == "n-1"  # the removed row's values
    assert r.dead_letters == 1 and r.key_losers == {A: "displaced"}


async def test_an_older_claim_on_a_key_is_refused_and_never_replaces_the_row(table):
    store, info, cmap, (x, *_), conn = table
    await create(store, info, cmap, {A: x})
    r = await apply(store, info, cmap, [change(C, "CREATE", T0 - 10, 5, Name="n-C", Key__c=x)])
    assert {k: (norm(v[0]), v[1]) for k, v in (await rows(conn)).items()} == {A: (norm(x), "n-1")}
    (letter,) = await letters(conn)
    assert letter["record_key"] == C and A in letter["reason"] and letter["payload"]["outcome"] == "refused"
    assert letter["payload"]["values"]["name"] == "n-C"  # the refused change's values
    assert r.key_losers == {C: "refused"}


async def test_a_redelivered_change_older_than_a_move_is_skipped(table):
    store, info, cmap, (x, y, *_), conn = table
    await create(store, info, cmap, {A: x})
    await apply(store, info, cmap, [change(A, "UPDATE", T0 + 10, 10, Key__c=y)])
    r = await apply(store, info, cmap, [change(A, "CREATE", T0 + 5, 7, Name="old", Key__c=x)])
    assert {k: norm(v[0]) for k, v in (await rows(conn)).items()} == {A: norm(y)}
    assert r.skipped == 1 and r.dead_letters == 0 and await letters(conn) == []


async def test_a_nulled_key_removes_the_row_with_its_last_values(table):
    store, info, cmap, (x, y, *_), conn = table
    await create(store, info, cmap, {A: x, B: y})
    fields = {"Key__c": None}
    r = await apply(store, info, cmap, [change(A, "UPDATE", T0 + 10, 10, **fields),
                                        change(C, "CREATE", T0 + 10, 11, Name="no key")])
    assert set(await rows(conn)) == {B}
    by_id = {x["record_key"]: x for x in await letters(conn)}
    assert set(by_id) == {A, C} and r.dead_letters == 2
    assert "Key__c is empty" in by_id[A]["reason"] and by_id[A]["payload"]["last_values"]["name"] == "n-1"
    assert "not in the table" in by_id[C]["reason"] and by_id[C]["payload"]["values"]["name"] == "no key"


async def test_a_hard_deleted_record_frees_its_key_for_the_same_batch(table):
    store, info, cmap, (x, *_), conn = table
    await create(store, info, cmap, {A: x})
    await apply(store, info, cmap, [change(A, "DELETE", T0 + 10, 10),
                                    change(C, "CREATE", T0 + 10, 11, Name="n-C", Key__c=x)], hard=True)
    assert {k: norm(v[0]) for k, v in (await rows(conn)).items()} == {C: norm(x)}
    assert await letters(conn) == []


def _csv(spec, records: list[dict]) -> bytes:
    """A Bulk API 2.0 result page: every value quoted, an empty (NULL) key unquoted."""
    lines = [",".join(c.field for c in spec.columns)]
    for rec in records:
        cells = []
        for c in spec.columns:
            value = rec.get(c.field)
            cells.append("" if value is None else '"' + str(value) + '"')
        lines.append(",".join(cells))
    return ("\n".join(lines) + "\n").encode()


async def test_the_staging_upsert_settles_swaps_moves_stale_holders_and_empty_keys(table):
    store, info, cmap, (x, y, z, w, v), conn = table
    await create(store, info, cmap, {A: x, B: y, C: z, D: w})
    stamp = dt.datetime.fromtimestamp((T0 + 60_000) / 1000, dt.UTC).isoformat().replace("+00:00", "Z")
    page = [  # an extract taken later: A and B swapped, C lost its key, E took D's (D's row is stale), D is absent
        {"Id": A, "Name": "n-1", "Key__c": y, "IsDeleted": "false", "SystemModstamp": stamp},
        {"Id": B, "Name": "n-2", "Key__c": x, "IsDeleted": "false", "SystemModstamp": stamp},
        {"Id": C, "Name": "n-3", "Key__c": None, "IsDeleted": "false", "SystemModstamp": stamp},
        {"Id": E, "Name": "n-E", "Key__c": w, "IsDeleted": "false", "SystemModstamp": stamp},
    ]

    async def chunks():
        yield _csv(info.spec, page)

    await store.page_sink(info).load_page("job-1", "loc-1", "upsert", chunks())
    got = {rid: (norm(k), name) for rid, (k, name) in (await rows(conn)).items()}
    assert got == {A: (norm(y), "n-1"), B: (norm(x), "n-2"), E: (norm(w), "n-E")}
    by_id = {x["record_key"]: x for x in await letters(conn)}
    assert set(by_id) == {C, D} and {x["source"] for x in by_id.values()} == {"backfill"}
    assert by_id[C]["payload"]["outcome"] == "unkeyed" and by_id[C]["payload"]["last_values"]["name"] == "n-3"
    assert by_id[D]["payload"]["outcome"] == "displaced" and by_id[D]["payload"]["other_record"] == E
