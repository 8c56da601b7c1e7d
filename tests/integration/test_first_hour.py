"""An operator's first hour (issue 21): `replicator --version`, `config show` and `check`."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from importlib.metadata import version

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
