"""`replicator init [--from-sim] [--output F] [--force]`: a commented starter configuration (issue 21).

It holds every section a user must fill, each key's comment taken from the settings' own descriptions (sections.py),
and never a secret: the client secret and the Postgres URL (which may carry a password) are named by the
environment variables that carry them. With `--from-sim` the values come from the simulator's ready line (the one
JSON line `replicator sim` prints on stdout, read from stdin): instance URL, token URL, client id, Pub/Sub endpoint
and CA file; its client secret is printed on stdout as the one `export` line the file names (nothing else goes to
stdout: `eval "$(replicator init --from-sim < ready.json)"` sets it). `replicator sim | replicator init --from-sim`
works too: the first line is read without waiting for the end of the input, and the simulator keeps serving. An
existing file is not replaced without `--force`.

From `replicator sim --orgs N` (each ready line says how many there are: `orgs`), every org's line is read and the
starter names each org in an `[orgs.<name>]` table of its own (docs/orgs.md), its secret in its own variable
(`REPLICATOR_ORGS__<NAME>__SALESFORCE__CLIENT_SECRET`), one export line each.
"""

from __future__ import annotations

import json
import shlex
import sys
import textwrap
import tomllib
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ValidationError

from ..config import ObjectSettings, PostgresSettings, SalesforceSettings
from ..model import ConfigError

SECRET_ENV = "REPLICATOR_SALESFORCE__CLIENT_SECRET"
DATABASE_ENV = "DATABASE_URL"
READY_KEYS = ("instance_url", "client_id", "client_secret", "pubsub_endpoint")
WIDTH = 110


def _describe(model: type[BaseModel], key: str) -> list[str]:
    """The key's description from sections.py, as comment lines."""
    text = model.model_fields[key].description or ""
    return textwrap.wrap(text, WIDTH, initial_indent="# ", subsequent_indent="# ")


