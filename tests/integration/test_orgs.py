"""Several orgs in one deployment (docs/orgs.md; config.py `[orgs.<name>]`, app/deployment.py): each org's tables
in its own schema, its state in `replicator_<org>`, each org streamed by the same process; `status` rows, the
`/metrics` series and `/readyz` say whose each is; `verify` of each org equal."""

from __future__ import annotations

import asyncio
import contextlib

import asyncpg
import orjson
import pytest
from prometheus_client.parser import text_string_to_metric_families

from replicator.app.commands import status_command
from replicator.app.deployment import Deployment
from replicator.config import load_settings
from replicator.sim.server import SimulatorThread

from .helpers import all_equal, endpoint_get, free_port, wait_for

ORGS = ("acme", "globex")
OBJECTS = ("Account", "Contact")


@pytest.fixture(scope="module")
def sims():
    with SimulatorThread(orgs=2, records=120, seed=31, keepalive_seconds=0.2) as thread:  # own ids, credentials
        yield dict(zip(ORGS, thread.infos, strict=True))


def orgs_toml(sims: dict, pg_url: str, port: int, **service) -> str:
    """Two orgs, each its own simulator, objects, schema (the default sf_<org>); postgres and service shared."""
    out = [f'[postgres]\nurl = "{pg_url}"\n',
           f'[service]\nhost = "127.0.0.1"\nport = {port}\ncontrol_poll_s = 0.2\nshutdown_timeout_s = 15\n'
           + "".join(f"{k} = {v!r}\n" for k, v in service.items()),
           "[backfill]\npoll_max_s = 0.2\n[stream]\nbatch_max_wait_s = 0.05\n"]
    for org, sim in sims.items():
        out.append(f'[orgs.{org}.salesforce]\ninstance_url = "{sim["instance_url"]}"\nclient_id = "{sim["client_id"]}"\n'
                   f'client_secret = "{sim["client_secret"]}"\nca_file = "{sim["ca_file"]}"\n'
                   f'pubsub_endpoint = "{sim["pubsub_endpoint"]}"\n')
        out += [f"[orgs.{org}.objects.{name}]\n" for name in OBJECTS]
    return "".join(out)


async def fresh(pg_url: str) -> None:
    conn = await asyncpg.connect(pg_url)
    try:
        for org in ORGS:
            await conn.execute(f"DROP SCHEMA IF EXISTS replicator_{org} CASCADE; DROP SCHEMA IF EXISTS sf_{org} CASCADE")
    finally:
        await conn.close()


async def org_rows(pg_url: str, sql: str) -> dict[str, list]:
    """`sql` (naming the state tables unqualified) in each org's state schema."""
    conn = await asyncpg.connect(pg_url)
    try:
        out = {}
        for org in ORGS:
            await conn.execute(f"SET search_path = replicator_{org}")
            out[org] = [tuple(r) for r in await conn.fetch(sql)]
        return out
    finally:
        await conn.close()


def all_streaming(pg_url: str):
    async def check() -> bool:
        with contextlib.suppress(asyncpg.UndefinedTableError, asyncpg.InvalidSchemaNameError):
            rows = await org_rows(pg_url, "SELECT object FROM objects WHERE phase = 'STREAMING'")
            return all(sorted(o for (o,) in rows[org]) == sorted(OBJECTS) for org in ORGS)
        return False
    return check


