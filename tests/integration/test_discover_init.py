"""An operator's first hour, continued (issue 21): `replicator discover` lists what the org can replicate, and
`replicator init` writes a starter configuration that `check` then accepts."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shlex
import subprocess
import sys
import tomllib

import pytest

from replicator.config import load_settings
from replicator.sim.admin_client import sim_admin

from .helpers import ground_truth

pytestmark = pytest.mark.slow  # `replicator` subprocesses against the simulator

# The simulator's replicable objects (queryable and replicateable in its describeGlobal).
SIM_OBJECTS = {"Account", "Contact", "Opportunity", "Invoice__c", "Task", "Shipment__c", "AccountShare",
               "AccountHistory"}


def _cli(*args: str, env: dict | None = None, input: str | None = None) -> subprocess.CompletedProcess:
    environ = {k: v for k, v in os.environ.items() if not k.startswith("REPLICATOR_") and k != "DATABASE_URL"}
    return subprocess.run([sys.executable, "-m", "replicator.cli", "--log-json", *args], env={**environ, **(env or {})},
                          capture_output=True, text=True, timeout=120, input=input)


def _config(tmp_path, sim: dict, objects: str = "[objects.Account]\n[objects.Contact]\nmode = \"cdc\"\n",
            pubsub: str | None = None) -> str:
    cfg = tmp_path / "discover.toml"
    cfg.write_text("[salesforce]\n"
                   f'instance_url = "{sim["instance_url"]}"\nclient_id = "{sim["client_id"]}"\n'
                   f'ca_file = "{sim["ca_file"]}"\npubsub_endpoint = "{pubsub or sim["pubsub_endpoint"]}"\n' + objects)
    return str(cfg)


def _secret(sim: dict) -> dict:
    return {"REPLICATOR_SALESFORCE__CLIENT_SECRET": sim["client_secret"]}


def _log(stderr: str, event: str) -> dict:
    for line in stderr.splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if record.get("event") == event:
            return record
    raise AssertionError(f"no {event} line in {stderr[-2000:]}")


def _live(sim: dict, name: str) -> int:
    return sum(1 for r in asyncio.run(ground_truth(sim, name)) if not r["IsDeleted"])


def test_discover_lists_the_objects_with_their_topic_keys_and_counts(tmp_path, sim):
    cfg = _config(tmp_path, sim)
    selected = asyncio.run(sim_admin(sim, "GET", "/__sim/cdc")).json()["objects"]
    assert "Contact" in selected and "Task" not in selected
    asyncio.run(sim_admin(sim, "PUT", "/__sim/cdc", {"objects": [o for o in selected if o != "Contact"]}))
    try:
        out = _cli("discover", "--config", cfg, "--json", env=_secret(sim))
        text = _cli("discover", "--config", cfg, env=_secret(sim))  # piped: whole values, one line per object
    finally:
        asyncio.run(sim_admin(sim, "PUT", "/__sim/cdc", {"objects": selected}))
    assert out.returncode == 0, out.stdout + out.stderr[-2000:]
    rows = {r["object"]: r for r in json.loads(out.stdout)}
    assert set(rows) == SIM_OBJECTS
    assert rows["Account"]["change_events"] is True and rows["Account"]["topic"] == "/data/AccountChangeEvent"
    assert rows["Invoice__c"]["topic"] == "/data/Invoice__ChangeEvent" and rows["Invoice__c"]["change_events"] is True
    assert rows["Contact"]["change_events"] is False and rows["Task"]["change_events"] is False  # deselected, never
    assert [rows[n]["suggested_mode"] for n in ("Account", "Invoice__c", "Contact", "Task")] == \
        ["auto", "auto", "poll", "poll"]
    # External ID and Unique: a key; Legacy_Code__c is an External ID that repeats, not a key
    assert rows["Invoice__c"]["candidate_keys"] == ["External_Id__c"] and rows["Account"]["candidate_keys"] == []
    assert rows["Account"]["system_modstamp"] is True and rows["Task"]["system_modstamp"] is True
    assert rows["AccountShare"]["system_modstamp"] is False and rows["AccountShare"]["poll_key"] == "LastModifiedDate"
    assert rows["AccountHistory"]["poll_key"] is None and "whole" in rows["AccountHistory"]["note"]
    for name in ("Account", "Invoice__c", "Task"):
        assert rows[name]["records"] == _live(sim, name), name
    assert rows["AccountShare"]["records"] is None  # Record Count leaves associated objects out
    assert rows["Account"]["configured"] == "auto" and rows["Contact"]["configured"] == "cdc"
    assert rows["Task"]["configured"] is None
    # what it spent: describeGlobal, one recordCount, one describe per object; one GetTopic per object
    calls = _log(out.stderr, "discover.done")
    assert (calls["objects"], calls["api_calls"], calls["get_topic_calls"]) == (8, 2 + 8, 8), calls

    assert text.returncode == 0, text.stderr[-2000:]
    lines = [line.split("\t") for line in text.stdout.splitlines()]
    header, body = lines[0], {line[0]: dict(zip(lines[0], line, strict=True)) for line in lines[1:]}
    assert header[0] == "object" and set(body) == SIM_OBJECTS
    assert body["Invoice__c"]["candidate keys"] == "External_Id__c"
    assert body["Contact"]["suggested mode"] == "poll" and body["Account"]["suggested mode"] == "auto"
    assert body["Account"]["records"] == str(_live(sim, "Account"))


def test_discover_describes_only_the_objects_asked_for(tmp_path, sim):
    cfg = _config(tmp_path, sim, objects="")  # no objects configured yet: discover is how one chooses them
    out = _cli("discover", "--config", cfg, "--json", "--objects", "account,*__c", env=_secret(sim))
    assert out.returncode == 0, out.stdout + out.stderr[-2000:]
    rows = json.loads(out.stdout)
    assert [r["object"] for r in rows] == ["Account", "Invoice__c", "Shipment__c"]
    assert all(r["configured"] is None for r in rows)
    calls = _log(out.stderr, "discover.done")
    assert (calls["api_calls"], calls["get_topic_calls"]) == (2 + 3, 3), calls

    out = _cli("discover", "--config", cfg, "--objects", "Account,Acount", env=_secret(sim))
    assert out.returncode == 2 and "Acount" in out.stderr.splitlines()[-1], out.stderr[-2000:]


def test_discover_exits_1_with_one_line_when_the_org_is_unreachable_and_2_on_bad_configuration(tmp_path, sim):
    cfg = _config(tmp_path, sim)
    # refused credentials are bad configuration (exit 2, as for run and backfill); `check` alone reports them as a
    # failing check (exit 1)
    out = _cli("discover", "--config", cfg, env={"REPLICATOR_SALESFORCE__CLIENT_SECRET": "wrong-secret-5e4d3c2b"})
    assert out.returncode == 2 and out.stdout == "", out.stdout + out.stderr[-2000:]
    last = json.loads(out.stderr.splitlines()[-1])
    assert last["event"] == "replicator.failed" and "invalid_client" in last["error"], last
    assert "wrong-secret-5e4d3c2b" not in out.stdout + out.stderr

    closed = tmp_path / "closed.toml"
    closed.write_text('[salesforce]\ninstance_url = "https://127.0.0.1:9"\nclient_id = "x"\n'
                      f'ca_file = "{sim["ca_file"]}"\n')
    out = _cli("discover", "--config", str(closed), env=_secret(sim))
    assert out.returncode == 1 and out.stdout == "", out.stdout + out.stderr[-2000:]
    assert json.loads(out.stderr.splitlines()[-1])["event"] == "replicator.failed"

    out = _cli("discover", "--config", _config(tmp_path, sim, pubsub="127.0.0.1:9"), env=_secret(sim))
    assert out.returncode == 1 and out.stdout == "", out.stdout + out.stderr[-2000:]
    assert "Pub/Sub API at 127.0.0.1:9" in json.loads(out.stderr.splitlines()[-1])["error"]

    broken = tmp_path / "broken.toml"
    broken.write_text("[salesforce\n")
    out = _cli("discover", "--config", str(broken))
    assert out.returncode == 2 and "not valid TOML" in out.stderr, out.stderr


@contextlib.contextmanager
def _init_from_sim(tmp_path, *sim_args: str):
    """`replicator sim --records 50 *sim_args | replicator init --from-sim` (init reads the ready lines and returns
    while the simulator keeps serving): (the file written, init's result); the simulator stops afterwards."""
    environ = {k: v for k, v in os.environ.items() if not k.startswith("REPLICATOR_")}
    simulator = subprocess.Popen([sys.executable, "-m", "replicator.cli", "sim", "--records", "50", *sim_args],
                                 stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=environ)
    try:
        cfg = tmp_path / "replicator.toml"
        init = subprocess.run([sys.executable, "-m", "replicator.cli", "--log-json", "init", "--from-sim",
                               "--output", str(cfg)], stdin=simulator.stdout, capture_output=True, text=True,
                              timeout=120, env=environ)
        assert init.returncode == 0, init.stdout + init.stderr
        yield cfg, init
    finally:
        simulator.terminate()
        simulator.wait(timeout=60)
        simulator.stdout.close()


def test_init_from_the_simulators_ready_line_then_check_passes(tmp_path, pg_url):
    # The flow the README shows: `replicator sim | replicator init --from-sim` (init reads the ready line and
    # returns while the simulator keeps serving), the export line it prints, then `check`.
    with _init_from_sim(tmp_path) as (cfg, init):
        text = cfg.read_text()
        written = tomllib.loads(text)["salesforce"]
        assert written["instance_url"].startswith("https://127.0.0.1:") and written["ca_file"]
        assert written["pubsub_endpoint"].startswith("127.0.0.1:") and written["client_id"]
        assert "client_secret" not in written and "refresh_token" not in written  # secrets stay out of the file
        [export] = init.stdout.splitlines()  # stdout: the export line alone, for eval "$(…)"
        word, assignment = shlex.split(export)
        name, _, secret = assignment.partition("=")
        assert word == "export" and name == "REPLICATOR_SALESFORCE__CLIENT_SECRET" and secret
        assert secret not in text and name in text  # the file names the variable, never its value

        out = _cli("check", "--config", str(cfg), env={name: secret, "DATABASE_URL": pg_url})
        assert out.returncode == 0, out.stdout + out.stderr[-2000:]
        assert all(line.startswith("ok ") for line in out.stdout.splitlines()), out.stdout
        assert secret not in out.stdout + out.stderr
        out = _cli("discover", "--config", str(cfg), "--json", "--objects", "Account", env={name: secret})
        assert out.returncode == 0 and json.loads(out.stdout)[0]["records"] > 0, out.stdout + out.stderr[-2000:]


def test_init_writes_a_starter_that_names_what_to_fill_and_refuses_to_overwrite(tmp_path, sim):
    cfg = tmp_path / "replicator.toml"
    out = _cli("init", "--output", str(cfg))
    assert out.returncode == 0 and out.stdout == "", out.stdout + out.stderr
    text = cfg.read_text()
    load_settings(cfg)  # valid TOML of known keys
    for name in ("REPLICATOR_SALESFORCE__CLIENT_SECRET", "DATABASE_URL", "replicator discover", "replicator check"):
        assert name in text, name
    out = _cli("check", "--config", str(cfg))
    assert out.returncode == 2 and "instance_url" in out.stderr.splitlines()[-1], out.stderr  # what to fill first

    out = _cli("init", "--from-sim", "--output", str(cfg), input=json.dumps(sim) + "\n")
    assert out.returncode == 2 and cfg.read_text() == text, out.stderr
    assert "--force" in json.loads(out.stderr.splitlines()[-1])["error"] and out.stdout == ""
    out = _cli("init", "--from-sim", "--output", str(cfg), "--force", input=json.dumps(sim) + "\n")
    assert out.returncode == 0 and sim["instance_url"] in cfg.read_text(), out.stderr

    out = _cli("init", "--from-sim", "--output", str(tmp_path / "other.toml"), input="not json\n")
    assert out.returncode == 2 and "ready line" in out.stderr.splitlines()[-1], out.stderr
    assert not (tmp_path / "other.toml").exists()


def test_init_from_a_simulator_of_several_orgs_writes_one_table_per_org_then_check_passes(tmp_path, pg_url):
    """`replicator sim --orgs 2 | replicator init --from-sim`: every org's ready line is read (each says how many
    there are), each org gets its `[orgs.<name>]` table with its own Salesforce settings, and its secret its own
    export line (`REPLICATOR_ORGS__<NAME>__SALESFORCE__CLIENT_SECRET`); `check` passes for both orgs."""
    with _init_from_sim(tmp_path, "--orgs", "2") as (cfg, init):
        text = cfg.read_text()
        orgs = tomllib.loads(text)["orgs"]
        assert set(orgs) == {"org1", "org2"}
        urls = {org["salesforce"]["instance_url"] for org in orgs.values()}
        assert len(urls) == 2 and all(u.startswith("https://127.0.0.1:") for u in urls)
        assert all("client_secret" not in org["salesforce"] for org in orgs.values())
        secrets = {}
        for line in init.stdout.splitlines():  # stdout: the export lines alone, for eval "$(…)"
            word, assignment = shlex.split(line)
            name, _, secret = assignment.partition("=")
            assert word == "export" and secret and secret not in text and name in text
            secrets[name] = secret
        assert set(secrets) == {"REPLICATOR_ORGS__ORG1__SALESFORCE__CLIENT_SECRET",
                                "REPLICATOR_ORGS__ORG2__SALESFORCE__CLIENT_SECRET"}
        assert len(set(secrets.values())) == 2

        out = _cli("check", "--config", str(cfg), env={**secrets, "DATABASE_URL": pg_url})
        assert out.returncode == 0, out.stdout + out.stderr[-2000:]
        oks = [line for line in out.stdout.splitlines() if line.startswith("ok ")]
        assert oks and not [line for line in out.stdout.splitlines() if line.startswith(("FAIL", "fail"))], out.stdout
        assert "org org1" in out.stderr and "org org2" in out.stderr, out.stderr[-2000:]