def _toml(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return json.dumps(str(value), ensure_ascii=False)  # a JSON string is a TOML basic string


def secret_env(org: str | None) -> str:
    """The variable that carries the client secret: of the org `org` of several, or of the one org."""
    return SECRET_ENV if org is None else f"REPLICATOR_ORGS__{org.upper()}__SALESFORCE__CLIENT_SECRET"


def read_ready_lines(stream) -> list[dict]:
    """The simulator's ready lines, read without waiting for the end of `stream` (piped straight from `replicator
    sim`, which keeps running): the first, and as many more as it says the simulator serves orgs (`orgs`)."""
    if stream.isatty():
        raise ConfigError("--from-sim reads the ready line of `replicator sim` on stdin: replicator sim | replicator "
                          "init --from-sim")
    first = read_ready_line(stream)
    count = first.get("orgs", 1)
    if not isinstance(count, int) or count < 1:
        raise ConfigError("stdin: the ready line's orgs is not a count of orgs")
    readies = [first, *(read_ready_line(stream) for _ in range(count - 1))]
    if count > 1 and any(not isinstance(r.get("org"), str) for r in readies):
        raise ConfigError("stdin: a ready line of several orgs without its org name (org)")
    return readies


def read_ready_line(stream) -> dict:
    """One ready line of the simulator (the next line of `stream`)."""
    line = stream.readline()
    try:
        info = json.loads(line)
    except ValueError:
        info = None
    missing = [k for k in READY_KEYS if not isinstance(info, dict) or not isinstance(info.get(k), str)]
    if missing:
        raise ConfigError(f"stdin: not the ready line of `replicator sim` (a JSON object with {', '.join(READY_KEYS)}"
                          f"; {'nothing was read' if not line.strip() else 'missing ' + missing[0]})")
    return info


def starter(readies: list[dict] | None, output: str) -> str:
    """The configuration text; from the simulator's ready lines when `readies` is given (several: one
    `[orgs.<name>]` table each)."""
    several = readies is not None and len(readies) > 1
    ready = readies[0] if readies and not several else None
    f = shlex.quote(output)
    lines = [
        "# replicator configuration: a starter written by `replicator init`" + (" --from-sim." if ready else "."),
        *(["# Fill in what is marked REQUIRED, then:"] if ready is None else ["# Then:"]),
        f"#   replicator check --config {f}      is it ready? one line per check",
        f"#   replicator discover --config {f}   the org's objects: change events, candidate keys, record counts",
        f"#   replicator run --config {f}",
        "# Every key can also be set from the environment, which wins over this file (REPLICATOR_<SECTION>__<KEY>, e.g.",
        "# REPLICATOR_SALESFORCE__CLIENT_ID); `replicator config show` shows what is in effect, docs/configuration.md",
        "# lists every key. Secrets are never written here: they come from the environment (or a file).",
        "",
    ]
    if several:
        lines += ["# Several orgs, each in an [orgs.<name>] table below with its own [orgs.<name>.salesforce]",
                  "# (docs/orgs.md). The top-level tables ([postgres], [objects.*]) are every org's defaults; each",
                  "# org's tables go in the Postgres schema sf_<name>, its state in replicator_<name>."]
    else:
        lines += ["[salesforce]", *_salesforce(ready)]
    lines += [
        "",
        "[postgres]",
        *_describe(PostgresSettings, "url"),
        "# It comes from the environment, as it may carry a password (never written here):",
        f"#   export {DATABASE_ENV}='postgresql://replicator@db:5432/warehouse'    (or REPLICATOR_POSTGRES__URL)",
        "# The database must exist: replicator creates its schemas and tables in it.",
        *_describe(PostgresSettings, "schema_"),
        'schema = "salesforce"',
        "",
        "# One [objects.NAME] table per sObject to replicate, NAME its API name as Salesforce spells it. To choose them:",
        f"#   replicator discover --config {f}",
        "# lists the org's replicable objects with a suggested mode, their candidate keys and record counts.",
        "[objects.Account]",
    ]
    for key, example in (("mode", "auto"), ("key", "Id"), ("deletes", "soft")):
        lines += [*_describe(ObjectSettings, key), f"# {key} = {_toml(example)}"]
    for r in readies if several else []:
        lines += ["", f"[orgs.{r['org']}]", f"[orgs.{r['org']}.salesforce]", *_salesforce(r, r["org"])]
    return "\n".join(lines) + "\n"


def _salesforce(ready: dict | None, org: str | None = None) -> list[str]:
    if ready is None:
        return [
            "# REQUIRED. " + (SalesforceSettings.model_fields["instance_url"].description or "").removesuffix(
                " Required."),
            'instance_url = ""',
            "# REQUIRED. " + (SalesforceSettings.model_fields["client_id"].description or ""),
            'client_id = ""',
            *_describe(SalesforceSettings, "auth"),
            "# client_credentials (a connected app's consumer key and secret), jwt_bearer (also username and",
            "# private_key_file) or refresh_token (REPLICATOR_SALESFORCE__REFRESH_TOKEN in the environment).",
            'auth = "client_credentials"',
            "# The consumer secret (client_credentials, refresh_token) comes from the environment, never from here:",
            f"#   export {SECRET_ENV}='...'",
            "# or from a file that holds it:",
            '# client_secret_file = "/run/secrets/sf_client_secret"',
            *_describe(SalesforceSettings, "token_url"),
            '# token_url = "https://acme.my.salesforce.com/services/oauth2/token"',
            *_describe(SalesforceSettings, "api_version"),
            f'# api_version = {_toml(SalesforceSettings.model_fields["api_version"].default)}',
            *_describe(SalesforceSettings, "pubsub_endpoint"),
            f'# pubsub_endpoint = {_toml(SalesforceSettings.model_fields["pubsub_endpoint"].default)}',
            *_describe(SalesforceSettings, "ca_file"),
            '# ca_file = "/etc/ssl/certs/private-ca.pem"',
        ]
    tls = bool(ready.get("ca_file")) or not str(ready["instance_url"]).startswith("http://")
    again = "replicator sim | replicator init --from-sim --force" if org is None else \
        "replicator sim --orgs N | replicator init --from-sim --force"
    out = [
        f"# From the ready line of `replicator sim` ({ready.get('admin_url') or ready['instance_url']}). Its ports",
        "# and certificate change at every start: after a restart, write this file again",
        f"# ({again}).",
        *_describe(SalesforceSettings, "instance_url"),
        f"instance_url = {_toml(ready['instance_url'])}",
        *_describe(SalesforceSettings, "client_id"),
        f"client_id = {_toml(ready['client_id'])}",
        'auth = "client_credentials"',
        "# The consumer secret comes from the environment, never from here: `replicator init --from-sim` printed",
        f"# the line that sets it (export {secret_env(org)}=...).",
    ]
    if ready.get("token_url"):
        out += [*_describe(SalesforceSettings, "token_url"), f"token_url = {_toml(ready['token_url'])}"]
    out += [*_describe(SalesforceSettings, "pubsub_endpoint"), f"pubsub_endpoint = {_toml(ready['pubsub_endpoint'])}"]
    if ready.get("ca_file"):
        out += [*_describe(SalesforceSettings, "ca_file"), f"ca_file = {_toml(ready['ca_file'])}"]
    if not tls:  # `replicator sim --no-tls`: plain HTTP and a plaintext Pub/Sub channel
        out += [*_describe(SalesforceSettings, "pubsub_tls"), "pubsub_tls = false"]
    return out


def _validate(text: str) -> None:
    """The starter must load as it is (the ready line's values included): one line naming what is wrong."""
    data = tomllib.loads(text)
    try:
        for salesforce in [data["salesforce"]] if "salesforce" in data else \
                [org["salesforce"] for org in data["orgs"].values()]:
            SalesforceSettings(**salesforce)
        PostgresSettings(**data["postgres"])
        for obj in data["objects"].values():
            ObjectSettings(**obj)
    except ValidationError as exc:
        err = exc.errors()[0]
        raise ConfigError(f"stdin: the ready line's {'.'.join(map(str, err['loc']))}: {err['msg']}") from None


def init_command(from_sim: bool, output: str, force: bool) -> int:
    readies = read_ready_lines(sys.stdin) if from_sim else None
    text = starter(readies, output)
    _validate(text)
    path = Path(output)
    try:
        with path.open("w" if force else "x", encoding="utf-8") as fh:
            fh.write(text)
    except FileExistsError:
        raise ConfigError(f"{output} exists: choose another --output, or --force to replace it") from None
    except OSError as exc:
        raise ConfigError(f"{output}: cannot write it ({exc.strerror})") from None
    out = sys.stderr
    if readies is not None:
        several = len(readies) > 1
        for ready in readies:
            print(f"export {secret_env(ready['org'] if several else None)}={shlex.quote(ready['client_secret'])}",
                  flush=True)
        where = f"{len(readies)} orgs of the simulator" if several else f"the simulator at {readies[0]['instance_url']}"
        print(f"wrote {output} for {where}; "
              + ("each org's client secret goes in its own variable: the export lines" if several else
                 f"its client secret goes in {SECRET_ENV}: the export line")
              + f" on stdout set{'' if several else 's'} it. Then: replicator check --config {shlex.quote(output)}",
              file=out)
    else:
        print(f"wrote {output}: fill in salesforce.instance_url and client_id, export {SECRET_ENV} and "
              f"{DATABASE_ENV}, then: replicator check --config {shlex.quote(output)}", file=out)
    return 0
