"""The command line: exit codes and one-line errors that say what to fix, without leaking secrets."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from .helpers import config_toml


def _cli(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "replicator.cli", "--log-json", *args],
        env={**os.environ, **(env or {})}, capture_output=True, text=True, timeout=120,
    )


def _last_line(text: str) -> str:
    return [line for line in text.splitlines() if line.strip()][-1]


def _error_line(text: str) -> str:
    """The failure a command ended with (its last line, JSON with --log-json), as the console shows it."""
    line = json.loads(_last_line(text))
    assert line["event"] == "replicator.failed", line
    return f"replicator: {line['error']}"


def test_invalid_config_names_the_key_and_exits_2(tmp_path):
    cfg = tmp_path / "bad.toml"
    cfg.write_text('[salesforce]\ninstance_url = "https://x"\nclient_id = "a"\nclient_secret = "b"\n'
                   "[backfill]\nparallel_pages = 9\n[objects.Account]\n")
    out = _cli("backfill", "--config", str(cfg))
    assert out.returncode == 2
    assert _error_line(out.stderr) == (
        f"replicator: {cfg}: 'backfill.parallel_pages': Input should be less than or equal to 5"
    )


def test_the_fatal_line_is_json_in_json_log_mode_and_plain_text_otherwise(tmp_path):
    # A log collector reading a container's stderr parses every line, the last one too.
    cfg = tmp_path / "bad.toml"
    cfg.write_text('[salesforce]\ninstance_url = "https://x"\nclient_id = "a"\nclient_secret = "b"\n'
                   "[backfill]\nparallel_pages = 9\n[objects.Account]\n")
    out = _cli("backfill", "--config", str(cfg))
    assert out.returncode == 2
    line = json.loads(_last_line(out.stderr))
    assert (line["event"], line["level"], line["exit_code"]) == ("replicator.failed", "error", 2), line
    assert line["error"] == f"{cfg}: 'backfill.parallel_pages': Input should be less than or equal to 5"
    plain = subprocess.run([sys.executable, "-m", "replicator.cli", "--log-console", "backfill", "--config", str(cfg)],
                           capture_output=True, text=True, timeout=60)
    assert plain.returncode == 2 and _last_line(plain.stderr) == f"replicator: {line['error']}"


def test_a_database_that_does_not_exist_is_one_line_that_names_it(tmp_path, sim, pg_url):
    # A new user's first typo: one line that names the database and the setting, exit 2 — not a traceback.
    cfg = tmp_path / "nodb.toml"
    missing = pg_url.rsplit("/", 1)[0] + "/no_such_database_here"
    cfg.write_text(config_toml(sim, missing, "cli"))
    out = _cli("backfill", "--config", str(cfg), env={"REPLICATOR_SALESFORCE__CLIENT_SECRET": sim["client_secret"]})
    assert out.returncode == 2, out.stderr
    assert _error_line(out.stderr) == ('replicator: postgres: database "no_such_database_here" does not exist; '
                                      "check postgres.url (or DATABASE_URL)")
    assert "Traceback" not in out.stderr


def test_unknown_object_and_missing_file_exit_2(tmp_path, sim, pg_url):
    cfg = tmp_path / "ok.toml"
    cfg.write_text(config_toml(sim, pg_url, "cli"))
    out = _cli("backfill", "--config", str(cfg), "Acount", env={"REPLICATOR_SALESFORCE__CLIENT_SECRET": "x"})
    assert out.returncode == 2 and "object 'Acount' is not configured" in out.stderr
    out = _cli("backfill", "--config", str(tmp_path / "nope.toml"))
    assert out.returncode == 2 and "file not found" in out.stderr
    assert _cli("backfill", "--bogus").returncode == 2


def test_bad_credentials_fail_loudly_with_one_line_and_no_secret(tmp_path, sim, pg_url):
    cfg = tmp_path / "ok.toml"
    cfg.write_text(config_toml(sim, pg_url, "cli"))
    secret = "wrong-secret-9f8e7d6c5b4a"
    out = _cli("backfill", "--config", str(cfg), "Account", env={"REPLICATOR_SALESFORCE__CLIENT_SECRET": secret})
    assert out.returncode == 2  # bad configuration: no retry fixes refused credentials (issue 21)
    assert _error_line(out.stderr).startswith("replicator: backfill of Account failed:")
    assert secret not in out.stderr + out.stdout


@pytest.mark.slow
def test_backfill_then_status_and_verify(tmp_path, sim, pg_url):
    cfg = tmp_path / "ok.toml"
    cfg.write_text(config_toml(sim, pg_url, "cli"))
    env = {"REPLICATOR_SALESFORCE__CLIENT_SECRET": sim["client_secret"]}
    assert _cli("backfill", "--config", str(cfg), "Invoice__c", env=env).returncode == 0
    status = _cli("status", "--config", str(cfg), "--json")
    assert status.returncode == 0
    import json

    rows = {r["object"]: r for r in json.loads(status.stdout)}
    assert rows["Invoice__c"]["phase"] == "BACKFILLED" and rows["Invoice__c"]["rows_loaded"] > 0
    out = _cli("verify", "--config", str(cfg), "Invoice__c", env=env)
    assert out.returncode == 0 and "(equal)" in out.stdout


@pytest.mark.slow
async def test_verify_reports_a_corrupted_table_and_repair_fixes_it(tmp_path, sim, pg_url):
    from .helpers import pg_value

    cfg = tmp_path / "repair.toml"
    cfg.write_text(config_toml(sim, pg_url, "fix"))
    env = {"REPLICATOR_SALESFORCE__CLIENT_SECRET": sim["client_secret"]}
    assert _cli("backfill", "--config", str(cfg), "Account", env=env).returncode == 0
    victim = await pg_value(pg_url, "SELECT id FROM fix.account ORDER BY id LIMIT 1")
    gone = await pg_value(pg_url, "SELECT id FROM fix.account ORDER BY id DESC LIMIT 1")
    name = await pg_value(pg_url, f"SELECT name FROM fix.account WHERE id = '{victim}'")
    await pg_value(pg_url, f"UPDATE fix.account SET name = 'corrupted', annualrevenue = -1 WHERE id = '{victim}'")
    await pg_value(pg_url, f"DELETE FROM fix.account WHERE id = '{gone}'")
    await pg_value(pg_url, "INSERT INTO fix.account (id, name, systemmodstamp, isdeleted) "
                           "VALUES ('001000000000000ZZZ', 'not in the org', now(), false)")

    found = _cli("verify", "--config", str(cfg), "Account", env=env)
    assert found.returncode == 1
    assert "Account: missing 1, extra 1, different 1" in found.stdout, found.stdout
    assert victim in found.stdout and gone in found.stdout and "001000000000000ZZZ" in found.stdout

    fixed = _cli("verify", "--config", str(cfg), "--repair", "Account", env=env)
    assert fixed.returncode == 0, fixed.stdout + fixed.stderr
    assert "2 rows written from Salesforce, 1 rows Salesforce does not have deleted" in fixed.stdout

    again = _cli("verify", "--config", str(cfg), "Account", env=env)
    assert again.returncode == 0 and "(equal)" in again.stdout
    assert await pg_value(pg_url, f"SELECT name FROM fix.account WHERE id = '{victim}'") == name
    # soft deletes (the default): the row of a record the org does not have stays as history, marked deleted
    assert await pg_value(pg_url, "SELECT isdeleted FROM fix.account WHERE id = '001000000000000ZZZ'") is True


@pytest.mark.slow
def test_the_documented_example_configuration_for_the_simulator_runs(tmp_path, sim, pg_url):
    # A newcomer copies the example of docs/configuration.md next to `replicator sim` and fills in its ready line:
    # it must run.
    import re
    import tomllib
    from pathlib import Path

    page = (Path(__file__).resolve().parents[2] / "docs" / "configuration.md").read_text()
    blocks = [b for b in re.findall(r"```toml\n(.*?)```", page, re.S) if "replicator sim" in b]
    assert len(blocks) == 1, "one example configuration of docs/configuration.md names `replicator sim`"
    example = tomllib.loads(blocks[0])
    assert {"instance_url", "client_id", "client_secret", "ca_file", "pubsub_endpoint"} <= set(example["salesforce"])
    lines = ["[salesforce]"]
    lines += [f'{k} = "{sim[k] if k in sim else v}"' for k, v in example["salesforce"].items()]
    lines += ["[postgres]", f'url = "{pg_url}"']
    lines += [f'{k} = "{v}"' for k, v in example["postgres"].items() if k != "url"]
    for name, opts in example["objects"].items():
        lines += [f"[objects.{name}]", *(f'{k} = "{v}"' for k, v in opts.items())]
    cfg = tmp_path / "example.toml"
    cfg.write_text("\n".join(lines) + "\n")
    out = _cli("check", "--config", str(cfg))  # credentials, Pub/Sub, each object, Postgres
    assert out.returncode == 0, out.stdout + out.stderr[-2000:]
    out = _cli("backfill", "--config", str(cfg), *example["objects"])
    assert out.returncode == 0, out.stderr[-2000:]
