"""One subscription for many objects (`stream.channel`): routing by entity, one checkpoint per channel committed
with every object's rows, SIGKILL at random moments during traffic, an object that needs a resync leaving the
channel without stopping the others, and the end state equal to the org's."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys

import pytest

from replicator.sim.server import SimulatorThread

from .helpers import compare_with_truth, finish, ground_truth, pg_value, sim_admin, start_logged, wait_for

pytestmark = pytest.mark.slow  # `replicator run` subprocesses

OBJECTS = {"Account": {}, "Contact": {}, "Invoice__c": {"key": "External_Id__c"}, "Gen001__c": {},
           "Gen002__c": {}, "Gen003__c": {}}
TRAFFIC = [*OBJECTS, "Opportunity", "Gen004__c"]  # the last two are on the channel but not configured
CHANNEL = "/data/ChangeEvents"


@pytest.fixture(scope="module")
def sim():
    with SimulatorThread(records=400, seed=17, keepalive_seconds=0.2, objects=4, object_records=150) as thread:
        yield thread.info


def _config(sim, pg_url: str, schema: str, tmp_path, objects: dict = OBJECTS) -> str:
    lines = ["[salesforce]", f'instance_url = "{sim["instance_url"]}"', f'client_id = "{sim["client_id"]}"',
             f'ca_file = "{sim["ca_file"]}"', f'pubsub_endpoint = "{sim["pubsub_endpoint"]}"',
             "[postgres]", f'url = "{pg_url}"', f'schema = "{schema}"',
             "[service]", "port = 0", 'host = "127.0.0.1"', "[backfill]", "poll_max_s = 0.2", "page_size = 200",
             "[stream]", f'channel = "{CHANNEL}"', "batch_max_wait_s = 0.05"]
    for name, opts in objects.items():
        lines.append(f"[objects.{name}]")
        lines += [f'{k} = "{v}"' for k, v in opts.items()]
    cfg = tmp_path / f"{schema}-{len(objects)}.toml"
    cfg.write_text("\n".join(lines) + "\n")
    return str(cfg)


def _start(cfg: str, sim) -> subprocess.Popen:
    # One replica id for every restart: a restart after SIGKILL takes its units over at once, as a process that
    # keeps its name does (docs/operating.md "One writer"), not after the killed process's lease expires.
    env = dict(os.environ, REPLICATOR_SALESFORCE__CLIENT_SECRET=sim["client_secret"],
               REPLICATOR_SERVICE__REPLICA_ID="run")
    return start_logged([sys.executable, "-m", "replicator.cli", "--log-json", "run", "--config", cfg], env)


async def _made(sim) -> int:
    return (await sim_admin(sim, "GET", "/__sim/stats")).json()["changes"]["total"]


async def _equal(sim, pg_url: str, schema: str, cfg: str) -> None:
    # LastActivityDate/LastViewedDate and formulas change without events: `replicator refresh` brings them current
    env = dict(os.environ, REPLICATOR_SALESFORCE__CLIENT_SECRET=sim["client_secret"])
    refresh = subprocess.run([sys.executable, "-m", "replicator.cli", "refresh", "--config", cfg], env=env,
                             capture_output=True, text=True, timeout=300)
    assert refresh.returncode == 0, refresh.stdout + refresh.stderr
    for name, opts in OBJECTS.items():
        truth = await ground_truth(sim, name)
        problems = await compare_with_truth(pg_url, schema, name, opts.get("key", "Id"), truth)
        assert problems == [], (name, problems[:10])


async def _streaming(pg_url: str, n: int = len(OBJECTS)) -> bool:
    return await pg_value(pg_url, f"SELECT count(*) = {n} FROM replicator.objects WHERE phase = 'STREAMING'")


async def test_one_channel_serves_every_object_through_sigkills(sim, pg_url, tmp_path):
    cfg = _config(sim, pg_url, "chan", tmp_path)
    proc = _start(cfg, sim)
    changes = 1500 + await _made(sim)
    try:
        await wait_for(lambda: _streaming(pg_url), timeout=120)
        await sim_admin(sim, "PUT", "/__sim/traffic", {
            "running": True, "rate": 250, "changes": changes, "transaction_size": 3, "records_per_event": 2,
            "collision_rate": 0.3, "objects": TRAFFIC})
        rng = random.Random(3)
        for point in sorted(rng.sample(range(changes - 1400, changes - 100), 3)):
            await wait_for(lambda p=point: _at_least(sim, p), timeout=120)
            proc.send_signal(signal.SIGKILL)
            proc.wait(timeout=30)
            proc = _start(cfg, sim)
        await wait_for(lambda: _at_least(sim, changes), timeout=120)
        # the generator counts its own changes against `changes` (not the org's total): pause it first
        await sim_admin(sim, "PUT", "/__sim/traffic", {"running": False})
        last = bytes.fromhex((await sim_admin(sim, "GET", "/__sim/stats")).json()["last_replay_id"])
        await wait_for(lambda: pg_value(pg_url, "SELECT replay_id >= '\\x" + last.hex() + "'::bytea FROM "
                                        f"replicator.checkpoints WHERE topic = '{CHANNEL}'"), timeout=120)
    finally:
        proc.send_signal(signal.SIGTERM)
        err = finish(proc, 60)
    assert proc.returncode == 0, err[-3000:]
    topics = await pg_value(pg_url, "SELECT array_agg(topic ORDER BY topic) FROM replicator.checkpoints")
    assert topics == [CHANNEL]  # one checkpoint, the channel's: no object had a subscription of its own
    assert '"channel.batch_refused"' not in err
    await _equal(sim, pg_url, "chan", cfg)


async def test_an_overflow_moves_one_object_off_the_channel_and_the_others_go_on(sim, pg_url, tmp_path):
    cfg = _config(sim, pg_url, "over", tmp_path)
    proc = _start(cfg, sim)
    try:
        await wait_for(lambda: _streaming(pg_url), timeout=120)
        await sim_admin(sim, "PUT", "/__sim/faults", {"overflow_threshold": 5})
        ids = [r["Id"] for r in (await ground_truth(sim, "Gen002__c"))[:8] if not r["IsDeleted"]]
        await sim_admin(sim, "POST", "/__sim/changes", [{"type": "UPDATE", "object": "Gen002__c", "ids": [i],
                                                         "fields": {"Note__c": "overflowed"}} for i in ids])
        await sim_admin(sim, "PUT", "/__sim/faults", {"overflow_threshold": 100_000})
        topic = "/data/Gen002__ChangeEvent"
        await wait_for(lambda: pg_value(pg_url, f"SELECT count(*) = 1 FROM replicator.checkpoints WHERE topic = '{topic}'"),
                       timeout=120)
        await wait_for(lambda: _streaming(pg_url), timeout=120)
        start = await _made(sim)
        await sim_admin(sim, "PUT", "/__sim/traffic", {"running": True, "rate": 200, "changes": start + 300,
                                                       "objects": TRAFFIC})
        await wait_for(lambda: _at_least(sim, start + 300), timeout=120)
        # the generator counts its own changes against `changes` (not the org's total): pause it first
        await sim_admin(sim, "PUT", "/__sim/traffic", {"running": False})
        last = bytes.fromhex((await sim_admin(sim, "GET", "/__sim/stats")).json()["last_replay_id"])
        for t in (CHANNEL, topic):
            await wait_for(lambda t=t: pg_value(pg_url, f"SELECT replay_id >= '\\x{last.hex()}'::bytea FROM "
                                                f"replicator.checkpoints WHERE topic = '{t}'"), timeout=120)
    finally:
        proc.send_signal(signal.SIGTERM)
        err = finish(proc, 60)
    assert proc.returncode == 0, err[-3000:]
    assert '"channel.object_detached"' in err
    await _equal(sim, pg_url, "over", cfg)


async def test_an_object_added_later_runs_on_its_own_subscription_while_the_channel_goes_on(sim, pg_url, tmp_path):
    first = {k: v for k, v in OBJECTS.items() if k != "Gen003__c"}
    proc = _start(_config(sim, pg_url, "added", tmp_path, first), sim)
    try:
        await wait_for(lambda: _streaming(pg_url, len(first)), timeout=120)
    finally:
        proc.send_signal(signal.SIGTERM)
        err = finish(proc, 60)
    assert proc.returncode == 0, err[-3000:]
    cfg = _config(sim, pg_url, "added", tmp_path)
    proc = _start(cfg, sim)
    topic = "/data/Gen003__ChangeEvent"
    try:
        await wait_for(lambda: _streaming(pg_url), timeout=120)
        start = await _made(sim)
        await sim_admin(sim, "PUT", "/__sim/traffic", {"running": True, "rate": 200, "changes": start + 200,
                                                       "objects": TRAFFIC})
        await wait_for(lambda: _at_least(sim, start + 200), timeout=120)
        # the generator counts its own changes against `changes` (not the org's total): pause it first
        await sim_admin(sim, "PUT", "/__sim/traffic", {"running": False})
        last = bytes.fromhex((await sim_admin(sim, "GET", "/__sim/stats")).json()["last_replay_id"])
        for t in (CHANNEL, topic):
            await wait_for(lambda t=t: pg_value(pg_url, f"SELECT replay_id >= '\\x{last.hex()}'::bytea FROM "
                                                f"replicator.checkpoints WHERE topic = '{t}'"), timeout=120)
    finally:
        proc.send_signal(signal.SIGTERM)
        err = finish(proc, 60)
    assert proc.returncode == 0, err[-3000:]
    topics = await pg_value(pg_url, "SELECT array_agg(topic ORDER BY topic) FROM replicator.checkpoints")
    assert topics == [CHANNEL, topic]
    await _equal(sim, pg_url, "added", cfg)


async def _at_least(sim, n):
    return await _made(sim) >= n
