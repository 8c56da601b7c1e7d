"""A database restart or outage is routine: `replicator run` rides it out and streams on with nothing lost.

The service streams four objects and a platform event topic from a simulator with live traffic, on a PostgreSQL
server of this test's own (pg_server.py; never the shared one). Then (a) `pg_ctl restart -m fast`, and (b)
`pg_ctl stop -m immediate` (every server process quits at once, as in a crash), ~10 s down, `pg_ctl start`.
Throughout, the process stays alive and `/healthz` answers; while the database is down `/readyz` answers 503
saying Postgres is unreachable, and 200 once the streams apply again. At the end every event the org published
has been applied exactly once (the checkpoints' counts commit with their batches), SIGTERM exits 0, and
`replicator verify` finds every table equal to the org.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time

import pytest

from replicator.sim.server import SimulatorThread

from .helpers import OBJECTS, config_toml, endpoint_get, free_port, pg_value, sim_admin, wait_for
from .pg_server import own_postgres  # noqa: F401 (the fixture)

pytestmark = pytest.mark.slow  # a PostgreSQL server of its own and `replicator run`

SHUTDOWN_BOUND_S = 15
OUTAGE_S = 10  # a failover or a restart after a crash: what the service must ride out without a restart
PLATFORM_EVENT = "Order_Ready__e"


@pytest.fixture()
def own_sim():
    # its own org: every event it publishes must be applied exactly once
    with SimulatorThread(records=500, seed=59, keepalive_seconds=0.2) as thread:
        yield thread.info


def _config(tmp_path, sim, pg_url: str, port: int) -> str:
    text = config_toml(sim, pg_url, "pgrestart", page_size=250)
    text = text.replace("port = 0", f"port = {port}\nshutdown_timeout_s = {SHUTDOWN_BOUND_S}\ncontrol_poll_s = 0.2")
    text = text.replace("[salesforce]\n", f'[salesforce]\npubsub_endpoint = "{sim["pubsub_endpoint"]}"\n', 1)
    text += f'[stream]\nbatch_max_wait_s = 0.05\nplatform_events = ["{PLATFORM_EVENT}"]\n'
    cfg = tmp_path / "pgrestart.toml"
    cfg.write_text(text)
    return str(cfg)


def _start(cfg: str, sim, log) -> subprocess.Popen:
    # the log goes to a file: a pipe nobody reads until the end would fill up and block the service
    env = dict(os.environ, REPLICATOR_SALESFORCE__CLIENT_SECRET=sim["client_secret"])
    return subprocess.Popen([sys.executable, "-m", "replicator.cli", "--log-json", "run", "--config", cfg],
                            env=env, stdout=subprocess.DEVNULL, stderr=log)


async def _applied(pg_url: str) -> int:
    """Events applied, as committed with the checkpoints (every object's topic and the platform event topic)."""
    return int(await pg_value(pg_url, "SELECT coalesce(sum(events_applied), 0) FROM replicator.checkpoints") or 0)


async def test_service_rides_out_a_postgres_restart_and_an_outage(own_postgres, own_sim, tmp_path):  # noqa: F811
    started = time.monotonic()
    sim, server = own_sim, own_postgres
    pg_url = await server.create_database("replicator")
    port = free_port()
    cfg = _config(tmp_path, sim, pg_url, port)
    log_path = tmp_path / "service.log"
    phases: dict[str, float] = {}
    with open(log_path, "wb") as log:
        proc = _start(cfg, sim, log)

        def alive() -> None:
            assert proc.poll() is None, f"the service exited ({proc.returncode}): " + log_path.read_text()[-3000:]

        async def ready_and_applying_since(before: int) -> bool:
            """200 from /readyz with every object streaming, and batches committed since `before` events."""
            alive()
            r = await endpoint_get(port, "/readyz")
            if r is None or r.status_code != 200 or r.json()["postgres"] != "ok":
                return False
            if not all(o["phase"] == "STREAMING" for o in r.json()["objects"].values()):
                return False
            return await _applied(pg_url) > before

        try:
            await wait_for(lambda: ready_and_applying_since(-1), timeout=120)
            await sim_admin(sim, "PUT", "/__sim/traffic", {"running": True, "rate": 200, "transaction_size": 3,
                                                           "records_per_event": 2, "platform_event_rate": 0.2})
            await wait_for(lambda: ready_and_applying_since(0), timeout=60)
            phases["streaming"] = time.monotonic() - started

            # (a) a fast restart: sessions are ended, the server is back when pg_ctl returns; what is committed
            # from then on was committed on the new server
            server.restart("fast")
            alive()
            before = await _applied(pg_url)
            await wait_for(lambda: ready_and_applying_since(before), timeout=60)
            phases["after restart"] = time.monotonic() - started

            # (b) a crash-like stop, then down for OUTAGE_S seconds: that wait is the scenario (how long the database
            # is unavailable), not a synchronisation; meanwhile the service must stay alive and say why it is not ready
            before = await _applied(pg_url)
            answers = await _outage(server, proc, port, OUTAGE_S)
            assert len(answers) >= 5, answers
            assert all(status == 503 for status, _ in answers), [a for a in answers if a[0] != 503]
            assert all(body["postgres"].startswith("unreachable: ") for _, body in answers), answers[-1]
            last = answers[-1][1]
            assert all(o["ready"] is False and "postgres" in o["reason"].lower()
                       for o in last["objects"].values()), last
            up = time.monotonic()
            await wait_for(lambda: ready_and_applying_since(before), timeout=90)
            phases["recovered after outage"] = time.monotonic() - up

            # nothing lost: once the traffic stops, every published event is applied (exactly once: the counts
            # commit with their batches, so a batch rolled back by the outage is counted when it is applied again)
            await sim_admin(sim, "PUT", "/__sim/traffic", {"running": False})
            published = (await sim_admin(sim, "GET", "/__sim/stats")).json()["events_published"]

            async def caught_up() -> bool:
                alive()
                return await _applied(pg_url) >= published
            await wait_for(caught_up, timeout=60)
        except BaseException:
            print(log_path.read_text()[-20_000:])
            raise
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=SHUTDOWN_BOUND_S + 30)
    err = log_path.read_text()
    assert proc.returncode == 0, err[-3000:]
    assert await _applied(pg_url) == published
    appended = await pg_value(pg_url, f"SELECT count(*) FROM pgrestart.{PLATFORM_EVENT.lower()}")
    topic_count = await pg_value(
        pg_url, f"SELECT events_applied FROM replicator.checkpoints WHERE topic = '/event/{PLATFORM_EVENT}'")
    assert appended == topic_count and appended > 0
    # one clear line per failure, no traceback for a database that is merely unavailable
    assert '"service.failed"' in err and "DatabaseUnavailableError" in err
    assert "Traceback" not in err, err[err.index("Traceback") - 500:][:3000]

    env = dict(os.environ, REPLICATOR_SALESFORCE__CLIENT_SECRET=sim["client_secret"])
    # formula values follow their inputs without an event: `replicator refresh` brings them current
    refresh = subprocess.run([sys.executable, "-m", "replicator.cli", "refresh", "--config", cfg],
                             env=env, capture_output=True, text=True, timeout=300)
    assert refresh.returncode == 0, refresh.stdout + refresh.stderr
    verify = subprocess.run([sys.executable, "-m", "replicator.cli", "verify", "--config", cfg],
                            env=env, capture_output=True, text=True, timeout=300)
    assert verify.returncode == 0, verify.stdout + verify.stderr
    assert verify.stdout.count("(equal)") == len(OBJECTS)
    phases["total"] = time.monotonic() - started
    print("timings (s from start):", {k: round(v, 1) for k, v in phases.items()})


