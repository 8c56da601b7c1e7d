"""Ceilings, measured in the same run as the figures they bound: what each stage can do alone.

- COPY: the same rows (the simulator's CSV, on local disk) into a table of the same shape: the ingest ceiling
  (`harness.copy_ceiling`, the one every ratio to COPY divides by).
- CSV parse: Python's csv module over the same bytes (what a client that parses rows would pay).
- Bulk serving: the simulator's result pages downloaded to a file, no parsing (source → null sink).
- Pub/Sub serving: raw Subscribe from the earliest event, events counted and kept, no decoding.
- Avro decode: `cdc.decode_event` over those same payloads (schemaless Avro + header + bitmaps).
- Stream apply (memory → Postgres): changes built in memory before the clock starts, folded and applied by
  `StreamSink.apply` in batches, each batch one transaction with its checkpoint; no Pub/Sub, no decoding. Narrow
  updates (one field plus LastModifiedDate, as Salesforce always sends it) of existing rows, and creates of new
  records with every field. This was the script `python -m bench.stream_apply`.
"""

from __future__ import annotations

import asyncio
import csv
import datetime as dt
import io
import random
import time
from decimal import Decimal
from pathlib import Path

import asyncpg

from replicator.app.runtime import salesforce_client
from replicator.config import load_settings
from replicator.model import Change, Checkpoint, TableInfo, Version
from replicator.pipeline.changes import ColumnMap, fold
from replicator.pipeline.schema import table_spec, version_column
from replicator.postgres.apply import StreamSink
from replicator.postgres.store import Store
from replicator.protocol import pubsub_api_pb2 as pb
from replicator.salesforce.bulk import BulkClient
from replicator.salesforce.cdc import CdcSchema, decode_event
from replicator.salesforce.pubsub import PubSubClient

from .harness import copy_ceiling


def sf_settings(sim: dict):
    return load_settings(overrides={"salesforce": {
        "instance_url": sim["instance_url"], "client_id": sim["client_id"], "client_secret": sim["client_secret"],
        "ca_file": sim["ca_file"], "pubsub_endpoint": sim["pubsub_endpoint"]}})


async def bulk_download(sim: dict, fields: list[str], path: Path, obj: str = "Account") -> dict:
    """Download every `obj` row as CSV into `path` (one header); time only the page downloads."""
    async with salesforce_client(sf_settings(sim)) as client:
        bulk = BulkClient(client, poll_max=0.5)
        job = await bulk.create_query_job(f"SELECT {', '.join(fields)} FROM {obj}", all_rows=True)
        job = await bulk.wait_for_job(job.id)
        first, size = True, 0
        t0 = time.perf_counter()
        with path.open("wb") as out:
            async for page in bulk.result_pages(job.id, max_records=250_000):
                async with bulk.open_page(page) as stream:
                    skip = not first
                    async for chunk in stream.chunks():
                        if skip:
                            nl = chunk.find(b"\n")
                            if nl < 0:
                                continue
                            chunk, skip = chunk[nl + 1:], False
                        out.write(chunk)
                        size += len(chunk)
                first = False
        seconds = time.perf_counter() - t0
    return {"seconds": seconds, "bytes": size, "rows": job.number_records_processed}


def csv_parse(path: Path) -> dict:
    data = path.read_bytes()
    t0 = time.perf_counter()
    rows = sum(1 for _ in csv.reader(io.StringIO(data.decode("utf-8"), newline=""))) - 1
    seconds = time.perf_counter() - t0
    return {"rows_per_s": rows / seconds, "mb_per_s": len(data) / seconds / 1e6}


async def pubsub_serving(sim: dict, topic: str, events: int) -> tuple[dict, list, dict]:
    """Raw Subscribe from EARLIEST until `events` events arrived: (rate, the events, their schemas)."""
    async with salesforce_client(sf_settings(sim)) as client:
        await client.tokens.token()
        pubsub = PubSubClient(sim["pubsub_endpoint"], client.tokens, ca_file=sim["ca_file"])
        try:
            token = await pubsub.token()
            call = pubsub.stub.Subscribe(metadata=pubsub.metadata(token))
            got: list = []
            t0 = time.perf_counter()
            await call.write(pb.FetchRequest(topic_name=topic, replay_preset=pb.ReplayPreset.EARLIEST,
                                             num_requested=100))
            while len(got) < events:
                response = await asyncio.wait_for(call.read(), 60)
                got.extend(response.events)
                if response.pending_num_requested == 0:
                    await call.write(pb.FetchRequest(topic_name=topic, num_requested=100))
            seconds = time.perf_counter() - t0
            call.cancel()
            schemas = {}
            for ev in got:
                if ev.event.schema_id not in schemas:
                    schemas[ev.event.schema_id] = await pubsub.get_schema(ev.event.schema_id)
        finally:
            await pubsub.close()
    return {"events_per_s": len(got) / seconds, "events": len(got)}, got, schemas


