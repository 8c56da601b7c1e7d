"""The burst driver: drain a pre-made burst of narrow UPDATE events, in a process of its own, with whichever
checkout's `replicator` the running Python imports.

The org (the simulator, its own process, idle: no traffic generator while replicator runs) makes `n` narrow
UPDATE events (Account, one changed field) while replicator is stopped; the service then starts from its
checkpoint in this process and applies them. Reported: events/s (events ÷ start → last applied), process CPU µs
an event, µs an event by stage where the checkout counts them (`StreamStats.stages`: decode, fold, reconcile,
commit; the rest of the wall time is receiving, batching and the event loop), peak RSS, and decode alone: the same
events subscribed again raw from the position before the burst and decoded by `cdc.decode_event` in a loop.

This file imports nothing from bench/ and only what both checkouts have, so one driver measures HEAD and an older
commit alike (`scenarios.burst` runs it as `<checkout>/.venv/bin/python -P bench/burst.py …`; `-P` keeps bench/
off sys.path, so `replicator` is the checkout's):

    python -P bench/burst.py setup '{"sim": {...}, "url": "postgresql://…"}'   # backfill, stream, stop
    python -P bench/burst.py drain '{"sim": {...}, "url": "…", "n": 60000, "batch": 2000}'   # one JSON line
"""

from __future__ import annotations

import asyncio
import json
import resource
import sys
import time

import asyncpg

from replicator.app.runtime import salesforce_client
from replicator.app.service import Service
from replicator.config import load_settings
from replicator.protocol import pubsub_api_pb2 as pb
from replicator.salesforce.cdc import CdcSchema, decode_event
from replicator.salesforce.pubsub import PubSubClient
from replicator.sim.admin_client import sim_admin

TOPIC = "/data/AccountChangeEvent"


def settings(sim: dict, url: str, batch: int = 2_000):
    return load_settings(overrides={
        "salesforce": {"instance_url": sim["instance_url"], "client_id": sim["client_id"],
                       "client_secret": sim["client_secret"], "ca_file": sim["ca_file"],
                       "pubsub_endpoint": sim["pubsub_endpoint"]},
        "postgres": {"url": url}, "objects": {"Account": {}},
        "backfill": {"poll_max_s": 0.5}, "stream": {"batch_max_events": batch, "batch_max_wait_s": 0.05},
        "service": {"port": 0, "host": "127.0.0.1"}})


async def until(pred, timeout: float, interval: float = 0.01) -> None:
    end = time.monotonic() + timeout
    while not await pred():
        if time.monotonic() > end:
            raise TimeoutError("burst: condition not met in time")
        await asyncio.sleep(interval)


async def setup(sim: dict, url: str) -> dict:
    """Backfill Account into `url` and stream until the first batch: the checkpoint exists afterwards."""
    svc = Service(settings(sim, url))
    task = asyncio.create_task(svc.run())
    await until(lambda: _streaming(svc, task), timeout=600, interval=0.05)
    svc.stop.set()
    await task
    return {"ok": 1}


async def _streaming(svc: Service, task: asyncio.Task) -> bool:
    if task.done():
        task.result()  # the service failed: raise its error
    return "Account" in svc.streams and svc.streams["Account"].stats.batches > 0


async def make_burst(sim: dict, n: int) -> int:
    """The org makes n narrow updates (one changed field each) as fast as it can, then stops; returns the count of
    events published once they all are."""
    made = (await sim_admin(sim, "GET", "/__sim/traffic")).json()["made"]
    await sim_admin(sim, "PUT", "/__sim/traffic", {
        "running": True, "rate": 50_000, "mix": {"UPDATE": 1.0}, "objects": ["Account"], "changes": made + n,
        "fields_per_update": 1, "transaction_size": 1, "records_per_event": 1, "collision_rate": 0.0})

    async def done() -> bool:
        return (await sim_admin(sim, "GET", "/__sim/traffic")).json()["made"] >= made + n
    await until(done, timeout=n / 300 + 120, interval=0.1)
    return (await sim_admin(sim, "GET", "/__sim/stats")).json()["events_published"]


