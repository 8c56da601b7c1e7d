"""`replicator config show`: the effective configuration (defaults, then the file, then the environment), secrets
hidden (`***`), as TOML in the file's own shape (each value set from the environment says which variable set it) or
as JSON."""

from __future__ import annotations

import json
import os
import urllib.parse
from pathlib import Path
from typing import Any

from pydantic import SecretStr

from ..config import ORG_KEYS, Settings

HIDDEN = "***"


def effective(settings: Settings) -> dict[str, Any]:
    """Every setting by section, as the service sees it. Secrets are `***` when set (None when not); the Postgres
    URL keeps its host and database and hides its password."""
    raw = settings.model_dump(by_alias=True, exclude={"orgs"})
    url = raw["postgres"]["url"]
    raw["postgres"]["url"] = _url_without_password(url.get_secret_value()) if url is not None else None
    shown = _plain(raw)
    if settings.orgs:  # each org's own tables as it runs them: validated, so its secrets are hidden too
        shown["orgs"] = {}
        for org in settings.for_orgs():
            dumped = org.model_dump(by_alias=True)
            shown["orgs"][org.org] = {"schema": org.postgres.schema_,
                                      **{k: _plain(dumped[k]) for k in sorted(ORG_KEYS - {"schema"})}}
    return shown


def _plain(value: Any) -> Any:
    if isinstance(value, SecretStr):
        return HIDDEN
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    return value


def _url_without_password(url: str) -> str:
    parts = urllib.parse.urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.rsplit("@", 1)
    user = netloc[0].split(":", 1)[0]
    return urllib.parse.urlunsplit(parts._replace(netloc=f"{user}:{HIDDEN}@{netloc[1]}"))


def _source(section: str, key: str, obj: str | None = None, org: str | None = None) -> str | None:
    """The environment variable a value came from, if one did (environment overrides win over the file): for an
    org's value its own variable, else the top-level one it inherits."""
    if org is not None:
        own = _source(f"orgs__{org}__{section}", key, obj)
        if own is not None:
            return own
    name = f"REPLICATOR_{section}__{obj}__{key}" if obj else f"REPLICATOR_{section}__{key}"
    if name.upper() in {k.upper() for k in os.environ}:
        return name.upper()
    if (section, key) == ("postgres", "url") and os.environ.get("DATABASE_URL"):
        return "DATABASE_URL"
    return None


def _toml(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, list):
        return "[" + ", ".join(_toml(v) for v in value) + "]"
    return json.dumps(str(value), ensure_ascii=False)  # a JSON string is a TOML basic string


def _lines(values: dict[str, Any], section: str, obj: str | None = None, org: str | None = None) -> list[str]:
    out = []
    for key, value in values.items():
        source = _source(section, key, obj, org)
        if value is None:
            out.append(f"# {key}: not set")
            continue
        out.append(f"{key} = {_toml(value)}" + (f"  # {source}" if source else ""))
    return out


def render_toml(shown: dict[str, Any]) -> str:
    lines: list[str] = []
    for section, values in shown.items():
        if section in ("objects", "orgs"):
            continue
        lines += [f"[{section}]", *_lines(values, section), ""]
    for name, values in shown["objects"].items():
        lines += [f"[objects.{name}]", *_lines(values, "objects", name), ""]
    if not shown["objects"]:
        lines.append("# no objects configured")
    for org, tables in shown.get("orgs", {}).items():
        lines += ["", f"[orgs.{org}]", f"schema = {_toml(tables['schema'])}", ""]
        for section, values in tables.items():
            if section not in ("schema", "objects"):
                lines += [f"[orgs.{org}.{section}]", *_lines(values, section, org=org), ""]
        for name, values in tables["objects"].items():
            lines += [f"[orgs.{org}.objects.{name}]", *_lines(values, "objects", name, org), ""]
    return "\n".join(lines).rstrip() + "\n"


def config_show(settings: Settings, as_json: bool) -> int:
    shown = effective(settings)
    print(json.dumps(shown, indent=2, ensure_ascii=False) if as_json else render_toml(shown), end="\n" if as_json else "")
    return 0
