"""`[orgs.<name>]` (config.py, docs/orgs.md): each org's settings are the deployment's top-level tables as
defaults with the org's own table over them; a file without `[orgs]` is the org `default`, where it always was."""

from __future__ import annotations

import pytest

from replicator.config import load_settings
from replicator.model import ConfigError

TWO_ORGS = """
[postgres]
schema = "ignored_by_orgs"
[service]
lease_s = 20
[salesforce]
client_id = "shared-id"
api_version = "61.0"
[stream]
batch_max_wait_s = 0.3
[objects.Account]
[orgs.acme.salesforce]
instance_url = "https://acme.my.salesforce.com"
[orgs.globex]
schema = "globex_data"
[orgs.globex.salesforce]
instance_url = "https://globex.my.salesforce.com"
client_id = "globex-id"
[orgs.globex.stream]
batch_max_wait_s = 1.5
[orgs.globex.objects.Contact]
mode = "poll"
"""


def _load(tmp_path, text: str, **env):
    path = tmp_path / "c.toml"
    path.write_text(text)
    return load_settings(path)


def test_each_org_has_the_defaults_under_its_own_values(tmp_path, monkeypatch):
    monkeypatch.setenv("REPLICATOR_SALESFORCE__CLIENT_SECRET", "from-env")
    acme, globex = _load(tmp_path, TWO_ORGS).for_orgs()
    assert (acme.org, acme.state_schema, acme.postgres.schema_) == ("acme", "replicator_acme", "sf_acme")
    assert (globex.org, globex.state_schema, globex.postgres.schema_) == ("globex", "replicator_globex", "globex_data")
    assert (acme.salesforce.client_id, globex.salesforce.client_id) == ("shared-id", "globex-id")
    assert acme.salesforce.api_version == globex.salesforce.api_version == "61.0"
    assert acme.salesforce.secret() == globex.salesforce.secret() == "from-env"  # the environment: every org's default
    assert (acme.stream.batch_max_wait_s, globex.stream.batch_max_wait_s) == (0.3, 1.5)
    assert list(acme.objects) == ["Account"]  # the defaults' list
    assert list(globex.objects) == ["Contact"] and globex.objects["Contact"].mode == "poll"  # its own replaces it
    assert acme.service.lease_s == globex.service.lease_s == 20  # the deployment's
    assert (acme.org_index, globex.org_index) == (0, 1)  # by name: the same in every replica (app/fleet.py shares)


def test_an_orgs_own_environment_variable_wins_over_its_table_and_the_defaults(tmp_path, monkeypatch):
    monkeypatch.setenv("REPLICATOR_SALESFORCE__CLIENT_SECRET", "every-org")
    monkeypatch.setenv("REPLICATOR_ORGS__GLOBEX__SALESFORCE__CLIENT_SECRET", "globex-only")
    monkeypatch.setenv("REPLICATOR_ORGS__GLOBEX__SALESFORCE__CLIENT_ID", "globex-env")
    acme, globex = _load(tmp_path, TWO_ORGS).for_orgs()
    assert (acme.salesforce.secret(), globex.salesforce.secret()) == ("every-org", "globex-only")
    assert (acme.salesforce.client_id, globex.salesforce.client_id) == ("shared-id", "globex-env")
    assert globex.salesforce.instance_url == "https://globex.my.salesforce.com"  # the rest of its table kept


def test_a_file_without_orgs_is_the_org_default_where_it_always_was(tmp_path):
    (only,) = _load(tmp_path, '[postgres]\nschema = "salesforce"\n[objects.Account]\n').for_orgs()
    assert (only.org, only.state_schema, only.postgres.schema_) == ("default", "replicator", "salesforce")
    assert list(only.objects) == ["Account"]


def test_an_org_named_default_keeps_the_state_and_tables_of_a_single_org_file(tmp_path):
    """Moving a running single-org deployment to `[orgs]`: name it `default` and nothing moves."""
    text = '[postgres]\nschema = "crm"\n[orgs.default.objects.Account]\n[orgs.acme.objects.Contact]\n'
    default, acme = _load(tmp_path, text).for_orgs()
    assert (default.state_schema, default.postgres.schema_) == ("replicator", "crm")
    assert (acme.state_schema, acme.postgres.schema_) == ("replicator_acme", "sf_acme")


def test_org_selects_one_and_names_the_choices_when_unknown(tmp_path):
    settings = _load(tmp_path, TWO_ORGS)
    assert [s.org for s in settings.for_orgs("globex")] == ["globex"]
    with pytest.raises(ConfigError, match="org 'initech' is not configured; configured: acme, globex"):
        settings.for_orgs("initech")


@pytest.mark.parametrize(("text", "error"), [
    ("[orgs.Acme]\n", "'Acme' is not an org name"),
    ("[orgs.acme]\npostgres = {}\n", "unknown key 'orgs.acme.postgres'"),
    ("[orgs.acme.salesforce]\ninstance_url = 'ftp://x'\n", "orgs.acme: 'salesforce.instance_url'"),
    ("[orgs.acme.objects.Account]\nmode = 'sometimes'\n", "orgs.acme: 'objects.Account.mode'"),
])
def test_a_bad_org_table_is_one_line_naming_the_key(tmp_path, text, error):
    with pytest.raises(ConfigError, match=error) as exc:
        _load(tmp_path, text)
    assert "\n" not in str(exc.value)


def _cli(*args: str):
    from click.testing import CliRunner

    from replicator.cli import main

    return CliRunner().invoke(main, list(args))


def test_cli_org_unknown_and_json_of_several_orgs_are_one_line_errors(tmp_path, monkeypatch):
    monkeypatch.setenv("REPLICATOR_SALESFORCE__CLIENT_SECRET", "s")
    path = tmp_path / "c.toml"
    path.write_text(TWO_ORGS)
    out = _cli("status", "--config", str(path), "--org", "initech")
    assert out.exit_code == 2 and "org 'initech' is not configured; configured: acme, globex" in out.output
    out = _cli("dead-letters", "list", "--config", str(path), "--json")
    assert out.exit_code == 2 and "--json writes one org's document: add --org NAME (one of acme, globex)" in out.output
    out = _cli("verify", "--config", str(path), "--org", "globex", "Account")  # globex replicates Contact only
    assert out.exit_code == 2 and "orgs.globex: object 'Account' is not configured" in out.output


def test_config_show_of_orgs_hides_their_secrets_and_shows_each_orgs_tables(tmp_path, monkeypatch):
    """An org's table is plain TOML until validated: `config show` once printed its client_secret as it was."""
    import tomllib

    monkeypatch.setenv("REPLICATOR_ORGS__ACME__SALESFORCE__REFRESH_TOKEN", "env-secret-value")
    path = tmp_path / "c.toml"
    path.write_text(TWO_ORGS.replace('instance_url = "https://acme.my.salesforce.com"',
                                     'instance_url = "https://acme.my.salesforce.com"\nclient_secret = "file-secret-value"'))
    for args in ([], ["--json"]):
        out = _cli("config", "show", "--config", str(path), *args)
        assert out.exit_code == 0, out.output
        assert "secret-value" not in out.output
    shown = tomllib.loads(_cli("config", "show", "--config", str(path)).output)
    acme = shown["orgs"]["acme"]
    assert acme["schema"] == "sf_acme" and acme["salesforce"]["client_secret"] == "***"
    assert acme["salesforce"]["refresh_token"] == "***" and list(acme["objects"]) == ["Account"]
    assert shown["orgs"]["globex"]["stream"]["batch_max_wait_s"] == 1.5
