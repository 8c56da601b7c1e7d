"""`replicator discover`: the org's replicable objects, so a user can choose objects and modes (issue 21).

Replicable: `queryable` and `replicateable` in describeGlobal (REST API Developer Guide, "Describe Global",
https://developer.salesforce.com/docs/atlas.en-us.api_rest.meta/api_rest/resources_describeGlobal.htm). For each
object listed (every replicable one, or those `--objects` names or matches):
- change events: its change-event topic exists (Pub/Sub GetTopic, as `mode = "auto"` decides: the entity is
  selected for Change Data Capture) and this user may subscribe to it;
- SystemModstamp present, else the field a poll reads by (pipeline/poll.py KEY_FIELDS), from its describe;
- candidate keys: fields describe marks `externalId` and `unique` (what `objects.X.key` accepts besides Id);
- records: REST Record Count (a snapshot Salesforce refreshes now and then; none for associated objects such as
  Share and History, which it does not count);
- a suggested mode: `auto` when it has change events, else `poll`; and its mode in this configuration, if any.

Cost: REST calls 2 + N (describeGlobal, one Record Count, one describe per object listed; Record Count takes one
call per 200 names when `--objects` narrows the list), and N Pub/Sub GetTopic calls, at most DESCRIBE_CONCURRENCY
at once. The `discover.done` log line counts what was spent.
"""

from __future__ import annotations

import asyncio
import difflib
import fnmatch
import json
import sys
import time
from dataclasses import asdict, dataclass

import structlog

from ..config import Settings
from ..model import ConfigError, ObjectDescribe, ReplicatorError, TerminalError
from ..pipeline.poll import KEY_FIELDS
from ..salesforce.pubsub import PubSubClient
from ..salesforce.topics import topic_for
from .runtime import salesforce_client

log = structlog.get_logger(__name__)

# Describes and GetTopics in flight at once: well under the client's 16 connections and Salesforce's 25 concurrent
# long-running requests (docs/bulk-rest-oauth.md §2.1); an org's few hundred objects take a few seconds.
DESCRIBE_CONCURRENCY = 8
# Like `replicator check`: ride out one dropped connection, fail in seconds when the org is unreachable.
_ATTEMPTS = 2
COLUMNS = ("object", "records", "change events", "SystemModstamp", "candidate keys", "suggested mode", "configured",
           "note")


@dataclass(frozen=True, slots=True)
class Row:
    object: str
    label: str
    custom: bool
    records: int | None  # Record Count; None when Salesforce does not count the object
    topic: str
    change_events: bool  # the topic exists and this user may subscribe to it
    system_modstamp: bool
    poll_key: str | None  # the field a poll reads changes by (None: each round extracts the object whole)
    candidate_keys: list[str]
    fields: int | None
    suggested_mode: str  # auto | poll
    configured: str | None  # its mode in this configuration, None when not configured
    note: str


def replicable(entries: list[dict]) -> list[dict]:
    return [e for e in entries if e.get("queryable") and e.get("replicateable")]


def choose(entries: list[dict], patterns: list[str]) -> list[dict]:
    """The replicable entries named by `patterns` (names or shell patterns, case-insensitive); all without any. A name
    with no pattern characters that matches nothing is a usage error (ConfigError, exit 2)."""
    usable = replicable(entries)
    if not patterns:
        return usable
    chosen = {}
    for pattern in patterns:
        lowered = pattern.lower()
        found = [e for e in usable if fnmatch.fnmatchcase(str(e["name"]).lower(), lowered)]
        if not found and not any(c in pattern for c in "*?["):
            raise ConfigError(_unknown(pattern, entries))
        chosen.update((e["name"], e) for e in found)
    return list(chosen.values())


def _unknown(name: str, entries: list[dict]) -> str:
    entry = next((e for e in entries if str(e.get("name", "")).lower() == name.lower()), None)
    if entry is not None:
        return (f"--objects: {entry['name']} is not replicable (describeGlobal: queryable={entry.get('queryable')}, "
                f"replicateable={entry.get('replicateable')})")
    close = difflib.get_close_matches(name, [str(e.get("name")) for e in replicable(entries)], n=3)
    return (f"--objects: the org has no object {name!r} that this user may replicate"
            + (f"; did you mean {', '.join(close)}?" if close else ""))


def _poll_key(describe: ObjectDescribe) -> str | None:
    names = {f.name for f in describe.fields}
    return next((f for f in KEY_FIELDS if f in names), None)


