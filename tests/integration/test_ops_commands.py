"""Operator commands: `resync` picked up by a running service, `dead-letters list | retry | drop`, `status`."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from replicator.app.commands import run_backfills

from .helpers import (
    compare_with_truth,
    config_toml,
    ground_truth,
    pg_value,
    running_service,
    settings_for,
    sim_put,
    wait_for,
)

pytestmark = pytest.mark.slow  # the service and `replicator` subprocesses


def _cli(*args: str, secret: str | None = None) -> subprocess.CompletedProcess:
    env = dict(os.environ)
    if secret:
        env["REPLICATOR_SALESFORCE__CLIENT_SECRET"] = secret
    return subprocess.run([sys.executable, "-m", "replicator.cli", "--log-json", *args], env=env,
                          capture_output=True, text=True, timeout=120)


async def test_resync_request_is_picked_up_by_the_running_service(sim, pg_url, tmp_path):
    settings = settings_for(sim, pg_url, "rs", objects={"Account": {}},
                            salesforce={"pubsub_endpoint": sim["pubsub_endpoint"]},
                            service={"control_poll_s": 0.1}, stream={"position_timeout_s": 10})
    cfg = tmp_path / "rs.toml"
    cfg.write_text(config_toml(sim, pg_url, "rs"))
    async with running_service(settings) as svc:
        lost = await pg_value(pg_url, "SELECT id FROM rs.account ORDER BY id LIMIT 1")
        await pg_value(pg_url, f"DELETE FROM rs.account WHERE id = '{lost}'")  # a row the stream cannot heal

        out = _cli("resync", "--config", str(cfg), "Account")
        assert out.returncode == 0 and "resync requested" in out.stdout, out.stdout + out.stderr
        status = json.loads(_cli("status", "--config", str(cfg), "--json").stdout)
        assert status[0]["resync_requested"] is True

        await wait_for(lambda: pg_value(pg_url, f"SELECT count(*) = 1 FROM rs.account WHERE id = '{lost}'"), timeout=120)
        await wait_for(lambda: pg_value(pg_url, "SELECT phase = 'STREAMING' AND resyncs = 1 AND NOT resync_requested"
                                                " FROM replicator.objects"), timeout=60)
        reason = await pg_value(pg_url, "SELECT last_resync_reason FROM replicator.objects")
        assert "requested by an operator" in reason
        assert svc.metrics.resyncs.labels(object="Account")._value.get() == 1
    problems = await compare_with_truth(pg_url, "rs", "Account", "Id", await ground_truth(sim, "Account"))
    assert problems == []


def test_resync_of_an_object_that_never_ran_says_so(sim, pg_url, tmp_path):
    cfg = tmp_path / "never.toml"
    cfg.write_text(config_toml(sim, pg_url, "never"))
    out = _cli("resync", "--config", str(cfg), "Contact")
    assert out.returncode == 1 and _fatal(out.stderr)["error"].startswith("Contact never ran here"), out.stderr
    bad = _cli("resync", "--config", str(cfg), "Nope__c")
    assert bad.returncode == 2 and "'Nope__c' is not configured" in bad.stderr


async def test_resync_of_an_object_whose_first_backfill_never_finished_exits_1(sim, pg_url, tmp_path):
    # Its row exists (the backfill registered it, then its job failed), but no extract ever finished: there is
    # nothing to extract "again"; `replicator backfill` or `run` does the first one.
    cfg = tmp_path / "failed.toml"
    cfg.write_text(config_toml(sim, pg_url, "failed", job_retries=0))
    await sim_put(sim, "/__sim/faults", {"fail_jobs": 1})
    out = _cli("backfill", "--config", str(cfg), "Contact", secret=sim["client_secret"])
    assert out.returncode == 1, out.stderr[-2000:]
    assert await pg_value(pg_url, "SELECT phase FROM replicator.objects WHERE object = 'Contact'") == "FAILED"
    out = _cli("resync", "--config", str(cfg), "Contact")
    assert out.returncode == 1, out.stdout + out.stderr
    assert "Contact has never been extracted" in _fatal(out.stderr)["error"], out.stderr
    assert await pg_value(pg_url, "SELECT resync_requested FROM replicator.objects WHERE object = 'Contact'") is False


def _fatal(stderr: str) -> dict:
    """The last line of a command run with --log-json that failed: one JSON line, `replicator.failed`."""
    last = json.loads([line for line in stderr.splitlines() if line.strip()][-1])
    assert last["event"] == "replicator.failed" and last["level"] == "error", last
    return last


async def test_dead_letters_list_retry_and_drop(sim, pg_url, tmp_path):
    settings = settings_for(sim, pg_url, "dl", backfill={"page_size": 500})
    cfg = tmp_path / "dl.toml"
    cfg.write_text(config_toml(sim, pg_url, "dl"))
    await sim_put(sim, "/__sim/faults", {"malformed_rows": 3})  # three rows of the next extract are broken
    progress = (await run_backfills(settings, ["Account"]))["Account"]
    assert progress.dead_letters == 3
    keys = [r for r in json.loads(_cli("dead-letters", "list", "--config", str(cfg), "--json").stdout)]
    assert len(keys) == 3 and all(k["object"] == "Account" and k["attempts"] == 1 for k in keys)
    refused, *_ = sorted(k["record_key"] for k in keys)
    # Postgres will refuse one of them again; one more letter has no key (an undecodable event)
    await pg_value(pg_url, f"ALTER TABLE dl.account ADD CONSTRAINT no_{refused.lower()} CHECK (id <> '{refused}')")
    await pg_value(pg_url, "INSERT INTO replicator.dead_letters (object, source, reason, payload)"
                           " VALUES ('Account', 'stream', 'undecodable event: test', '{}'::jsonb)")

    out = _cli("dead-letters", "retry", "--config", str(cfg), secret=sim["client_secret"])
    assert out.returncode == 1, out.stdout + out.stderr
    assert "applied 2, record gone from Salesforce 0, failed again 1" in out.stdout
    assert "replicator resync Account" in out.stdout
    left = json.loads(_cli("dead-letters", "list", "--config", str(cfg), "--json").stdout)
    again = [d for d in left if d["record_key"] == refused]
    assert len(left) == 2 and again[0]["attempts"] == 2 and again[0]["next_retry_at"] is not None
    # not due yet: a plain retry leaves it alone; --all retries it now (and it is still refused)
    assert "failed again 0" in _cli("dead-letters", "retry", "--config", str(cfg), secret=sim["client_secret"]).stdout
    assert "failed again 1" in _cli("dead-letters", "retry", "--config", str(cfg), "--all",
                                    secret=sim["client_secret"]).stdout

    await pg_value(pg_url, f"ALTER TABLE dl.account DROP CONSTRAINT no_{refused.lower()}")
    out = _cli("dead-letters", "retry", "--config", str(cfg), "--id", str(again[0]["id"]), secret=sim["client_secret"])
    assert out.returncode == 0 and "applied 1" in out.stdout, out.stdout + out.stderr
    problems = await compare_with_truth(pg_url, "dl", "Account", "Id", await ground_truth(sim, "Account"))
    assert problems == []

    assert _cli("dead-letters", "drop", "--config", str(cfg)).returncode == 2  # says what to drop
    out = _cli("dead-letters", "drop", "--config", str(cfg), "--object", "Account")
    assert out.returncode == 0 and "dropped 1" in out.stdout
    assert json.loads(_cli("dead-letters", "list", "--config", str(cfg), "--json").stdout) == []
    resolutions = await pg_value(pg_url, "SELECT string_agg(DISTINCT resolution, '|' ORDER BY resolution)"
                                         " FROM replicator.dead_letters")
    assert resolutions == "applied on retry|dropped by an operator"
    status = json.loads(_cli("status", "--config", str(cfg), "--json").stdout)
    assert status[0]["dead_letters"] == 0


@pytest.mark.parametrize("command", [["status"], ["status", "--json"], ["dead-letters", "list"], ["verify", "Account"]])
async def test_read_only_commands_never_create_the_state_schema(command, sim, pg_url, tmp_path):
    # A read-only command pointed at a database where nothing ran (a typo in postgres.url, no configuration at all)
    # must not leave a `replicator` schema there: it says so in one line and exits 1.
    cfg = tmp_path / "ro.toml"
    cfg.write_text(config_toml(sim, pg_url, "ro"))
    out = _cli(*command[:2], "--config", str(cfg), *command[2:], secret=sim["client_secret"])
    assert out.returncode == 1, out.stdout + out.stderr
    assert "has no replicator state" in _fatal(out.stderr)["error"], out.stderr
    assert await pg_value(pg_url, "SELECT count(*) FROM pg_namespace WHERE nspname IN ('replicator', 'ro')") == 0
