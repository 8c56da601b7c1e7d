"""Bad input to the command line and the configuration: each case ends with one line that says what to fix and
a defined exit code (2: bad usage or configuration; 1: a runtime failure), never a traceback. The data path's
bad input (malformed rows, NUL bytes, impossible dates, duplicate and moving keys, corrupt Avro, hostile names
and values) ends as dead letters: tests/integration/test_backfill_hostile.py, test_stream_batches.py,
test_nul.py, test_backfill_rows.py and test_ops_commands.py."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from .helpers import one_line_error

GOOD = ('[salesforce]\ninstance_url = "https://acme.my.salesforce.com"\nclient_id = "a"\nclient_secret = "b"\n'
        "[objects.Account]\n")


def _cli(*args: str, env: dict | None = None, cwd=None) -> subprocess.CompletedProcess:
    environ = {k: v for k, v in os.environ.items() if not k.startswith("REPLICATOR_") and k != "DATABASE_URL"}
    return subprocess.run([sys.executable, "-m", "replicator.cli", "--log-json", *args], env={**environ, **(env or {})},
                          capture_output=True, text=True, timeout=120, cwd=cwd)


CONFIG_CASES = {
    "toml syntax": ("[salesforce\n", "not valid TOML"),
    "unknown key": (GOOD.replace('client_secret = "b"\n', 'client_secret = "b"\nbogus = 1\n'),
                    "unknown key 'salesforce.bogus'"),
    "api version": (GOOD.replace('client_secret = "b"\n', 'client_secret = "b"\napi_version = "sixty"\n'),
                    "must look like 62.0"),
    "instance url scheme": (GOOD.replace("https://acme", "ftp://acme"), "must be an https:// URL"),
    "instance url without host": (GOOD.replace("https://acme.my.salesforce.com", "https://"),
                                  "must be an https:// URL"),
    "hostile object name": (GOOD.replace("[objects.Account]", '[objects."Account; DROP TABLE x"]'),
                            "is not a Salesforce API name"),
    "hostile field name": (GOOD + 'fields = ["Id", "Name FROM User --"]\n', "is not a Salesforce field API name"),
    "hostile key field": (GOOD + 'key = "Id/../../x"\n', "is not a Salesforce field API name"),
    "unknown delete mode": (GOOD + 'deletes = "sometimes"\n', "'objects.Account.deletes'"),
    "no objects": (GOOD.replace("[objects.Account]\n", ""), "no objects configured"),
    "no client id": (GOOD.replace('client_id = "a"\n', ""), "'salesforce.client_id' is required"),
    "no secret": (GOOD.replace('client_secret = "b"\n', ""), "'salesforce.client_secret' (or client_secret_file)"),
    "secret file missing": (GOOD.replace('client_secret = "b"', 'client_secret_file = "/nonexistent/secret"'),
                            "cannot read /nonexistent/secret"),
    "jwt without key": (GOOD.replace('client_secret = "b"', 'auth = "jwt_bearer"'), "private_key_file"),
    "refresh flow without token": (GOOD.replace('client_secret = "b"', 'client_secret = "b"\nauth = "refresh_token"'),
                                   "'salesforce.refresh_token' is required"),
    "unknown auth flow": (GOOD.replace('client_secret = "b"', 'client_secret = "b"\nauth = "password"'),
                          "'salesforce.auth'"),
    "parallel pages out of range": (GOOD + "[backfill]\nparallel_pages = 9\n", "'backfill.parallel_pages'"),
    "page size too small": (GOOD + "[backfill]\npage_size = 5\n", "'backfill.page_size'"),
    "batch of zero events": (GOOD + "[stream]\nbatch_max_events = 0\n", "'stream.batch_max_events'"),
    "num_requested over the cap": (GOOD + "[stream]\nnum_requested = 500\n", "'stream.num_requested'"),
    "negative shutdown bound": (GOOD + "[service]\nshutdown_timeout_s = -1\n", "'service.shutdown_timeout_s'"),
}


@pytest.mark.parametrize("case", sorted(CONFIG_CASES))
def test_bad_configuration_is_one_line_naming_what_to_fix_and_exit_2(case, tmp_path):
    text, expected = CONFIG_CASES[case]
    cfg = tmp_path / "replicator.toml"
    cfg.write_text(text)
    out = _cli("backfill", "--config", str(cfg))
    assert out.returncode == 2, (case, out.stderr[-2000:])
    assert expected in one_line_error(out), case


@pytest.mark.parametrize(("variable", "value", "expected"), [
    ("REPLICATOR_BACKFILL__PAGE_SIZE", "abc", "'backfill.page_size'"),
    ("REPLICATOR_STREAM__BATCH_MAX_WAIT_S", "-3", "'stream.batch_max_wait_s'"),
    ("REPLICATOR_SALESFORCE__VERIFY", "perhaps", "'salesforce.verify'"),
])
def test_a_bad_environment_override_names_the_key(variable, value, expected, tmp_path):
    cfg = tmp_path / "replicator.toml"
    cfg.write_text(GOOD)
    out = _cli("backfill", "--config", str(cfg), env={variable: value})
    assert out.returncode == 2, out.stderr[-2000:]
    assert expected in one_line_error(out)


@pytest.mark.parametrize(("args", "expected"), [
    (["backfill", "--config", "/nonexistent/replicator.toml"], "file not found"),
    (["verify", "--config", "CFG", "Acount"], "object 'Acount' is not configured"),
    (["backfill", "--config", "CFG", "Contact"], "object 'Contact' is not configured"),
    (["dead-letters", "retry", "--id", "abc"], "'abc' is not a valid integer"),
    (["no-such-command"], "No such command"),
])
def test_bad_usage_is_one_line_and_exit_2(args, expected, tmp_path):
    cfg = tmp_path / "replicator.toml"
    cfg.write_text(GOOD)
    out = _cli(*[str(cfg) if a == "CFG" else a for a in args])
    assert out.returncode == 2, out.stderr[-2000:]
    assert expected in out.stderr and "Traceback" not in out.stderr, out.stderr[-2000:]


@pytest.mark.parametrize(("case", "settings", "secret", "expected", "code"), [
    ("wrong client secret", "", "wrong-secret", "invalid_client", 2),  # configuration: no retry fixes it
    ("expired refresh token", 'auth = "refresh_token"\nrefresh_token = "5Aep861expired"\n', None, "invalid_grant", 2),
    pytest.param("unreachable org", "UNREACHABLE", None, "ConnectError", 1,  # a runtime failure: retried, then one
                 marks=pytest.mark.slow),                                    # line (the retries take ~10 s)
])
def test_credentials_and_reachability_fail_in_one_line(case, settings, secret, expected, code, tmp_path, sim,
                                                       pg_url):
    from .helpers import config_toml

    text = config_toml(sim, pg_url, "creds")
    if settings == "UNREACHABLE":  # a port nothing listens on: retried with backoff, then one line
        text = text.replace(sim["instance_url"], "https://127.0.0.1:9")
    elif settings:
        text = text.replace("[postgres]", settings + "[postgres]", 1)
    cfg = tmp_path / "replicator.toml"
    cfg.write_text(text)
    out = _cli("backfill", "--config", str(cfg), env={"REPLICATOR_SALESFORCE__CLIENT_SECRET":
                                                       secret or sim["client_secret"]})
    assert out.returncode == code, (case, out.stderr[-2000:])
    line = one_line_error(out)
    assert expected in line and line.startswith("replicator: backfill of "), (case, line)
    assert (secret or sim["client_secret"]) not in out.stderr  # secrets never reach the output