async def _change_events(pubsub: PubSubClient, topic: str) -> tuple[bool, str]:
    """(streamable, note) from GetTopic: NOT_FOUND is an entity not selected for Change Data Capture; any other
    failure ends the command (Pub/Sub unreachable, the token refused)."""
    try:
        info = await pubsub.get_topic(topic)
    except ConfigError:
        raise
    except TerminalError as exc:
        if exc.code == "TOPIC_NOT_FOUND":
            return False, ""
        raise TerminalError(f"Pub/Sub API at {pubsub.endpoint}: {exc}", code=exc.code) from exc
    except ReplicatorError as exc:
        raise TerminalError(f"Pub/Sub API at {pubsub.endpoint}: {exc}") from exc
    if not info.get("can_subscribe", True):
        return False, f"{topic} exists, but this user may not subscribe to it"
    return True, ""


async def _row(client, pubsub: PubSubClient, settings: Settings, entry: dict, counts: dict[str, int],
               gate: asyncio.Semaphore) -> Row:
    name = str(entry["name"])
    topic = topic_for(name)
    notes = []
    async with gate:
        try:
            describe: ObjectDescribe | None = await client.describe(name)
        except TerminalError as exc:  # the object listed but not described (permissions): say so, go on
            describe = None
            notes.append(f"describe failed: {exc}")
        streamable, why = await _change_events(pubsub, topic)
    if why:
        notes.append(why)
    keys = [f.name for f in describe.fields if f.external_id and f.unique] if describe else []
    poll_key = _poll_key(describe) if describe else None
    if describe and not streamable:
        if poll_key is None:
            notes.append("no SystemModstamp or LastModifiedDate: every poll round extracts it whole")
        elif poll_key != "SystemModstamp":
            notes.append(f"no SystemModstamp: polled by {poll_key}")
    configured = settings.objects.get(name) or next(
        (o for n, o in settings.objects.items() if n.lower() == name.lower()), None)
    return Row(object=name, label=str(entry.get("label") or ""), custom=bool(entry.get("custom")),
               records=counts.get(name), topic=topic, change_events=streamable,
               system_modstamp=describe is not None and any(f.name == "SystemModstamp" for f in describe.fields),
               poll_key=poll_key, candidate_keys=keys, fields=len(describe.fields) if describe else None,
               suggested_mode="auto" if streamable else "poll", configured=configured.mode if configured else None,
               note="; ".join(notes))


async def discover(settings: Settings, patterns: list[str]) -> list[Row]:
    sf = settings.salesforce
    started = time.monotonic()
    async with salesforce_client(settings, retry_attempts=_ATTEMPTS) as client:
        entries = await client.describe_global()
        chosen = choose(entries, patterns)
        counts = await client.record_counts(None if not patterns else [str(e["name"]) for e in chosen]) \
            if chosen else {}
        pubsub = PubSubClient(sf.pubsub_endpoint, client.tokens, ca_file=str(sf.ca_file) if sf.ca_file else None,
                              tls=sf.pubsub_tls, reconnect_attempts=_ATTEMPTS, rpc_timeout=15)
        gate = asyncio.Semaphore(DESCRIBE_CONCURRENCY)
        tasks = [asyncio.create_task(_row(client, pubsub, settings, e, counts, gate)) for e in chosen]
        try:
            rows = list(await asyncio.gather(*tasks))
        except BaseException:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            raise
        finally:
            await pubsub.close()
        log.info("discover.done", objects=len(rows), api_calls=client.call_count, get_topic_calls=len(rows),
                 calls_by_kind=dict(client.calls_by_kind), duration_s=round(time.monotonic() - started, 3))
    return sorted(rows, key=lambda r: r.object.lower())


def _cells(row: Row, terminal: bool) -> list[str]:
    records = "" if row.records is None else f"{row.records:,}" if terminal else str(row.records)
    return [row.object, records, "yes" if row.change_events else "no", "yes" if row.system_modstamp else "no",
            ",".join(row.candidate_keys), row.suggested_mode, row.configured or "", row.note]


def render(rows: list[Row], terminal: bool) -> None:
    """A table on a terminal; else one tab-separated line per object under a header, values whole."""
    if terminal:
        from rich.console import Console
        from rich.table import Table

        table = Table(*COLUMNS)
        table.columns[1].justify = "right"
        for row in rows:
            table.add_row(*_cells(row, True))
        Console().print(table)
        return
    print("\t".join(COLUMNS))
    for row in rows:
        print("\t".join(cell.replace("\t", " ").replace("\n", " ") for cell in _cells(row, False)))


async def discover_command(settings: Settings, as_json: bool, patterns: list[str]) -> int:
    rows = await discover(settings, patterns)
    if as_json:
        print(json.dumps([asdict(r) for r in rows], indent=2, ensure_ascii=False))
    else:
        render(rows, sys.stdout.isatty())
    return 0
