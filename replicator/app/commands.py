"""The one-shot commands: backfill, verify, status. Each returns the process exit code."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import sys
from collections.abc import Iterator

import orjson
import structlog
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

from ..config import DEFAULT_ORG, Settings
from ..model import ConfigError, ReplicatorError, ServiceConfigError, Stopped
from ..observe.logs import fatal
from ..pipeline.backfill import Backfill
from ..pipeline.backfill import Progress as BackfillProgress
from ..pipeline.history import prune_history
from ..pipeline.stopping import until_stopped
from ..pipeline.verify import verify_history, verify_object
from ..postgres.compare import Diff, Repair
from .runtime import in_order, objects_at_once, open_store, salesforce_client

log = structlog.get_logger(__name__)


class _Bars:
    """Progress bars per object (rows, rows/s, ETA) on a terminal; nothing otherwise (the logs suffice)."""

    def __init__(self, names: list[str]):
        self.enabled = sys.stderr.isatty()
        self.bars = Progress(
            TextColumn("{task.description:<14}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[rate]:>10} rows/s"),
            TimeRemainingColumn(),
            console=Console(stderr=True),
            disable=not self.enabled,
        )
        self.tasks = {n: self.bars.add_task(n, total=None, rate="-") for n in names}

    def update(self, p: BackfillProgress) -> None:
        self.bars.update(
            self.tasks[p.object], completed=p.rows_done, total=p.rows_expected, rate=f"{p.rows_per_s:,.0f}"
        )


async def run_backfills(settings: Settings, names: list[str], on_progress=None,
                        stop: asyncio.Event | None = None) -> dict[str, BackfillProgress | BaseException]:
    """Backfill objects concurrently; one failing object does not stop the others. When `stop` is set, every
    backfill is cancelled where it stands: the page being loaded rolls back, the committed ones stay, and the next
    run resumes the same job at the pages not committed (its result is `Stopped`)."""
    results: dict[str, BackfillProgress | BaseException] = {}
    stop = stop or asyncio.Event()
    async with salesforce_client(settings) as client, open_store(settings) as store:

        async def one(name: str) -> None:
            job = Backfill(client, store, settings, name, settings.objects[name], on_progress)
            try:
                results[name] = await until_stopped(stop, job.run())
            except Stopped as exc:  # resumable: neither a failure nor an error to store
                results[name] = exc
            except Exception as exc:  # one failing object does not stop the others
                results[name] = exc
                if isinstance(exc, ReplicatorError):
                    log.error("backfill.failed", object=name, error=str(exc))
                else:
                    log.exception("backfill.failed", object=name, error=f"{type(exc).__name__}: {exc}")
                if not isinstance(exc, ServiceConfigError):  # the credentials or the database: not the object's
                    await store.fail_object(name, f"{type(exc).__name__}: {exc}")

        await asyncio.gather(*(one(n) for n in names))
    return results


@contextlib.contextmanager
def _stop_on_signals(stop: asyncio.Event, received: list[signal.Signals]) -> Iterator[None]:
    """SIGTERM and SIGINT set `stop` (and are recorded in `received`). A handler of our own also makes the process
    stop when it is PID 1 in a container, where the kernel ignores signals that have no handler."""
    loop = asyncio.get_running_loop()

    def on_signal(sig: signal.Signals) -> None:
        received.append(sig)
        stop.set()

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, on_signal, sig)
    try:
        yield
    finally:
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)


async def backfill_command(settings: Settings, names: list[str]) -> int:
    """Exit 0 when every object is complete, 2 when one failed on its configuration (an error no retry fixes: refused
    credentials, an object Salesforce does not know, a missing Postgres privilege), 1 when one failed otherwise,
    128 + the signal's number (143 for SIGTERM, 130 for SIGINT) when a signal stopped it: the committed pages stay
    and the next run resumes the same jobs."""
    bars = _Bars(names)
    stop, received = asyncio.Event(), []
    with bars.bars, _stop_on_signals(stop, received):
        results = await run_backfills(settings, names, bars.update, stop)
    failed = {n: r for n, r in results.items() if isinstance(r, BaseException) and not isinstance(r, Stopped)}
    for name, r in results.items():
        if not isinstance(r, BaseException):
            log.info("backfill.done", object=name, rows=r.rows_done, rows_per_s=round(r.rows_per_s),
                     load_s=round(r.load_s, 3), seconds=round(r.finished - r.started, 3),
                     dead_letters=r.dead_letters, resumed_pages=r.resumed_pages, job_id=r.job_id)
    if failed:  # one line: a configuration error first, it decides the exit code
        name, exc = next(((n, e) for n, e in failed.items() if isinstance(e, ConfigError)), next(iter(failed.items())))
        code = 2 if isinstance(exc, ConfigError) else 1
        fatal(f"backfill of {name} failed: {exc}", code)
        return code
    if received:
        stopped = sorted(n for n, r in results.items() if isinstance(r, Stopped))
        log.warning("backfill.stopped", signal=received[0].name, objects=stopped,
                    action="committed pages kept; run `replicator backfill` again to resume at the next page")
        return 128 + received[0]
    return 0


async def prune_command(settings: Settings, names: list[str]) -> int:
    """`replicator verify --prune`: each object's history pruned to `history.retention_days`."""
    async with salesforce_client(settings) as client, open_store(settings) as store:
        for name in names:
            pruned = await prune_history(client, store, settings, name)
            if pruned is not None:
                print(f"{name}: history: {pruned} versions older than {settings.history.retention_days:g} days pruned")
    return 0