async def _outage(server, proc, port: int, seconds: float) -> list[tuple[int, dict]]:
    """Keep the database down for `seconds` (the scenario itself, not a synchronisation), probing the service
    meanwhile: it must stay alive with /healthz 200; returns the /readyz answers."""
    server.stop("immediate")
    answers = []
    down_until = time.monotonic() + seconds
    while time.monotonic() < down_until:
        assert proc.poll() is None, f"the service exited ({proc.returncode})"
        health = await endpoint_get(port, "/healthz")
        assert health is not None and health.status_code == 200
        ready = await endpoint_get(port, "/readyz")
        assert ready is not None
        answers.append((ready.status_code, ready.json()))
        await asyncio.sleep(0.25)  # the probes' interval during the outage, not a synchronisation
    server.start()
    return answers


async def test_a_backfill_interrupted_by_a_postgres_outage_resumes_its_job_page_by_page(own_postgres, tmp_path):  # noqa: F811
    pages, page_size = 30, 100
    with SimulatorThread(records=pages * page_size, seed=61, keepalive_seconds=0.2) as thread:
        sim, server = thread.info, own_postgres
        pg_url = await server.create_database("replicator")
        port = free_port()
        cfg = tmp_path / "backfill.toml"
        cfg.write_text("\n".join([
            "[salesforce]", f'instance_url = "{sim["instance_url"]}"', f'client_id = "{sim["client_id"]}"',
            f'ca_file = "{sim["ca_file"]}"', f'pubsub_endpoint = "{sim["pubsub_endpoint"]}"',
            "[postgres]", f'url = "{pg_url}"', 'schema = "backfill"',
            "[service]", f"port = {port}", 'host = "127.0.0.1"', f"shutdown_timeout_s = {SHUTDOWN_BOUND_S}",
            "[backfill]", "poll_max_s = 0.2", f"page_size = {page_size}", "parallel_pages = 1",
            "[objects.Account]", ""]))
        # slow pages, so that the outage lands in the middle of the backfill
        await sim_admin(sim, "PUT", "/__sim/faults", {"latency_ms": 150})
        log_path = tmp_path / "service.log"
        with open(log_path, "wb") as log:
            proc = _start(str(cfg), sim, log)
            try:
                await wait_for(lambda: pg_value(pg_url, "SELECT count(*) >= 3 FROM replicator.backfill_pages"),
                               timeout=60)
                job_id = await pg_value(pg_url, "SELECT job_id FROM replicator.objects WHERE object = 'Account'")
                answers = await _outage(server, proc, port, 4)
                assert answers and all(status == 503 and body["postgres"].startswith("unreachable: ")
                                       for status, body in answers), answers
                await sim_admin(sim, "PUT", "/__sim/faults", {"latency_ms": 0})
                await wait_for(lambda: pg_value(
                    pg_url, "SELECT phase = 'STREAMING' FROM replicator.objects WHERE object = 'Account'"), timeout=90)
            except BaseException:
                print(log_path.read_text()[-20_000:])
                raise
            finally:
                proc.send_signal(signal.SIGTERM)
                proc.wait(timeout=SHUTDOWN_BOUND_S + 30)
        err = log_path.read_text()
        assert proc.returncode == 0, err[-3000:]
        assert "Traceback" not in err, err[err.index("Traceback") - 500:][:3000]
        # the same Bulk job, each of its pages committed once, every row loaded
        jobs = (await sim_admin(sim, "GET", "/__sim/jobs")).json()
        assert [j["id"] for j in jobs] == [job_id]
        assert await pg_value(pg_url, "SELECT count(*) FROM replicator.backfill_pages WHERE job_id = "
                                      f"'{job_id}'") == pages
        assert await pg_value(pg_url, "SELECT sum(rows) FROM replicator.backfill_pages") == pages * page_size
        env = dict(os.environ, REPLICATOR_SALESFORCE__CLIENT_SECRET=sim["client_secret"])
        verify = subprocess.run([sys.executable, "-m", "replicator.cli", "verify", "--config", str(cfg)],
                                env=env, capture_output=True, text=True, timeout=300)
        assert verify.returncode == 0, verify.stdout + verify.stderr
        assert verify.stdout.count("(equal)") == 1

