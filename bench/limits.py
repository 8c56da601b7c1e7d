"""Size limits: what lands, and how fast, at Salesforce's edges.

- Long text: updates that set a 131,072-character Long Text Area (Invoice__c.Body__c, the largest Salesforce allows).
- Events near the event size limit and just over it: the same ~131 KB change, once with the simulator's limit
  (`gap_event_bytes`, 1 MB in Salesforce) just above it (a normal change event) and once just below it (a GAP
  event: replicator fetches the record by id). The limit is scaled down so one Long Text field crosses it.
- Events at the real 1 MB limit: Body__c filled with four-byte characters plus Long Text Areas added at run time,
  ~920 KB (a change event) and ~1.05 MB (a GAP event).
- Hostile values: names and descriptions with embedded delimiters, quotes, backslashes, CR/LF and non-ASCII.

Every case checks that each touched row in Postgres equals the org's record, and reports events/s and MB/s.

Salesforce replaces a change event over "the maximum 1 MB message size" with a gap event, which names the record
but carries none of its fields (Gap Events, Change Data Capture Developer Guide:
https://developer.salesforce.com/docs/atlas.en-us.change_data_capture.meta/change_data_capture/cdc_other_events_gap.htm;
docs/pubsub-cdc.md, sections 7 and 9).
"""

from __future__ import annotations

import json
import time
from contextlib import aclosing

import asyncpg

from replicator.config import load_settings
from replicator.postgres.server import fresh_database
from replicator.sim.admin_client import sim_admin

from .stream import all_streaming, applied_at_least, org_records, published, start_service, until

HOSTILE = ['a,b;c|d', 'say "hi"', "line1\nline2\r\nline3", "back\\slash\\", "tab\there", "Zürich 東京 🚀",
           "'; DROP TABLE account; --", '"', "", "\\N"]


def _settings(sim: dict, url: str):
    return load_settings(overrides={
        "salesforce": {"instance_url": sim["instance_url"], "client_id": sim["client_id"],
                       "client_secret": sim["client_secret"], "ca_file": sim["ca_file"],
                       "pubsub_endpoint": sim["pubsub_endpoint"]},
        "postgres": {"url": url}, "objects": {"Account": {}, "Invoice__c": {"key": "External_Id__c"}},
        "backfill": {"poll_max_s": 0.5}, "stream": {"batch_max_wait_s": 0.05},
        "service": {"port": 0, "host": "127.0.0.1"}})


async def _truth(sim: dict, obj: str, ids: set[str]) -> dict[str, dict]:
    return {rec["Id"]: rec async for rec in org_records(sim, obj) if rec["Id"] in ids}


async def _ids(sim: dict, obj: str, n: int) -> list[str]:
    out = []
    async with aclosing(org_records(sim, obj)) as records:  # closes the download when we stop early
        async for rec in records:
            if not rec["IsDeleted"]:
                out.append(rec["Id"])
            if len(out) == n:
                break
    return out


async def _case(sim, url, obj: str, field: str | None, values: list, ids: list[str]) -> dict:
    """One UPDATE event per record (one transaction; requests over ~6 MB are split into several) setting `field`
    to each of `values`, or, with `field` None, each of `values` being a dict of fields; time from the org's commit request to applied; compare each
    touched field of each row with the org."""
    sets = [v if field is None else {field: v} for v in values]
    before = await published(sim)
    t0 = time.monotonic()  # one transaction of len(ids) events, one record each (several for the 1 MB cases)
    items = [{"object": obj, "type": "UPDATE", "ids": [i], "fields": f} for i, f in zip(ids, sets, strict=True)]
    for chunk in _chunks(items):
        await sim_admin(sim, "POST", "/__sim/changes", chunk, timeout=600)
    target = await published(sim)
    await until(lambda: applied_at_least(url, target), timeout=600, interval=0.02)
    seconds = time.monotonic() - t0
    truth = await _truth(sim, obj, set(ids))
    names = sorted({name for fields in sets for name in fields})
    cols = ", ".join(f'"{n.lower()}"' for n in names)
    conn = await asyncpg.connect(url)
    try:
        rows = {r["id"]: r for r in await conn.fetch(
            f'SELECT id, {cols} FROM salesforce."{obj.lower()}" WHERE id = ANY($1::text[])', ids)}
    finally:
        await conn.close()
    wrong = [i for i in ids if i not in rows or any((rows[i][n.lower()] or "") != (truth[i][n] or "") for n in names)]
    size = sum(len(v.encode()) for fields in sets for v in fields.values())
    return {"events": target - before, "events_per_s": (target - before) / seconds, "mb_per_s": size / seconds / 1e6,
            "event_kb": size / len(ids) / 1000, "landed_correctly": len(ids) - len(wrong), "of": len(ids)}


