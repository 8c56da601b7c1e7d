"""End to end: the simulator over HTTPS → replicator's backfill → a real Postgres, compared with ground truth."""

from __future__ import annotations

import asyncpg

from replicator.app.commands import run_backfills
from replicator.app.runtime import open_store, salesforce_client
from replicator.pipeline.verify import verify_object

from .helpers import OBJECTS, compare_with_truth, ground_truth, settings_for, sim_get


async def _backfill(settings, names=None):
    results = await run_backfills(settings, names or list(settings.objects))
    errors = {n: r for n, r in results.items() if isinstance(r, BaseException)}
    assert not errors, errors
    return results


async def test_backfill_all_objects_equals_ground_truth(sim, pg_url):
    settings = settings_for(sim, pg_url, "bf_all", backfill={"parallel_pages": 3, "page_size": 700})
    results = await _backfill(settings)
    counts = (await sim_get(sim, "/__sim/counts")).json()
    for name, opts in OBJECTS.items():
        truth = await ground_truth(sim, name)
        assert len(truth) == counts[name]["total"] > 0
        assert results[name].rows_done == len(truth)
        problems = await compare_with_truth(pg_url, "bf_all", name, opts.get("key", "Id"), truth)
        assert problems == [], problems[:10]
    conn = await asyncpg.connect(pg_url)
    try:
        deleted = await conn.fetchval(
            "SELECT count(*) FROM bf_all.account WHERE isdeleted AND _sf_deleted_at = systemmodstamp")
        assert deleted == counts["Account"]["deleted"] > 0
        assert await conn.fetchval("SELECT count(*) FROM bf_all.account WHERE NOT isdeleted AND _sf_deleted_at IS NOT NULL") == 0
        assert await conn.fetchval("SELECT count(*) FROM bf_all.account WHERE _sf_version = systemmodstamp") == counts["Account"]["total"]
        texts = await conn.fetch("SELECT name, description FROM bf_all.account")
        blob = "".join((r["name"] or "") + (r["description"] or "") for r in texts)
        for needle in ('"', ",", "\n"):
            assert needle in blob, f"no {needle!r} in the text fields: the test data lost its hard cases"
        assert any(ord(ch) > 127 for ch in blob), "no non-ASCII text in the data"
        pages = await conn.fetchval("SELECT count(*) FROM replicator.backfill_pages WHERE object = 'Account'")
        assert pages == -(-counts["Account"]["total"] // 700)
    finally:
        await conn.close()


async def test_second_backfill_upserts_without_duplicates_and_verify_is_equal(sim, pg_url):
    settings = settings_for(sim, pg_url, "bf_twice")
    await _backfill(settings, ["Account"])
    await _backfill(settings, ["Account"])
    conn = await asyncpg.connect(pg_url)
    try:
        mode = await conn.fetchval("SELECT load_mode FROM replicator.objects WHERE object = 'Account'")
        assert mode == "upsert"
    finally:
        await conn.close()
    truth = await ground_truth(sim, "Account")
    assert await compare_with_truth(pg_url, "bf_twice", "Account", "Id", truth) == []
    async with salesforce_client(settings) as client, open_store(settings) as store:
        assert (await verify_object(client, store, settings, "Account"))[0].equal
        conn = await asyncpg.connect(pg_url)
        victim = await conn.fetchval("SELECT id FROM bf_twice.account ORDER BY id LIMIT 1")
        await conn.execute("UPDATE bf_twice.account SET name = 'tampered' WHERE id = $1", victim)
        await conn.execute("DELETE FROM bf_twice.account WHERE id = (SELECT max(id) FROM bf_twice.account)")
        await conn.close()
        diff, _ = await verify_object(client, store, settings, "Account")
    assert (diff.different, diff.missing, diff.extra) == (1, 1, 0)
    assert diff.examples["different"] == [victim]