async def verify_command(settings: Settings, names: list[str], repair: bool = False, history: bool = False) -> int:
    """`replicator verify`: each object's extract compared with its table (`objects_at_once` at a time, the
    lines in the objects' order). Exit 1 when any differs."""
    equal = True
    async with salesforce_client(settings) as client, open_store(settings, migrate=repair) as store:
        async def one(name: str) -> tuple[dict | None, Diff, Repair | None]:
            found = await verify_history(client, store, settings, name) if history else None
            return found, *await verify_object(client, store, settings, name, repair=repair)

        async for name, (found, diff, fixed) in in_order(names, one, objects_at_once(settings)):
            if found is not None:
                ok = not any(found.values())
                equal &= ok
                print(f"{name}: history: current versions not the row {len(found['current'])}, overlapping or "
                      f"broken intervals {len(found['intervals'])}" + ("  (equal)" if ok else ""))
                for kind, keys in found.items():
                    if keys:
                        print(f"  {kind}: {', '.join(keys)}")
            if fixed is not None:
                print(f"{name}: repaired: {fixed.written} rows written from Salesforce, {fixed.deleted} rows "
                      f"Salesforce does not have deleted, {fixed.kept_newer} rows newer than the extract kept")
            equal &= diff.equal
            line = f"{name}: missing {diff.missing}, extra {diff.extra}, different {diff.different}"
            print(line + ("  (equal)" if diff.equal else ""))
            for kind, keys in diff.examples.items():
                if kind != "unkeyed":
                    print(f"  {kind}: {', '.join(keys)}")
            if diff.unkeyed:
                print(f"  unkeyed {diff.unkeyed}: records whose key field is empty in Salesforce cannot be in the table "
                      f"(not counted as missing; each has a dead letter): {', '.join(diff.examples['unkeyed'])}")
            if diff.missing_columns:
                print(f"  columns missing in Postgres: {', '.join(diff.missing_columns)}")
    return 0 if equal else 1


async def status_command(orgs: Settings | list[Settings], as_json: bool) -> int:
    """Every selected org's objects (rows carry `org`), read from each org's state schema."""
    if isinstance(orgs, Settings):
        orgs = orgs.for_orgs()
    rows: list[dict] = []
    replicas: list[tuple[str, dict]] = []
    for settings in orgs:
        async with open_store(settings, migrate=False) as store:
            rows += [{"org": settings.org, **r} for r in await store.object_rows()]
            replicas += [(settings.org, r) for r in await store.replicas()]
    for r in rows:
        r["replay_id"] = r["replay_id"].hex() if r["replay_id"] else None
        r["running"] = r["held_by"] is not None  # a live process holds it (docs/operating.md "One writer")
    if as_json:
        print(orjson.dumps(rows, option=orjson.OPT_INDENT_2, default=str).decode())
        return 0
    several = any(s.org != DEFAULT_ORG for s in orgs)  # a deployment of [orgs.<name>]: say whose each row is
    table = Table(*(["org"] if several else []), "object", "phase", "held by", "mode", "rows", "expected",
                  "events applied", "lag s", "checkpoint age s", "last event committed", "dead letters", "resyncs",
                  "replay id", "last refresh", "last error")
    for r in rows:
        phase = r["phase"] + (" (resync requested)" if r["resync_requested"] else "")
        phase += "" if r["running"] else " (not running)"  # the stored phase, but no live process holds it
        committed = r["last_event_committed_at"]
        table.add_row(
            *([r["org"]] if several else []), r["object"], phase, _held(r), _mode(r), f"{r['rows_loaded']:,}", f"{r['rows_expected'] or 0:,}",
            f"{r['events_applied'] or 0:,}", _num(r["lag_s"]), _num(r["checkpoint_age_s"]),
            committed.isoformat(timespec="seconds") if committed else "", str(r["dead_letters"]),
            str(r["resyncs"]), r["replay_id"] or "", _refreshed(r), (r["last_error"] or "")[:60],
        )
    Console().print(table)
    if replicas:  # docs/replicas.md
        print("replicas: " + ", ".join(f"{r['replica']} (holds {r['held']} of {r['units']} units"
                                       + (f" of {org}" if several else "") + f", renewed {r['age_s']:.1f} s ago)"
                                       for org, r in replicas))
    return 0


def _held(row: dict) -> str:
    """The process that holds the object and its fence (a channel's member: through the channel's lease)."""
    if row["held_by"] is None:
        return ""
    via = f" via {row['held_unit'].removeprefix('channel:')}" if row["held_unit"].startswith("channel:") else ""
    return f"{row['held_by']} #{row['fence']}{via}, renewed {row['lease_age_s']:.1f} s ago"


def _mode(row: dict) -> str:
    """cdc, or poll with its position (SystemModstamp of the newest record read)."""
    if row.get("mode") != "poll" or row.get("poll_systemmodstamp") is None:
        return row.get("mode") or ""
    return f"poll @ {row['poll_systemmodstamp'].isoformat(timespec='seconds')}"


def _refreshed(row: dict) -> str:
    """When the last refresh finished and how many rows it changed, or its failure."""
    if row.get("refresh_error"):
        return f"failed: {row['refresh_error'][:40]}"
    if row.get("refreshed_at") is None:
        return ""
    return f"{row['refreshed_at'].isoformat(timespec='seconds')} ({row['refresh_rows_changed']:,} changed)"


def _num(value: float | None) -> str:
    return "" if value is None else f"{value:,.3g}" if value < 10 else f"{value:,.0f}"