def _chunks(items: list[dict], limit: int = 6 << 20) -> list[list[dict]]:
    """Items in requests under the simulator's 8 MB request bound (each request is one transaction)."""
    out: list[list[dict]] = [[]]
    size = 0
    for item in items:
        n = len(json.dumps(item))  # as the admin client sends it (ASCII escapes: up to 12 bytes a character)
        if out[-1] and size + n > limit:
            out.append([])
            size = 0
        out[-1].append(item)
        size += n
    return out


async def _near_one_mb(case, ids: list[str]) -> list[dict]:
    """Events at Salesforce's real 1 MB limit: Body__c (131,072 four-byte characters, 524 KB) plus Long Text Areas
    added at run time (a schema change replicator follows; 32,768 characters, 131 KB each): three → ~920 KB,
    a change event; four → ~1.05 MB, a GAP event whose record replicator fetches by id."""
    body, extra = "🚀" * 131_072, "🛰" * 32_768
    n = len(ids) // 2

    def values(longs: int) -> list[dict]:
        return [{"Body__c": f"{i}" + body[1:], **{f"Long_{k}__c": extra for k in range(1, longs + 1)}}
                for i in range(n)]
    return [await case("~920 KB event: under the 1 MB limit", "Invoice__c", None, values(3), ids[:n]),
            await case("~1.05 MB event: over the 1 MB limit: GAP, fetched by id", "Invoice__c", None, values(4),
                       ids[n:2 * n])]


async def run(sim: dict, server_url: str, n: int, database: str = "replicator_bench_limits") -> list[dict]:
    url = await fresh_database(server_url, database)
    svc, task = await start_service(_settings(sim, url))

    async def case(label: str, obj: str, field: str | None, values: list, ids: list[str]) -> dict:
        refetched = sum(s.stats.refetched for s in svc.streams.values())
        row = {"x": label, **await _case(sim, url, obj, field, values, ids)}
        return {**row, "refetched": sum(s.stats.refetched for s in svc.streams.values()) - refetched}
    try:
        await until(lambda: all_streaming(svc, {"Account", "Invoice__c"}), timeout=600)
        long_text = ("0123456789abcdef" * 8192)[:131072]
        ids = await _ids(sim, "Invoice__c", 5 * n)
        for k in range(1, 5):  # for the 1 MB cases; a schema change the stream follows
            await sim_admin(sim, "POST", "/__sim/schema/Invoice__c/fields", {"name": f"Long_{k}__c", "type": "textarea"})
        await sim_admin(sim, "PUT", "/__sim/faults", {"gap_event_bytes": 1_000_000})
        rows = [await case("131,072-character text (event < 1 MB)", "Invoice__c", "Body__c",
                           [f"{i}:{long_text}"[:131072] for i in range(n)], ids[:n])]
        rows += await _near_one_mb(case, ids[3 * n:5 * n])
        await sim_admin(sim, "PUT", "/__sim/faults", {"gap_event_bytes": 140_000})
        rows.append(await case("event just under a lowered limit (140 KB)", "Invoice__c", "Body__c",
                               [f"u{i}:{long_text}"[:131072] for i in range(n)], ids[n:2 * n]))
        await sim_admin(sim, "PUT", "/__sim/faults", {"gap_event_bytes": 120_000})
        rows.append(await case("event just over a lowered limit (120 KB): GAP, fetched by id", "Invoice__c", "Body__c",
                               [f"o{i}:{long_text}"[:131072] for i in range(n)], ids[2 * n:3 * n]))
        await sim_admin(sim, "PUT", "/__sim/faults", {"gap_event_bytes": 1_000_000})
        accounts = await _ids(sim, "Account", 10 * len(HOSTILE))
        values = [f"{HOSTILE[i % len(HOSTILE)]} #{i}" for i in range(len(accounts))]
        rows.append(await case("delimiters, quotes, CR/LF, backslashes, non-ASCII", "Account", "Description", values,
                               accounts))
    finally:
        await sim_admin(sim, "PUT", "/__sim/faults", {"gap_event_bytes": 1_000_000})
        svc.stop.set()
        await task
    return rows