async def drain(sim: dict, url: str, n: int, batch: int) -> dict:
    conn = await asyncpg.connect(url)
    try:
        before = await conn.fetchrow("SELECT replay_id, events_applied FROM replicator.checkpoints WHERE topic = $1",
                                     TOPIC)
        target = await make_burst(sim, n)
        svc = Service(settings(sim, url, batch))
        ru0, cpu0, t0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, time.process_time(), time.perf_counter()
        task = asyncio.create_task(svc.run())

        async def applied() -> bool:
            if task.done():
                task.result()
            return (await conn.fetchval("SELECT sum(events_applied) FROM replicator.checkpoints") or 0) >= target
        await until(applied, timeout=900)
        seconds, cpu = time.perf_counter() - t0, time.process_time() - cpu0
        svc.stop.set()
        await task
        events = await conn.fetchval("SELECT events_applied FROM replicator.checkpoints WHERE topic = $1",
                                     TOPIC) - before["events_applied"]
    finally:
        await conn.close()
    stats = svc.streams["Account"].stats
    out = {"events": events, "events_per_s": events / seconds, "seconds": seconds,
           "cpu_us_per_event": cpu / events * 1e6, "events_per_batch": events / max(stats.batches, 1), "peak_rss_mb": round(resource.getrusage(
               resource.RUSAGE_SELF).ru_maxrss / 1024, 1), "rss_before_mb": round(ru0 / 1024, 1)}
    stages = getattr(stats, "stages", None)  # an older checkout does not count stages
    if stages:
        out.update({f"{k}_us_per_event": v / events * 1e6 for k, v in stages.items()})
        # decode runs while a batch awaits Postgres, so the stages may overlap: the rest is at least 0
        out["rest_us_per_event"] = max(0.0, seconds - sum(stages.values())) / events * 1e6
    out["serving_events_per_s"], out["decode_alone_events_per_s"] = await decode_alone(sim, before["replay_id"],
                                                                                       events)
    out["ratio_to_decode_alone"] = out["events_per_s"] / out["decode_alone_events_per_s"]
    return out


async def decode_alone(sim: dict, position: bytes, events: int) -> tuple[float, float]:
    """The same events subscribed again raw (from `position`, before the burst) and decoded in a loop:
    (events/s the simulator served them at to a bare Subscribe, events/s of `cdc.decode_event` alone)."""
    cfg = settings(sim, "postgresql://unused")
    async with salesforce_client(cfg) as client:
        await client.tokens.token()
        pubsub = PubSubClient(sim["pubsub_endpoint"], client.tokens, ca_file=sim["ca_file"])
        try:
            call = pubsub.stub.Subscribe(metadata=pubsub.metadata(await pubsub.token()))
            got: list = []
            t0 = time.perf_counter()
            await call.write(pb.FetchRequest(topic_name=TOPIC, replay_preset=pb.ReplayPreset.CUSTOM,
                                             replay_id=position, num_requested=100))
            while len(got) < events:
                response = await asyncio.wait_for(call.read(), 60)
                got.extend(response.events)
                if response.pending_num_requested == 0:
                    await call.write(pb.FetchRequest(topic_name=TOPIC, num_requested=100))
            serving = len(got) / (time.perf_counter() - t0)
            call.cancel()
            schemas = {sid: CdcSchema(sid, await pubsub.get_schema(sid)) for sid in {e.event.schema_id for e in got}}
        finally:
            await pubsub.close()
    got = got[:events]
    t0 = time.perf_counter()
    bad = 0
    for ev in got:
        bad += decode_event(TOPIC, ev.replay_id, ev.event.schema_id, ev.event.payload,
                            schemas[ev.event.schema_id]).error is not None
    seconds = time.perf_counter() - t0
    if bad:
        raise RuntimeError(f"{bad} events of the burst did not decode")
    return serving, len(got) / seconds


def main(argv: list[str]) -> int:
    from replicator.observe.logs import setup_logging

    setup_logging("warning")
    what, args = argv[0], json.loads(argv[1])
    if what == "setup":
        out = asyncio.run(setup(args["sim"], args["url"]))
    else:
        out = asyncio.run(drain(args["sim"], args["url"], args["n"], args.get("batch", 2_000)))
    print(json.dumps(out), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
