"""`replicator check`: is this configuration ready to run? Each thing the first start needs is checked once, with
one line each (`ok`, `FAIL`, or `skip` when an earlier failure makes it moot): the credentials (a token), the API
version, Pub/Sub (an RPC answered), each object's describe, its key (a field Salesforce keeps unique), its
change-event topic (GetTopic), and Postgres with the privileges the first start needs. Reads only: nothing is
created in the org or the database. Exit 0 when every check passed, 1 otherwise (bad configuration: 2, as for
every command)."""

from __future__ import annotations

import json
import urllib.parse
from dataclasses import asdict, dataclass

from ..config import Settings
from ..model import ConfigError, ReplicatorError, TerminalError
from ..observe.logs import redact, register_secret
from ..pipeline.schema import object_table
from ..postgres.privileges import probe
from ..salesforce.pubsub import PubSubClient
from ..salesforce.topics import topic_for
from .runtime import salesforce_client

# Retries of a check: enough to ride out one dropped connection, few enough that an unreachable org fails in
# seconds rather than after the service's full backoff.
_ATTEMPTS = 2


@dataclass(frozen=True, slots=True)
class Result:
    check: str
    status: str  # ok | fail | skip
    detail: str


class _Checks:
    def __init__(self) -> None:
        self.results: list[Result] = []

    def add(self, check: str, ok: bool | None, detail: str) -> bool:
        status = "skip" if ok is None else "ok" if ok else "fail"
        self.results.append(Result(check, status, redact(detail)))
        return bool(ok)


def _error(exc: BaseException) -> str:
    return str(exc) if isinstance(exc, ReplicatorError) else f"{type(exc).__name__}: {exc}"


async def run_checks(settings: Settings) -> list[Result]:
    checks = _Checks()
    await _salesforce(settings, checks)
    url = settings.postgres.url.get_secret_value() if settings.postgres.url else None
    if url:
        register_secret(urllib.parse.urlsplit(url).password)
    for p in await probe(url, [settings.state_schema, settings.postgres.schema_]):
        checks.add(p.check, p.ok, p.detail)
    return checks.results


async def _salesforce(settings: Settings, checks: _Checks) -> None:
    sf, names = settings.salesforce, list(settings.objects)
    async with salesforce_client(settings, retry_attempts=_ATTEMPTS) as client:
        try:
            token = await client.tokens.token()
        except ReplicatorError as exc:
            checks.add("credentials", False, f"{sf.auth} as client_id {sf.client_id}: {_error(exc)}")
            for what in ("API version", "Pub/Sub", *(f"{n} describe" for n in names)):
                checks.add(what, None, "no token")
            return
        checks.add("credentials", True, f"{sf.auth}: a token for {token.instance_url}")
        try:
            served = [v.get("version") for v in await client.versions()]
            checks.add("API version", sf.api_version in served,
                       f"{sf.api_version} served" if sf.api_version in served else
                       f"{sf.api_version} not served by the org (it serves {', '.join(served[-3:])}): set "
                       "salesforce.api_version")
        except ReplicatorError as exc:
            checks.add("API version", False, _error(exc))
        pubsub = PubSubClient(sf.pubsub_endpoint, client.tokens, ca_file=str(sf.ca_file) if sf.ca_file else None,
                              tls=sf.pubsub_tls, reconnect_attempts=_ATTEMPTS, rpc_timeout=15)
        try:
            reachable = await _pubsub_reachable(pubsub, names, checks)
            for name in names:
                await _object(client, pubsub if reachable else None, settings, name, checks)
        finally:
            await pubsub.close()


async def _pubsub_reachable(pubsub: PubSubClient, names: list[str], checks: _Checks) -> bool:
    """Any answer to a GetTopic (a topic that does not exist too) shows Pub/Sub reachable and the token accepted."""
    topic = topic_for(names[0]) if names else "/data/ChangeEvents"
    try:
        await pubsub.get_topic(topic)
    except TerminalError as exc:
        if exc.code != "TOPIC_NOT_FOUND":
            return checks.add("Pub/Sub", False, f"{pubsub.endpoint}: {_error(exc)}")
    except ReplicatorError as exc:
        return checks.add("Pub/Sub", False, f"{pubsub.endpoint}: {_error(exc)}")
    return checks.add("Pub/Sub", True, f"{pubsub.endpoint} answers")


async def _object(client, pubsub: PubSubClient | None, settings: Settings, name: str, checks: _Checks) -> None:
    obj = settings.objects[name]
    try:
        describe = await client.describe(name)
    except ConfigError as exc:  # 404 NOT_FOUND: the message says what to check
        checks.add(f"{name} describe", False, str(exc))
        return
    except ReplicatorError as exc:
        checks.add(f"{name} describe", False, f"{_error(exc)} (is the name spelt as in Salesforce, and may the "
                   "integration user read it?)")
        return
    checks.add(f"{name} describe", True, f"{len(describe.fields)} fields")
    try:
        info = object_table(describe, settings.postgres.schema_, obj)
    except ConfigError as exc:
        checks.add(f"{name} key", False, str(exc))
    else:
        checks.add(f"{name} key", True, f"{obj.key}" + ("" if obj.key == "Id" else " (unique in Salesforce)")
                   + f"; {len(info.spec.columns)} columns")
    topic = topic_for(name)
    if obj.mode == "poll":
        checks.add(f"{name} topic", True, 'not needed (mode = "poll")')
        return
    if pubsub is None:
        checks.add(f"{name} topic", None, "Pub/Sub not reachable")
        return
    try:
        info_ = await pubsub.get_topic(topic)
    except TerminalError as exc:
        if exc.code != "TOPIC_NOT_FOUND":
            checks.add(f"{name} topic", False, _error(exc))
        elif obj.mode == "cdc":
            checks.add(f"{name} topic", False, f'{topic} not found: mode = "cdc" needs {name} selected for Change '
                       'Data Capture (or set mode = "auto" or "poll")')
        else:
            checks.add(f"{name} topic", True, f"{topic} not found: {name} will be polled (select it for Change Data "
                       "Capture to stream its changes)")
        return
    except ReplicatorError as exc:
        checks.add(f"{name} topic", False, _error(exc))
        return
    if not info_.get("can_subscribe", True):
        checks.add(f"{name} topic", False, f"{topic}: this user may not subscribe to it")
        return
    checks.add(f"{name} topic", True, f"{topic}: selected for Change Data Capture, change events streamed")


async def check_command(settings: Settings, as_json: bool) -> int:
    results = await run_checks(settings)
    ok = all(r.status != "fail" for r in results)
    if as_json:
        print(json.dumps({"ok": ok, "checks": [asdict(r) for r in results]}, indent=2))
    else:
        for r in results:
            print(f"{ {'ok': 'ok', 'fail': 'FAIL', 'skip': 'skip'}[r.status]:<5} {r.check}: {r.detail}")
    return 0 if ok else 1
