"""Errors no retry can fix stop instead of looping (issue 21, defect 3).

A misspelled object (describe: 404 NOT_FOUND), credentials the token endpoint refuses (`invalid_client`) and a
Postgres role without the privileges the first start needs are configuration: retrying cannot fix them. `replicator
run` stops the object concerned (phase FAILED, its error in `replicator status`, `/readyz` 503 naming it, the metric
`replicator_object_phase{phase="FAILED"}`) and keeps serving the others; when nothing is left that can run (every
object stopped, or the credentials or the database refused), it ends with exit code 2 and one line. `backfill` exits
2 on the same mistakes (docs/commands.md: bad configuration exits 2). Every command runs as a user runs it: a
subprocess of the command line.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from replicator.sim.server import SimulatorThread

from .helpers import (
    endpoint_get,
    free_port,
    ground_truth,
    one_line_error,
    pg_value,
    running_service,
    settings_for,
    sim_admin,
    wait_for,
)

pytestmark = pytest.mark.slow  # `replicator` subprocesses and the service

SECRET_VARIABLE = "REPLICATOR_SALESFORCE__CLIENT_SECRET"
WRONG_SECRET = "wrong-secret-5e4d3c2b1a09"


@pytest.fixture(scope="module")
def sim():
    with SimulatorThread(records=300, seed=21, keepalive_seconds=0.2) as thread:
        yield thread.info


def _config(tmp_path: Path, sim: dict, pg_url: str, schema: str, objects: list[str], port: int = 0) -> str:
    lines = [
        "[salesforce]",
        f'instance_url = "{sim["instance_url"]}"',
        f'client_id = "{sim["client_id"]}"',
        f'ca_file = "{sim["ca_file"]}"',
        f'pubsub_endpoint = "{sim["pubsub_endpoint"]}"',
        "[postgres]",
        f'url = "{pg_url}"',
        f'schema = "{schema}"',
        "[service]",
        f"port = {port}",
        'host = "127.0.0.1"',
        "control_poll_s = 0.2",
        "shutdown_timeout_s = 15",
        "[backfill]",
        "poll_max_s = 0.2",
        "page_size = 500",
        "[stream]",
        "batch_max_wait_s = 0.05",
    ]
    lines += [f"[objects.{name}]" for name in objects]
    cfg = tmp_path / f"{schema}.toml"
    cfg.write_text("\n".join(lines) + "\n")
    return str(cfg)


def _env(secret: str) -> dict:
    environ = {k: v for k, v in os.environ.items() if not k.startswith("REPLICATOR_") and k != "DATABASE_URL"}
    return {**environ, SECRET_VARIABLE: secret}


def _cli(*args: str, secret: str, timeout: float) -> subprocess.CompletedProcess:
    """The command line run to its end; a command still running after `timeout` fails the test with its last log
    lines (a loop of retries shows there)."""
    try:
        return subprocess.run([sys.executable, "-m", "replicator.cli", "--log-json", *args], env=_env(secret),
                              capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired as exc:
        err = exc.stderr.decode(errors="replace") if isinstance(exc.stderr, bytes) else (exc.stderr or "")
        pytest.fail(f"`replicator {args[0]}` still ran after {timeout:g} s; its last lines:\n"
                    + "\n".join(err.splitlines()[-6:]))


class _Run:
    """`replicator run` in the background, its stderr appended to a file the test reads while it runs."""

    def __init__(self, cfg: str, secret: str, log: Path):
        self.log = log
        with open(log, "ab") as out:  # O_APPEND: the test's reads never move the writer's offset
            self.proc = subprocess.Popen([sys.executable, "-m", "replicator.cli", "--log-json", "--log-level", "debug",
                                          "run", "--config", cfg], env=_env(secret), stdout=subprocess.DEVNULL,
                                         stderr=out)

    def lines(self) -> list[str]:
        return self.log.read_text(errors="replace").splitlines()

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout=60)


def test_run_with_a_wrong_secret_exits_2_within_30_s_in_one_line(tmp_path, sim, pg_url):
    cfg = _config(tmp_path, sim, pg_url, "wrongsecret", ["Account", "Contact"])
    started = time.monotonic()
    out = _cli("run", "--config", cfg, secret=WRONG_SECRET, timeout=30)
    assert out.returncode == 2, out.stderr[-3000:]
    assert time.monotonic() - started < 30
    line = one_line_error(out)
    assert "invalid_client" in line and "client_secret" in line, line  # it names the credentials to fix
    assert WRONG_SECRET not in out.stdout + out.stderr  # the secret never reaches the output


async def test_a_misspelled_object_stops_alone_shown_in_status_readyz_and_metrics(tmp_path, sim, pg_url):
    port = free_port()
    cfg = _config(tmp_path, sim, pg_url, "misspelled", ["Account", "Acount"], port=port)
    run = _Run(cfg, sim["client_secret"], tmp_path / "run.log")
    try:
        async def phase(name: str, expected: str) -> bool:
            return await pg_value(pg_url, f"SELECT phase = '{expected}' FROM replicator.objects"
                                          f" WHERE object = '{name}'") is True

        async def settled() -> bool:
            assert run.proc.poll() is None, "\n".join(run.lines()[-6:])  # the good object keeps it running
            return await phase("Acount", "FAILED") and await phase("Account", "STREAMING")
        await wait_for(settled, timeout=120, interval=0.2)

        def describes() -> int:  # every describe of Acount this process made (debug lines of the client)
            return sum(1 for line in run.lines() if "sobjects/Acount/describe" in line)
        tried = describes()
        assert tried >= 1

        # /readyz: 503 while an object is FAILED, naming it and why; the good object is ready
        async def readyz() -> dict | None:
            r = await endpoint_get(port, "/readyz")
            if r is None or not r.json()["objects"].get("Account", {}).get("ready"):
                return None
            assert r.status_code == 503, r.text
            return r.json()
        ready = await wait_for(readyz, timeout=60)
        failed = ready["objects"]["Acount"]
        assert failed["phase"] == "FAILED" and failed["ready"] is False, ready
        assert "Acount" in failed["reason"] and "NOT_FOUND" in failed["reason"], failed

        r = await endpoint_get(port, "/metrics")
        phases = {(s.labels["object"], s.labels["phase"]): s.value
                  for family in text_string_to_metric_families(r.text) for s in family.samples
                  if s.name == "replicator_object_phase"}
        assert phases[("Acount", "FAILED")] == 1 and phases[("Account", "STREAMING")] == 1, phases

        status = _cli("status", "--config", cfg, "--json", secret=sim["client_secret"], timeout=60)
        assert status.returncode == 0, status.stderr[-2000:]
        rows = {row["object"]: row for row in json.loads(status.stdout)}
        assert rows["Acount"]["phase"] == "FAILED", rows["Acount"]
        assert "NOT_FOUND" in rows["Acount"]["last_error"] and "Acount" in rows["Acount"]["last_error"], rows["Acount"]
        assert rows["Account"]["phase"] == "STREAMING" and not rows["Account"]["last_error"], rows["Account"]

        # The good object streams on, and the misspelled one is not described again: a window of at least 5 s in
        # which changes of Account keep arriving.
        account = (await ground_truth(sim, "Account"))[0]["Id"]
        window = time.monotonic() + 5
        n = 0
        while n == 0 or time.monotonic() < window:
            n += 1
            name = f"streams beside a stopped object {n}"
            await sim_admin(sim, "POST", "/__sim/changes", [{"object": "Account", "type": "UPDATE", "ids": [account],
                                                              "fields": {"Name": name}}])
            await wait_for(lambda name=name: pg_value(pg_url, f"SELECT name = '{name}' FROM misspelled.account"
                                                              f" WHERE id = '{account}'"), timeout=30)
        assert describes() == tried, f"Acount described {describes() - tried} more times after it stopped"
        assert run.proc.poll() is None
    finally:
        code = run.stop()
    assert code == 0, "\n".join(run.lines()[-6:])


def test_run_where_every_object_is_misspelled_exits_2_in_one_line(tmp_path, sim, pg_url):
    cfg = _config(tmp_path, sim, pg_url, "allwrong", ["Acount", "Contakt"])
    out = _cli("run", "--config", cfg, secret=sim["client_secret"], timeout=60)
    assert out.returncode == 2, out.stderr[-3000:]
    line = one_line_error(out)
    assert "Acount" in line and "Contakt" in line and "NOT_FOUND" in line, line


def test_backfill_of_a_misspelled_object_exits_2_and_loads_the_others(tmp_path, sim, pg_url):
    cfg = _config(tmp_path, sim, pg_url, "bfwrong", ["Account", "Acount"])
    out = _cli("backfill", "--config", cfg, secret=sim["client_secret"], timeout=120)
    assert out.returncode == 2, out.stderr[-3000:]
    line = one_line_error(out)
    assert line.startswith("replicator: backfill of Acount failed") and "NOT_FOUND" in line, line
    rows = asyncio.run(pg_value(pg_url, "SELECT count(*) FROM bfwrong.account"))
    assert rows == 300  # the good object was loaded all the same


def test_a_role_that_may_not_create_the_schemas_exits_2_naming_the_privilege(tmp_path, sim, role_without_create):
    cfg = _config(tmp_path, sim, role_without_create, "noperm", ["Account"])
    for command in ("run", "backfill"):
        out = _cli(command, "--config", cfg, secret=sim["client_secret"], timeout=60)
        assert out.returncode == 2, (command, out.stderr[-3000:])
        line = one_line_error(out)
        assert "permission denied" in line and "GRANT CREATE ON DATABASE" in line, (command, line)


async def test_a_failed_object_is_extracted_again_once_its_cause_is_fixed(sim, pg_url):
    """Contact (mode = "cdc") streams; deselected from Change Data Capture it cannot stream any more: FAILED, with
    the error, Account on. A change made while it is stopped has no event; once Contact is selected again, the next
    start extracts it again (lifecycle FAILED -> BACKFILLING), the change included, and streams."""
    settings = settings_for(sim, pg_url, "fixed", salesforce={"pubsub_endpoint": sim["pubsub_endpoint"]},
                            stream={"batch_max_wait_s": 0.05}, service={"control_poll_s": 0.2},
                            objects={"Contact": {"mode": "cdc"}, "Account": {}})

    def phase(name: str, expected: str):
        return lambda: pg_value(pg_url, f"SELECT phase = '{expected}' FROM replicator.objects WHERE object = '{name}'")

    async with running_service(settings):
        pass
    first_job = await pg_value(pg_url, "SELECT job_id FROM replicator.objects WHERE object = 'Contact'")

    selected = (await sim_admin(sim, "GET", "/__sim/cdc")).json()["objects"]
    contact = [r["Id"] for r in await ground_truth(sim, "Contact") if not r["IsDeleted"]][0]
    try:
        await sim_admin(sim, "PUT", "/__sim/cdc", {"objects": [o for o in selected if o != "Contact"]})
        async with running_service(settings, until=phase("Contact", "FAILED"), timeout=60) as svc:
            error = await pg_value(pg_url, "SELECT last_error FROM replicator.objects WHERE object = 'Contact'")
            assert "no change-event topic" in error

            async def account_streams() -> bool:  # its unit may start after Contact's failed (the fleet's order)
                return svc.metrics.object("Account").phase == "STREAMING"
            await wait_for(account_streams, timeout=60)  # Account goes on (a service that ended fails on the way out)
            await sim_admin(sim, "POST", "/__sim/changes", [{"object": "Contact", "type": "UPDATE", "ids": [contact],
                                                              "fields": {"Phone": "555-0321"}}])
    finally:
        await sim_admin(sim, "PUT", "/__sim/cdc", {"objects": selected})

    async with running_service(settings):  # Contact extracted again: FAILED -> BACKFILLING -> STREAMING
        assert await pg_value(pg_url, f"SELECT phone = '555-0321' FROM fixed.contact WHERE id = '{contact}'")
        assert await pg_value(pg_url, "SELECT job_id FROM replicator.objects WHERE object = 'Contact'") != first_job
        assert await pg_value(pg_url, "SELECT last_error IS NULL FROM replicator.objects WHERE object = 'Contact'")
