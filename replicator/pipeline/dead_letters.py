"""`replicator dead-letters retry`: apply again what can now be applied.

A dead letter names a record (its key). Retrying fetches that record's current state from Salesforce
(queryAll, so deleted records come too) and applies it through the stream's sink with the version guard:
- applied → resolved; the record no longer exists anywhere in the org → resolved as gone;
- the key step refuses it again (its external key is still empty, or another record holds that key): the key step
  wrote a new dead letter with the record's current values, so the retried one is resolved as superseded and
  counted as failed (one open letter per record, never two, never "applied");
- Postgres refuses it again → attempts + 1, next retry after an exponential wait (1 min … 1 day);
- a dead letter without a record key (an undecodable event) cannot be fetched alone: it stays open and
  the command says to resync the object (`replicator resync OBJECT`), which re-extracts every record.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import structlog

from ..config import Settings
from ..model import RejectedDataError
from ..postgres.store import Store
from ..salesforce.records import is_record_id, records_by_id
from .changes import record_op
from .schema import history_names, object_table

log = structlog.get_logger(__name__)


@dataclass(slots=True)
class RetryResult:
    applied: int = 0
    gone: int = 0
    failed: int = 0
    need_resync: dict[str, int] = field(default_factory=dict)  # object → keyless dead letters
    not_configured: dict[str, int] = field(default_factory=dict)


async def retry(client, store: Store, settings: Settings, object_: str | None = None, ids: list[int] | None = None,
                force: bool = False) -> RetryResult:
    """Retry open dead letters: those due (next retry time passed), or every one named by `ids` / `force`."""
    out = RetryResult()
    rows = await store.open_dead_letters(object_, ids, due_only=not (ids or force))
    by_object: dict[str, list[dict]] = {}
    for r in rows:
        by_object.setdefault(r["object"], []).append(r)
    for name, letters in by_object.items():
        if name not in settings.objects:
            out.not_configured[name] = len(letters)
            continue
        keyless = [r for r in letters if not r["record_key"]]
        if keyless:
            out.need_resync[name] = len(keyless)
        keyed = [r for r in letters if r["record_key"]]
        if keyed:
            await _retry_object(client, store, settings, name, keyed, out)
    return out


async def _retry_object(client, store: Store, settings: Settings, name: str, letters: list[dict], out: RetryResult):
    obj = settings.objects[name]
    describe = await client.describe(name)
    table = object_table(describe, settings.postgres.schema_, obj, history_names(settings, obj))
    spec = table.spec
    sink = store.stream_sink(table)
    key_field = next((c.field for c in spec.columns if c.name == spec.key), "Id")
    keys = sorted({r["record_key"] for r in letters})
    # Stream dead letters name records by Id; backfill ones by the table's key (an external id, for some).
    found = await records_by_id(client, name, spec.fields, [k for k in keys if is_record_id(k)], include_deleted=True)
    if key_field != "Id":
        rest = [k for k in keys if k not in found]
        found.update(await records_by_id(client, name, spec.fields, rest, include_deleted=True, key_field=key_field))
    for letter in letters:
        record = found.get(letter["record_key"])
        if record is None:
            await store.resolve_dead_letters([letter["id"]], "the record no longer exists in Salesforce")
            out.gone += 1
            continue
        try:
            result = await sink.apply([record_op(record, spec, 0)], [], None)
        except RejectedDataError as exc:
            await store.dead_letters_failed_again([letter["id"]], f"retry refused by postgres: {exc}")
            out.failed += 1
            continue
        outcome = result.key_losers.get(str(record.get("Id")))
        if outcome is not None:  # the key step wrote a new letter for the record, with its current values
            await store.resolve_dead_letters([letter["id"]], f"retried: key step said {outcome!r} again; "
                                                             "a new dead letter holds the record's current values")
            out.failed += 1
            continue
        await store.resolve_dead_letters([letter["id"]], "applied on retry")
        out.applied += 1
    log.info("dead_letters.retried", object=name, letters=len(letters))
