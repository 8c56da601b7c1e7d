"""An operator's first hour (issue 21): `replicator --version`, `config show` and `check`."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from importlib.metadata import version

import pytest

ENV_SECRET = "env-secret-7d6c5b4a3f2e"


def _cli(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    environ = {k: v for k, v in os.environ.items() if not k.startswith("REPLICATOR_") and k != "DATABASE_URL"}
    return subprocess.run([sys.executable, "-m", "replicator.cli", "--log-json", *args], env={**environ, **(env or {})},
                          capture_output=True, text=True, timeout=120)


def test_version():
    out = _cli("--version")
    assert out.returncode == 0 and out.stdout.strip() == f"replicator {version('replicator')}", out


def test_config_show_is_the_file_and_environment_with_secrets_hidden(tmp_path):
    cfg = tmp_path / "r.toml"
    cfg.write_text('[salesforce]\ninstance_url = "https://acme.my.salesforce.com"\nclient_id = "from-file"\n'
                   'client_secret = "file-secret-1a2b3c4d"\n[backfill]\npage_size = 5000\n'
                   '[objects.Account]\n[objects.Invoice__c]\nkey = "External_Id__c"\n')
    env = {"REPLICATOR_SALESFORCE__CLIENT_ID": "from-env", "REPLICATOR_SALESFORCE__CLIENT_SECRET": ENV_SECRET,
           "DATABASE_URL": "postgresql://replicator:pg-password-9z8y@db:5432/warehouse"}
    out = _cli("config", "show", "--config", str(cfg), "--json", env=env)
    assert out.returncode == 0, out.stderr
    shown = json.loads(out.stdout)
    assert shown["salesforce"]["client_id"] == "from-env"  # the environment wins over the file
    assert shown["salesforce"]["client_secret"] == "***" and shown["salesforce"]["refresh_token"] is None
    assert shown["postgres"]["url"] == "postgresql://replicator:***@db:5432/warehouse"
    assert shown["backfill"]["page_size"] == 5000 and shown["backfill"]["parallel_pages"] == 3  # file, default
    assert shown["postgres"]["schema"] == "salesforce"
    assert shown["objects"]["Invoice__c"]["key"] == "External_Id__c" and shown["objects"]["Account"]["key"] == "Id"

    text = _cli("config", "show", "--config", str(cfg), env=env)
    assert text.returncode == 0, text.stderr
    assert 'client_id = "from-env"  # REPLICATOR_SALESFORCE__CLIENT_ID' in text.stdout
    assert 'url = "postgresql://replicator:***@db:5432/warehouse"  # DATABASE_URL' in text.stdout
    assert "[objects.Invoice__c]" in text.stdout and "page_size = 5000" in text.stdout
    for output in (out, text):
        assert ENV_SECRET not in output.stdout + output.stderr and "pg-password-9z8y" not in output.stdout
        assert "file-secret-1a2b3c4d" not in output.stdout + output.stderr

    missing = _cli("config", "show", "--config", str(tmp_path / "nope.toml"))
    assert missing.returncode == 2 and "file not found" in missing.stderr


def _check_config(tmp_path, sim, pg_url, objects: dict | None = None) -> str:
    from .helpers import config_toml

    text = config_toml(sim, pg_url, "chk").replace("[postgres]", f'pubsub_endpoint = "{sim["pubsub_endpoint"]}"\n'
                                                                 "[postgres]", 1)
    if objects is not None:
        text = text.split("[objects.", 1)[0] + "".join(f"[objects.{n}]\n" + "".join(f'{k} = "{v}"\n'
                                                                                   for k, v in o.items())
                                                       for n, o in objects.items())
    cfg = tmp_path / "check.toml"
    cfg.write_text(text)
    return str(cfg)


@pytest.mark.slow
def test_check_passes_against_the_simulator_one_line_per_check(tmp_path, sim, pg_url):
    cfg = _check_config(tmp_path, sim, pg_url)
    out = _cli("check", "--config", cfg, env={"REPLICATOR_SALESFORCE__CLIENT_SECRET": sim["client_secret"]})
    assert out.returncode == 0, out.stdout + out.stderr
    lines = out.stdout.splitlines()
    assert lines and all(line.startswith("ok ") for line in lines), lines
    for name in ("credentials", "API version", "Pub/Sub", "Account describe", "Invoice__c key", "Contact topic",
                 "Postgres", "schema chk", "schema replicator"):
        assert any(name in line for line in lines), (name, lines)
    assert "External_Id__c" in next(line for line in lines if "Invoice__c key" in line)
    shown = json.loads(_cli("check", "--config", cfg, "--json",
                            env={"REPLICATOR_SALESFORCE__CLIENT_SECRET": sim["client_secret"]}).stdout)
    assert shown["ok"] is True and {c["status"] for c in shown["checks"]} == {"ok"} and len(shown["checks"]) == len(lines)
    # check reads, it creates nothing
    assert _pg_schemas(pg_url) == []


def test_check_names_a_misspelled_object_and_a_wrong_secret_and_exits_1(tmp_path, sim, pg_url):
    cfg = _check_config(tmp_path, sim, pg_url, objects={"Account": {}, "Acount": {}})
    out = _cli("check", "--config", cfg, env={"REPLICATOR_SALESFORCE__CLIENT_SECRET": sim["client_secret"]})
    assert out.returncode == 1, out.stdout + out.stderr
    failed = [line for line in out.stdout.splitlines() if line.startswith("FAIL")]
    assert len(failed) == 1 and "Acount describe" in failed[0] and "NOT_FOUND" in failed[0], out.stdout

    out = _cli("check", "--config", cfg, env={"REPLICATOR_SALESFORCE__CLIENT_SECRET": "wrong-secret-0a9b8c7d"})
    assert out.returncode == 1, out.stdout + out.stderr
    failed = [line for line in out.stdout.splitlines() if line.startswith("FAIL")]
    assert len(failed) == 1 and "credentials" in failed[0] and "invalid_client" in failed[0], out.stdout
    assert "wrong-secret-0a9b8c7d" not in out.stdout + out.stderr
    assert any(line.startswith("ok ") and "Postgres" in line for line in out.stdout.splitlines())  # the rest still runs


def test_check_with_an_unreadable_configuration_exits_2(tmp_path):
    cfg = tmp_path / "broken.toml"
    cfg.write_text("[salesforce\n")
    out = _cli("check", "--config", str(cfg))
    assert out.returncode == 2 and "not valid TOML" in out.stderr, out.stderr
    out = _cli("check", "--config", str(tmp_path / "missing.toml"))
    assert out.returncode == 2 and "file not found" in out.stderr, out.stderr


def _pg_schemas(pg_url: str) -> list[str]:
    import asyncio

    import asyncpg

    async def names() -> list[str]:
        conn = await asyncpg.connect(pg_url)
        try:
            return [r[0] for r in await conn.fetch("SELECT nspname FROM pg_namespace WHERE nspname IN ('chk', "
                                                   "'replicator')")]
        finally:
            await conn.close()

    return asyncio.run(names())


def test_check_names_the_grant_a_role_without_create_needs(tmp_path, sim, role_without_create):
    cfg = _check_config(tmp_path, sim, role_without_create, objects={"Account": {}})
    out = _cli("check", "--config", cfg, env={"REPLICATOR_SALESFORCE__CLIENT_SECRET": sim["client_secret"]})
    assert out.returncode == 1, out.stdout + out.stderr
    failed = [line for line in out.stdout.splitlines() if line.startswith("FAIL")]
    assert [line.split(":")[0] for line in failed] == ["FAIL  schema replicator", "FAIL  schema chk"], out.stdout
    assert "GRANT CREATE ON DATABASE" in failed[0]
