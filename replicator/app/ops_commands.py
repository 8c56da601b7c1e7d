"""Operator commands against the state tables: resync, dead-letters list | retry | drop, refresh.

They work whether or not a service is running: a resync request is a flag the running service (or the next
one started) picks up; dead letters are rows.
"""

from __future__ import annotations

import orjson
from rich.console import Console
from rich.table import Table

from ..config import Settings
from ..model import ReplicatorError
from ..observe.logs import fatal
from ..pipeline import dead_letters
from .runtime import in_order, objects_at_once, open_store, salesforce_client


async def resync_command(settings: Settings, names: list[str]) -> int:
    """Raise the resync flag of objects extracted before; exit 1 (one line) when one never was: there is nothing
    to extract again, and its first extract is the backfill's (`replicator backfill` or `run`)."""
    async with open_store(settings) as store:
        answers = {n: await store.request_resync(n) for n in names}
    for name, answer in answers.items():
        if answer == "requested":
            print(f"{name}: resync requested; a running service starts it within "
                  f"{settings.service.control_poll_s:g} s, otherwise the next `replicator run` does")
    refused = [f"{n} never ran here (no state)" if a == "unknown" else f"{n} has never been extracted ({a})"
               for n, a in answers.items() if a != "requested"]
    if refused:
        fatal(f"{'; '.join(refused)}: `replicator backfill` or `replicator run` extracts it first", 1)
        return 1
    return 0


async def dead_letters_list(settings: Settings, object_: str | None, as_json: bool, limit: int) -> int:
    async with open_store(settings, migrate=False) as store:
        rows = await store.open_dead_letters(object_, limit=limit)
    if as_json:
        print(orjson.dumps(rows, option=orjson.OPT_INDENT_2, default=str).decode())
        return 0
    table = Table("id", "object", "key", "source", "attempts", "next retry", "first seen", "reason")
    for r in rows:
        table.add_row(str(r["id"]), r["object"], r["record_key"] or "", r["source"], str(r["attempts"]),
                      r["next_retry_at"].isoformat(timespec="seconds") if r["next_retry_at"] else "now",
                      r["first_seen"].isoformat(timespec="seconds"), r["reason"][:80])
    Console().print(table)
    print(f"{len(rows)} open dead letter(s)" + (f" (first {limit})" if len(rows) == limit else ""))
    return 0


async def dead_letters_retry(settings: Settings, object_: str | None, ids: list[int], force: bool) -> int:
    async with salesforce_client(settings) as client, open_store(settings) as store:
        result = await dead_letters.retry(client, store, settings, object_, ids or None, force)
    print(f"applied {result.applied}, record gone from Salesforce {result.gone}, failed again {result.failed}")
    for name, count in result.need_resync.items():
        print(f"{name}: {count} dead letter(s) without a record key (undecodable events): "
              f"run `replicator resync {name}` to recover every record, then `replicator dead-letters drop "
              f"--object {name}`")
    for name, count in result.not_configured.items():
        print(f"{name}: {count} dead letter(s) for an object that is not configured: left as they are")
    return 1 if result.failed else 0


async def dead_letters_drop(settings: Settings, object_: str | None, ids: list[int]) -> int:
    async with open_store(settings) as store:
        count = await store.drop_dead_letters(object_, ids or None)
    print(f"dropped {count} dead letter(s) (kept in {settings.state_schema}.dead_letters as resolved)")
    return 0


async def refresh_command(settings: Settings, names: list[str]) -> int:
    """Refresh the columns change events never carry, once, for each object (pipeline/refresh.py), `objects_at_once`
    at a time; beside a running service or not. Exit 1 when any object's refresh failed (the others still run)."""
    from ..pipeline.refresh import RefreshResult, refresh_object

    failed = 0
    async with salesforce_client(settings) as client, open_store(settings) as store:
        async def one(name: str) -> RefreshResult | ReplicatorError:
            try:
                return await refresh_object(client, store, settings, name)
            except ReplicatorError as exc:
                return exc

        async for name, r in in_order(names, one, objects_at_once(settings)):  # the lines in the objects' order
            if isinstance(r, ReplicatorError):
                failed += 1
                print(f"{name}: refresh failed: {r}")
                await store.record_refresh_error(name, f"{type(r).__name__}: {r}")
                continue
            if not r.columns:
                print(f"{name}: nothing to refresh (no formula field, LastActivityDate or LastViewedDate)")
                continue
            print(f"{name}: {r.rows_compared:,} rows compared, {r.rows_changed:,} changed, {r.rows_skipped:,} "
                  f"skipped (written after the job began) in {r.duration_s:.1f} s ({', '.join(r.columns)})")
    return 1 if failed else 0