def avro_decode(topic: str, got: list, schemas: dict) -> dict:
    parsed = {sid: CdcSchema(sid, s) for sid, s in schemas.items()}
    t0 = time.perf_counter()
    bad = 0
    for ev in got:
        out = decode_event(topic, ev.replay_id, ev.event.schema_id, ev.event.payload, parsed[ev.event.schema_id])
        bad += out.error is not None
    seconds = time.perf_counter() - t0
    if bad:
        raise RuntimeError(f"{bad} events did not decode")
    return {"events_per_s": len(got) / seconds}


async def measure(sim: dict, url: str, fields: list[str], tmp: Path, events: int) -> dict:
    """Every ceiling once; the caller repeats and takes medians."""
    path = tmp / "account.csv"
    down = await bulk_download(sim, fields, path)
    out = {"bulk_serving_rows_per_s": down["rows"] / down["seconds"],
           "bulk_serving_mb_per_s": down["bytes"] / down["seconds"] / 1e6}
    parsed = csv_parse(path)
    out["csv_parse_rows_per_s"] = parsed["rows_per_s"]
    out["copy_rows_per_s"] = await copy_ceiling(url, path)
    serving, got, schemas = await pubsub_serving(sim, "/data/AccountChangeEvent", events)
    out["pubsub_serving_events_per_s"] = serving["events_per_s"]
    out["avro_decode_events_per_s"] = avro_decode("/data/AccountChangeEvent", got, schemas)["events_per_s"]
    return out


def _avro_like(value):
    """A column value as a change event carries it (epoch ms for datetimes, floats for numbers)."""
    if isinstance(value, dt.datetime):
        return int(value.timestamp() * 1000)
    if isinstance(value, dt.date):
        return int(dt.datetime(value.year, value.month, value.day, tzinfo=dt.UTC).timestamp() * 1000)
    if isinstance(value, dt.time):
        return ((value.hour * 60 + value.minute) * 60 + value.second) * 1000 + value.microsecond // 1000
    if isinstance(value, Decimal):
        return float(value)
    return value


class StreamApply:
    """The stream's apply stage alone on salesforce.account of `url` (already backfilled): `await rates(events)`
    gives events/s for narrow updates and for full creates, `batch` events a transaction."""

    def __init__(self, url: str, describe, batch: int):
        self.url, self.batch = url, batch
        self.spec = table_spec(describe, schema="salesforce")
        self.cmap = ColumnMap(self.spec, describe)
        self.field_of = {c.name: c.field for c in self.spec.columns}

    @classmethod
    async def make(cls, sim: dict, url: str, batch: int = 2_000) -> StreamApply:
        async with salesforce_client(sf_settings(sim)) as client:
            return cls(url, await client.describe("Account"), batch)

    async def rates(self, events: int) -> dict:
        pool = await asyncpg.create_pool(self.url, min_size=1, max_size=2)  # the bench's own reads
        try:
            async with Store.open(self.url, pool_size=4) as store:
                sink = store.stream_sink(TableInfo(self.spec, version_column(self.spec), True, False))
                return await self._rates(pool, sink, events)
        finally:
            await pool.close()

    async def _rates(self, pool, sink: StreamSink, events: int) -> dict:
        async with pool.acquire() as conn:
            ids = [r[0] for r in await conn.fetch("SELECT id FROM salesforce.account")]
            sample = [dict(r) for r in await conn.fetch("SELECT * FROM salesforce.account LIMIT 1000")]
        rng = random.Random(1)
        rng.shuffle(ids)  # narrow updates walk the ids in this order: no id twice in a batch, nothing folds
        now_ms = int(time.time() * 1000)

        def narrow(i: int) -> Change:
            return Change("Account", ids[i % len(ids)], "UPDATE", Version(now_ms + i, i), f"t{i}",
                          {"Phone": f"+1 555 {i:07d}", "LastModifiedDate": now_ms + i})

        def full(i: int) -> Change:
            row = sample[i % len(sample)]
            fields = {self.field_of[c]: _avro_like(v) for c, v in row.items()
                      if c in self.field_of and c not in ("id", "isdeleted", "systemmodstamp") and v is not None}
            return Change("Account", f"001BENCH{i:010d}", "CREATE", Version(now_ms + i, i), f"c{i}", fields)

        out = {"apply_narrow_events_per_s": await self._timed(sink, narrow, events, now_ms),
               "apply_full_events_per_s": await self._timed(sink, full, events, now_ms)}
        async with pool.acquire() as conn:
            await conn.execute("DELETE FROM salesforce.account WHERE id LIKE '001BENCH%'")
        return out

    async def _timed(self, sink: StreamSink, make, events: int, now_ms: int) -> float:
        """events/s of fold + apply; each batch's changes are made before its clock starts (one batch in memory at a
        time: this process's peak RSS is the stream scenario's memory figure)."""
        seconds = 0.0
        for start in range(0, events, self.batch):
            changes = [make(i) for i in range(start, min(start + self.batch, events))]
            t0 = time.perf_counter()
            ops = list(fold(changes, self.cmap).values())
            checkpoint = Checkpoint("/data/AccountChangeEvent", start.to_bytes(10, "big"), now_ms)
            await sink.apply(ops, [], checkpoint, events=len(changes))
            seconds += time.perf_counter() - t0
        return events / seconds
