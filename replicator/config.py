"""Settings: one TOML file plus environment overrides, validated before anything starts.

Sources, highest first: environment (`REPLICATOR_<SECTION>__<KEY>`, and `DATABASE_URL` for the Postgres URL),
the TOML file (`--config` or `REPLICATOR_CONFIG`), the defaults below. Secrets may also come from files
(`client_secret_file`, `private_key_file`): never from code, never echoed in logs (they are `SecretStr`).
An invalid file or value fails with one line naming the key (`ConfigError`).
"""

from __future__ import annotations

import os
import re
import tomllib
from typing import Any

from pydantic import Field, PrivateAttr, ValidationError, field_validator
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from .model import ConfigError
from .sections import (  # the sections, importable from here as before
    BackfillSettings,
    HistorySettings,
    ObjectSettings,
    PollSettings,
    PostgresSettings,
    SalesforceSettings,
    ServiceSettings,
    StreamSettings,
)

DEFAULT_ORG = "default"
ORG_NAME = re.compile(r"[a-z][a-z0-9_]{0,39}")
# What an `[orgs.<name>]` table may hold: the org's own; `postgres` and `service` belong to the deployment.
ORG_KEYS = frozenset({"schema", "salesforce", "objects", "stream", "poll", "backfill", "history"})


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="REPLICATOR_", env_nested_delimiter="__", extra="forbid", populate_by_name=True
    )

    salesforce: SalesforceSettings = SalesforceSettings()
    postgres: PostgresSettings = PostgresSettings()
    backfill: BackfillSettings = BackfillSettings()
    stream: StreamSettings = StreamSettings()
    service: ServiceSettings = ServiceSettings()
    poll: PollSettings = PollSettings()
    history: HistorySettings = HistorySettings()
    objects: dict[str, ObjectSettings] = Field(default_factory=dict)
    orgs: dict[str, dict[str, Any]] = Field(
        default_factory=dict,
        description="Several orgs in one deployment (docs/orgs.md): `[orgs.<name>]` tables, each with its own "
        "`salesforce`, `objects`, `stream`, `poll`, `backfill`, `history` (the top-level tables are every org's "
        "defaults; an org's `objects` replaces the top-level list) and `schema`, the Postgres schema of its tables "
        "(default `sf_<name>`). Its state lives in schema `replicator_<name>`. Without `[orgs]` the file is one "
        "org named `default` (state in `replicator`, tables in `postgres.schema`).",
    )
    _org: str = PrivateAttr(DEFAULT_ORG)
    _org_index: int = PrivateAttr(0)
    _orgs: dict[str, Settings] = PrivateAttr(default_factory=dict)

    @property
    def org(self) -> str:
        """The org these settings are of (`default` for a file without `[orgs]`)."""
        return self._org

    @property
    def org_index(self) -> int:
        """The org's place among the deployment's orgs, by name (0 for a file without `[orgs]`): app/fleet.py spreads
        the orgs' extra units over the replicas by it."""
        return self._org_index

    @property
    def state_schema(self) -> str:
        """The Postgres schema of this org's state (postgres/store.py): `replicator` for `default`."""
        return "replicator" if self._org == DEFAULT_ORG else f"replicator_{self._org}"

    def for_orgs(self, only: str | None = None) -> list[Settings]:
        """Each org's own settings (one, this, for a file without `[orgs]`); `only`: that org alone (`--org`)."""
        orgs = self._orgs or {self._org: self}
        if only is None:
            return list(orgs.values())
        if only not in orgs:
            raise ConfigError(f"org {only!r} is not configured; configured: {', '.join(orgs)}")
        return [orgs[only]]

    @field_validator("orgs")
    @classmethod
    def _org_names(cls, orgs: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
        for name, org in orgs.items():
            if not ORG_NAME.fullmatch(name):
                raise ValueError(f"{name!r} is not an org name: lower-case letters, digits and underscores, starting "
                                 "with a letter, at most 40 (it names the Postgres schemas sf_<name> and "
                                 "replicator_<name>)")
            if not isinstance(org, dict):
                raise ValueError(f"orgs.{name} must be a table ([orgs.{name}])")
            unknown = sorted(set(org) - ORG_KEYS)
            if unknown:
                raise ValueError(f"unknown key 'orgs.{name}.{unknown[0]}' (an org has: {', '.join(sorted(ORG_KEYS))}; "
                                 "postgres and service are the deployment's)")
        return orgs

    @field_validator("objects")
    @classmethod
    def _api_names(cls, objects: dict[str, ObjectSettings]) -> dict[str, ObjectSettings]:
        """Object and field names travel into REST paths and SOQL text: only Salesforce API names pass."""
        from .salesforce.names import is_api_name

        for name, obj in objects.items():
            if not is_api_name(name):
                raise ValueError(f"{name!r} is not a Salesforce API name (letters, digits, underscores), "
                                 "e.g. Account or Invoice__c")
            for field in [obj.key, *(obj.fields or [])]:
                if not is_api_name(field):
                    raise ValueError(f"objects.{name}: {field!r} is not a Salesforce field API name")
        return objects

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # Environment wins over the file (passed as init kwargs), which wins over defaults.
        return (env_settings, init_settings)


def _merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in over.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def _first_error(exc: ValidationError) -> str:
    err = exc.errors()[0]
    loc = ".".join(str(p) for p in err["loc"] if p != "schema_") or "(root)"
    if err["type"] == "extra_forbidden":
        return f"unknown key '{loc}'"
    return f"'{loc}': {err['msg']}"


def load_settings(path: str | os.PathLike | None = None, overrides: dict[str, Any] | None = None) -> Settings:
    """Read the TOML file (or `REPLICATOR_CONFIG`), apply overrides and the environment, validate.

    Raises ConfigError with one line that names the file and the key to fix.
    """
    path = path or os.environ.get("REPLICATOR_CONFIG")
    data: dict[str, Any] = {}
    where = "configuration"
    if path:
        where = str(path)
        try:
            with open(path, "rb") as fh:
                data = tomllib.load(fh)
        except FileNotFoundError:
            raise ConfigError(f"{where}: file not found") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{where}: not valid TOML: {exc}") from None
    if os.environ.get("DATABASE_URL") and not os.environ.get("REPLICATOR_POSTGRES__URL"):
        data = _merge(data, {"postgres": {"url": os.environ["DATABASE_URL"]}})
    if overrides:  # from code (the demo, tests): they win over the file and DATABASE_URL
        data = _merge(data, overrides)
    try:
        settings = Settings(**data)
    except ValidationError as exc:
        raise ConfigError(f"{where}: {_first_error(exc)}") from None
    if settings.orgs:
        settings._orgs = {name: _org_settings(settings, name, where) for name in settings.orgs}
    return settings


class _OrgSettings(Settings):
    """One org's settings in a deployment of several: built from the deployment's (environment applied once, to
    the top-level tables that are every org's defaults) and the org's own table, which wins."""

    @classmethod
    def settings_customise_sources(cls, settings_cls, init_settings, env_settings, dotenv_settings,
                                   file_secret_settings):
        return (init_settings,)


def _org_settings(deployment: Settings, name: str, where: str) -> Settings:
    own = dict(deployment.orgs[name])
    base = deployment.model_dump(by_alias=True, exclude={"orgs"})
    schema = own.pop("schema", None) or (deployment.postgres.schema_ if name == DEFAULT_ORG else f"sf_{name}")
    if "objects" in own:  # an org's objects replace the defaults' list: a list merged is a list one cannot shorten
        base["objects"] = {}
    data = _merge(base, own)
    data["postgres"]["schema"] = schema
    try:
        org = _OrgSettings(**data)
    except ValidationError as exc:
        raise ConfigError(f"{where}: orgs.{name}: {_first_error(exc)}") from None
    org._org, org._org_index = name, sorted(deployment.orgs).index(name)
    return org


def require_salesforce(settings: Settings, objects: bool = True) -> None:
    """Checks that only matter when we talk to an org (not for `status`); `objects`: at least one object configured
    (not for `discover`, which is how one chooses them)."""
    sf = settings.salesforce
    if not sf.instance_url:
        raise ConfigError("'salesforce.instance_url' is required (e.g. https://acme.my.salesforce.com)")
    if not sf.client_id:
        raise ConfigError("'salesforce.client_id' is required")
    if sf.auth in ("client_credentials", "refresh_token") and sf.secret() is None:
        raise ConfigError(f"'salesforce.client_secret' (or client_secret_file) is required for auth = {sf.auth}")
    if sf.auth == "jwt_bearer" and (sf.private_key_file is None or not sf.username):
        raise ConfigError("'salesforce.private_key_file' and 'salesforce.username' are required for auth = jwt_bearer")
    if sf.auth == "refresh_token" and sf.refresh_token is None:
        raise ConfigError("'salesforce.refresh_token' is required for auth = refresh_token")
    if objects and not settings.objects:
        raise ConfigError("no objects configured: add an [objects.Account] table (one per sObject)")