async def test_two_orgs_in_one_process_each_in_its_own_schemas(sims, pg_url, tmp_path, capsys):
    await fresh(pg_url)
    port = free_port()
    cfg = tmp_path / "orgs.toml"
    cfg.write_text(orgs_toml(sims, pg_url, port))
    settings = load_settings(cfg)
    orgs = settings.for_orgs()
    assert [(s.org, s.postgres.schema_, s.state_schema) for s in orgs] == [
        ("acme", "sf_acme", "replicator_acme"), ("globex", "sf_globex", "replicator_globex")]
    deployment = Deployment(orgs)
    task = asyncio.create_task(deployment.run())
    try:
        await wait_for(all_streaming(pg_url), timeout=90)
        # each org's records in its own tables
        conn = await asyncpg.connect(pg_url)
        try:
            acme, globex = [{r[0] for r in await conn.fetch(f"SELECT id FROM sf_{org}.account")} for org in ORGS]
            assert len(acme) == len(globex) == 120 and not acme & globex  # each org's own records
        finally:
            await conn.close()

        async def ready_200() -> bool:
            answer = await endpoint_get(port, "/readyz")
            return answer is not None and answer.status_code == 200

        await wait_for(ready_200, timeout=30)  # every org's streams connected
        ready = await endpoint_get(port, "/readyz")
        assert set(ready.json()["orgs"]) == set(ORGS)
        assert set(ready.json()["orgs"]["acme"]["objects"]) == set(OBJECTS)
        text = (await endpoint_get(port, "/metrics")).text
        held = [(s.labels["org"], s.labels["unit"]) for f in text_string_to_metric_families(text) for s in f.samples
                if s.name == "replicator_unit_held" and s.value == 1]
        assert sorted(held) == sorted((org, f"object:{o}") for org in ORGS for o in OBJECTS)
    finally:
        for svc in deployment.services.values():
            svc.stop.set()
        assert await asyncio.wait_for(task, 60) == 0

    capsys.readouterr()
    assert await status_command(orgs, as_json=True) == 0
    rows = orjson.loads(capsys.readouterr().out)
    assert sorted((r["org"], r["object"], r["phase"]) for r in rows) == sorted(
        (org, o, "STREAMING") for org in ORGS for o in OBJECTS)
    for org_settings in orgs:
        assert await all_equal(org_settings, refresh=True), org_settings.org


async def test_an_org_whose_credentials_are_refused_stops_alone_and_the_others_go_on(sims, pg_url, tmp_path):
    """globex's secret is wrong (a ServiceConfigError: every unit of the org shares it): globex stops, FAILED with
    the reason in /readyz; acme streams on; the deployment ends with the configuration error (exit code 2) once
    stopped."""
    from replicator.model import ConfigError

    await fresh(pg_url)
    port = free_port()
    cfg = tmp_path / "orgs.toml"
    cfg.write_text(orgs_toml(sims, pg_url, port).replace(f'client_secret = "{sims["globex"]["client_secret"]}"',
                                                          'client_secret = "not-the-secret"'))
    deployment = Deployment(load_settings(cfg).for_orgs())
    task = asyncio.create_task(deployment.run())
    try:
        async def globex_failed() -> bool:
            answer = await endpoint_get(port, "/readyz")
            if answer is None:
                return False
            objects = answer.json()["orgs"]["globex"]["objects"]
            return answer.status_code == 503 and all(o["phase"] == "FAILED" for o in objects.values())

        await wait_for(globex_failed, timeout=60)
        body = (await endpoint_get(port, "/readyz")).json()["orgs"]
        assert "invalid_client" in body["globex"]["objects"]["Account"]["reason"], body["globex"]
        await wait_for(lambda: _acme_streaming(pg_url), timeout=90)
        assert not task.done()  # acme goes on
        body = (await endpoint_get(port, "/readyz")).json()["orgs"]
        assert body["acme"]["postgres"] == "ok" and body["globex"]["objects"]["Contact"]["phase"] == "FAILED", body
    finally:
        for svc in deployment.services.values():
            svc.stop.set()
        with pytest.raises(ConfigError):
            await asyncio.wait_for(task, 60)


async def _acme_streaming(pg_url: str) -> bool:
    conn = await asyncpg.connect(pg_url)
    try:
        with contextlib.suppress(asyncpg.UndefinedTableError, asyncpg.InvalidSchemaNameError):
            rows = await conn.fetch("SELECT object FROM replicator_acme.objects WHERE phase = 'STREAMING'")
            return sorted(r[0] for r in rows) == sorted(OBJECTS)
        return False
    finally:
        await conn.close()
