"""History tables (docs/history.md) through `replicator run` SIGKILLed: every version survives in commit order,
and under live traffic of every kind the history stays whole (current versions equal to the rows, no overlap, no
hole). Apart from test_history.py, whose fixtures and helpers these share."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import asyncpg
import pytest

from replicator.app.commands import verify_command
from replicator.postgres.state import ms_to_datetime
from replicator.sim.server import SimulatorThread

from .helpers import (
    _norm,
    all_equal,
    finish,
    ground_truth,
    pg_value,
    settings_for,
    sim_admin,
    start_logged,
    wait_for,
)
from .test_history import _changes, _history_equal, _live_ids

pytestmark = pytest.mark.slow  # `replicator run` subprocesses


@pytest.fixture(scope="module")
def sim():
    with SimulatorThread(records=200, seed=41, keepalive_seconds=0.2) as thread:
        yield thread.info


def _run(cfg, sim) -> subprocess.Popen:
    # one replica id for every restart: a restart after SIGKILL takes its units over at once (docs/operating.md "One writer")
    env = dict(os.environ, REPLICATOR_SALESFORCE__CLIENT_SECRET=sim["client_secret"],
               REPLICATOR_SERVICE__REPLICA_ID="history")
    return start_logged([sys.executable, "-m", "replicator.cli", "--log-json", "run", "--config", str(cfg)], env)


async def _truth_of(sim, record_id) -> dict:
    return next(r for r in await ground_truth(sim, "Account") if r["Id"] == record_id)


async def _differences(pg_url, version: dict, truth: dict) -> list[str]:
    types = {r["column_name"]: r["t"] for r in await _column_types(pg_url)}
    return [f"{f}: org {v!r} != version {version[f.lower()]!r}" for f, v in truth.items()
            if f.lower() in types and _norm(v, types[f.lower()]) != _norm(version[f.lower()], types[f.lower()])]


async def _column_types(pg_url):
    conn = await asyncpg.connect(pg_url)
    try:
        return await conn.fetch(
            "SELECT column_name, CASE WHEN data_type = 'timestamp with time zone' THEN 'timestamptz'"
            " WHEN data_type LIKE 'time%' THEN 'time' ELSE data_type END AS t FROM information_schema.columns"
            " WHERE table_schema = 'done' AND table_name = 'account' AND column_name NOT LIKE '\\_%'")
    finally:
        await conn.close()


async def test_every_version_survives_sigkills_in_commit_order(sim, pg_url, tmp_path):
    """The issue's "Done when": a record updated 5 times (two in the same second, one in a transaction of two
    records), deleted and undeleted, with `replicator run` SIGKILLed in between, has exactly backfill + 5 +
    delete + undelete versions, in commit order, each with the values the org had; verify --history is equal."""
    cfg = tmp_path / "run.toml"
    cfg.write_text("\n".join([
        "[salesforce]", f'instance_url = "{sim["instance_url"]}"', f'client_id = "{sim["client_id"]}"',
        f'ca_file = "{sim["ca_file"]}"', f'pubsub_endpoint = "{sim["pubsub_endpoint"]}"',
        "[postgres]", f'url = "{pg_url}"', 'schema = "done"', "[service]", "port = 0", 'host = "127.0.0.1"',
        "[backfill]", "poll_max_s = 0.2", "[stream]", "batch_max_wait_s = 0.05",
        "[objects.Account]", "history = true"]) + "\n")
    acc, other = (await _live_ids(sim, "Account", 9))[7:9]
    versions_expected: list[tuple[str, dict]] = []
    proc = _run(cfg, sim)
    try:
        await wait_for(lambda: pg_value(pg_url, "SELECT phase = 'STREAMING' FROM replicator.objects"), timeout=60)
        versions_expected.append(("backfill", await _truth_of(sim, acc)))

        async def kill_and_restart():
            nonlocal proc
            proc.send_signal(signal.SIGKILL)
            proc.wait(timeout=30)
            proc = _run(cfg, sim)

        def applied(sql):
            return lambda: pg_value(pg_url, f"SELECT {sql} FROM done.account WHERE id = '{acc}'")

        h1 = await _changes(sim, [{"object": "Account", "type": "UPDATE", "ids": [acc], "fields": {"Phone": "h1"}}])
        versions_expected.append(("update", await _truth_of(sim, acc)))
        await wait_for(applied("phone = 'h1'"), timeout=30)
        await kill_and_restart()
        # two updates in the same second, each its own transaction; killed before they may be applied. Their
        # commit time is given (this second, never before the last commit), so both share it whatever the clock
        # does between them: only the replay id orders them.
        second = max(h1["commit_timestamp"], time.time_ns() // 1_000_000_000 * 1000)
        pair = await _changes(sim, [{"object": "Account", "type": "UPDATE", "ids": [acc], "fields": {"Phone": "h2"}},
                                    {"object": "Account", "type": "UPDATE", "ids": [acc], "fields": {"Phone": "h3"}}],
                              separate_transactions=True, commit_timestamp=second)
        assert [t["commit_timestamp"] for t in pair["transactions"]] == [second, second]
        after = await _truth_of(sim, acc)
        versions_expected += [("update", {**after, "Phone": "h2"}), ("update", after)]
        await kill_and_restart()
        await wait_for(applied("phone = 'h3'"), timeout=60)
        # a transaction of two records
        await _changes(sim, [{"object": "Account", "type": "UPDATE", "ids": [acc], "fields": {"Phone": "h4"}},
                             {"object": "Account", "type": "UPDATE", "ids": [other], "fields": {"Phone": "h4"}}])
        versions_expected.append(("update", await _truth_of(sim, acc)))
        await kill_and_restart()
        await _changes(sim, [{"object": "Account", "type": "UPDATE", "ids": [acc], "fields": {"Name": "h5"}}])
        versions_expected.append(("update", await _truth_of(sim, acc)))
        await wait_for(applied("name = 'h5'"), timeout=60)
        await _changes(sim, [{"object": "Account", "type": "DELETE", "ids": [acc]}])
        versions_expected.append(("delete", await _truth_of(sim, acc)))
        await kill_and_restart()
        await wait_for(applied("isdeleted"), timeout=60)
        await _changes(sim, [{"object": "Account", "type": "UNDELETE", "ids": [acc]}])
        versions_expected.append(("undelete", await _truth_of(sim, acc)))
        await wait_for(applied("NOT isdeleted"), timeout=60)
    finally:
        proc.send_signal(signal.SIGTERM)
        err = finish(proc, 60)
    assert proc.returncode == 0, err[-3000:]
    conn = await asyncpg.connect(pg_url)
    try:
        versions = [dict(r) for r in await conn.fetch(
            "SELECT * FROM done.account__history WHERE id = $1 ORDER BY _valid_from, _position", acc)]
    finally:
        await conn.close()
    assert [v["_op"] for v in versions] == [op for op, _ in versions_expected]
    for version, (op, truth) in zip(versions, versions_expected, strict=True):
        assert await _differences(pg_url, version, truth) == [], op
    assert [v["_is_current"] for v in versions] == [False] * 7 + [True]
    # the same-second pair: one commit time, ordered by replay id; each version ends where the next begins
    assert versions[2]["_valid_from"] == versions[3]["_valid_from"] == ms_to_datetime(second)
    assert versions[2]["_position"] < versions[3]["_position"]
    assert versions[2]["_valid_to"] == versions[3]["_valid_from"]
    for before, following in zip(versions, versions[1:], strict=False):
        assert before["_valid_to"] == following["_valid_from"]
    # the two-record transaction: the other record's version has the same commit time
    assert await pg_value(pg_url, f"SELECT count(*) FROM done.account__history WHERE id = '{other}' AND phone = 'h4' "
                                  f"AND _valid_from = '{versions[4]['_valid_from'].isoformat()}'") == 1
    settings = settings_for(sim, pg_url, "done", salesforce={"pubsub_endpoint": sim["pubsub_endpoint"]},
                            objects={"Account": {"history": True}})
    assert await verify_command(settings, ["Account"], history=True) == 0


async def test_history_under_live_traffic_and_sigkills_stays_whole(sim, pg_url, tmp_path):
    """Live traffic of every kind (transactions, multi-record events, records changed many times in one batch, text
    diffs, undeletes), `replicator run` SIGKILLed three times: the tables equal the org, and every history table's
    current versions equal its rows, with no overlap and no hole."""
    cfg = tmp_path / "run.toml"
    cfg.write_text("\n".join([
        "[salesforce]", f'instance_url = "{sim["instance_url"]}"', f'client_id = "{sim["client_id"]}"',
        f'ca_file = "{sim["ca_file"]}"', f'pubsub_endpoint = "{sim["pubsub_endpoint"]}"',
        "[postgres]", f'url = "{pg_url}"', 'schema = "hist"', "[service]", "port = 0", 'host = "127.0.0.1"',
        "[backfill]", "poll_max_s = 0.2", "[stream]", "batch_max_wait_s = 0.05", "[history]", "default = true",
        "[objects.Account]", "[objects.Contact]", '[objects.Invoice__c]', 'key = "External_Id__c"']) + "\n")
    made = (await sim_admin(sim, "GET", "/__sim/traffic")).json()["made"]
    published = (await sim_admin(sim, "GET", "/__sim/stats")).json()["events_published"]
    changes = 600
    proc = _run(cfg, sim)
    try:
        await wait_for(lambda: pg_value(pg_url, "SELECT count(*) = 3 FROM replicator.objects "
                                          "WHERE phase = 'STREAMING'"), timeout=60)
        await sim_admin(sim, "PUT", "/__sim/traffic", {
            "running": True, "rate": 150, "changes": made + changes, "transaction_size": 3, "records_per_event": 2,
            "collision_rate": 0.5, "objects": ["Account", "Contact", "Invoice__c"]})
        for point in (150, 300, 450):  # kill when the org has made that many changes: no sleeps
            await wait_for(lambda p=point: _made_at_least(sim, made + p), timeout=60)
            proc.send_signal(signal.SIGKILL)
            proc.wait(timeout=30)
            proc = _run(cfg, sim)
        await wait_for(lambda: _made_at_least(sim, made + changes), timeout=60)
        published = (await sim_admin(sim, "GET", "/__sim/stats")).json()["events_published"] - published
        await wait_for(lambda: pg_value(pg_url, f"SELECT sum(events_applied) >= {published} "
                                          "FROM replicator.checkpoints"), timeout=90)
    finally:
        proc.send_signal(signal.SIGTERM)
        err = finish(proc, 60)
    assert proc.returncode == 0, err[-3000:]
    settings = settings_for(sim, pg_url, "hist", salesforce={"pubsub_endpoint": sim["pubsub_endpoint"]},
                            objects={"Account": {}, "Contact": {}, "Invoice__c": {"key": "External_Id__c"}},
                            history={"default": True})
    assert await all_equal(settings, refresh=True)  # the refresh: silent changes of the traffic (docs/refresh.md)
    for name, found in (await _history_equal(sim, pg_url, settings.objects)).items():
        assert found == {"current": [], "intervals": []}, name
    assert await pg_value(pg_url, "SELECT count(*) FROM hist.account__history WHERE _op = 'update'") > 0


async def _made_at_least(sim, n):
    return (await sim_admin(sim, "GET", "/__sim/traffic")).json()["made"] >= n
