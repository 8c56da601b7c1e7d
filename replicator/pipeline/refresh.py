"""The refresh of the columns change events never carry (issue 12 §2; docs/refresh.md).

Formula (calculated) fields, LastActivityDate and LastViewedDate change in Salesforce without a change event and
without a new SystemModstamp ("Change Event Body Fields", Change Data Capture Developer Guide,
https://developer.salesforce.com/docs/atlas.en-us.change_data_capture.meta/change_data_capture/cdc_event_fields_body.htm;
docs/salesforce-coverage.md §2), so neither the stream nor a poll round's keyset on SystemModstamp sees them change.
Only a comparison of values does: `refresh_object` extracts Id plus those columns with a Bulk API 2.0 queryAll job,
streams its CSV pages into a staging table with COPY, and writes the rows whose values differ with one UPDATE
(postgres/refresh.py, which also says how a refresh racing with the stream is settled).

`RefreshSchedule` runs it for one object inside the service, beside its stream or its poll rounds: after the object
reaches STREAMING, every `objects.X.formula_refresh_s` counted from the last refresh stored (at once when none is),
so a restart does not refresh again. A failure is retried with backoff and never touches the stream.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import structlog

from ..config import Settings
from ..lifecycle import Phase
from ..model import Stopped
from ..observe.metrics import Metrics
from ..postgres.store import Store
from ..retry import backoff_delay, retry_transient, stop_ends_waits
from ..salesforce.bulk import BulkClient
from ..salesforce.client import SalesforceClient
from .schema import history_names, object_table, refreshed_columns
from .stopping import sleep_or_stop, until_stopped

log = structlog.get_logger(__name__)

# After a failed refresh: 1 s doubling to 15 min, full jitter (retry.backoff_delay). A refresh is a Bulk job; a
# minute's ceiling (the object supervisor's) would start ~1,400 jobs a day against a lasting failure, of the 10,000
# query jobs a day Salesforce allows (docs/bulk-rest-oauth.md §2.1).
RETRY_BASE_S = 1.0
RETRY_CAP_S = 900.0


@dataclass(slots=True)
class RefreshResult:
    object: str
    columns: list[str] = field(default_factory=list)  # empty: the object has nothing to refresh (no job ran)
    job_id: str | None = None
    rows_compared: int = 0
    rows_changed: int = 0
    rows_skipped: int = 0  # differing, but written after the job began: the next refresh compares them again
    duration_s: float = 0.0


async def refresh_object(client: SalesforceClient, store: Store, settings: Settings, name: str) -> RefreshResult:
    """Refresh one object once. Safe to run beside the service and to run again."""
    began = time.monotonic()
    describe = await client.describe(name)
    table = object_table(describe, settings.postgres.schema_, settings.objects[name], history_names(settings, settings.objects[name]))
    columns = refreshed_columns(describe, table.spec)
    result = RefreshResult(object=name, columns=columns)
    if not columns:
        log.info("refresh.nothing", object=name, reason="no formula field, LastActivityDate or LastViewedDate")
        return result
    await store.page_sink(table).prepare()  # a formula field added since the backfill becomes a column here
    started_at = await store.now()  # before the job: rows written from now on are newer than nothing it holds
    bulk = BulkClient(client, poll_max=settings.backfill.poll_max_s)
    fields = [table.spec.column(c).field for c in columns]
    job = await bulk.create_query_job(f"SELECT Id, {', '.join(fields)} FROM {name}", all_rows=True)
    result.job_id = job.id
    await bulk.wait_for_job(job.id)
    async with store.refresh(table, columns) as staged:
        # One connection holds the staging table, so pages load one after another (the extract is narrow).
        async for page in bulk.result_pages(job.id, max_records=settings.backfill.page_size):
            async def load(page=page) -> int:
                async with bulk.open_page(page) as stream:
                    return await staged.load(stream.chunks())

            await retry_transient(load, what=f"{name} refresh page {page.locator or 'first'}")
        result.duration_s = time.monotonic() - began
        result.rows_compared, result.rows_changed, result.rows_skipped = await staged.apply(
            started_at, job.id, result.duration_s)
    log.info("refresh.done", object=name, columns=columns, job_id=job.id, rows_compared=result.rows_compared,
             rows_changed=result.rows_changed, rows_skipped=result.rows_skipped,
             duration_s=round(result.duration_s, 3))
    return result


def seconds_until_due(finished_at: float | None, interval: float, now: float) -> float:
    """Seconds until an object's next refresh (epoch seconds in): `interval` after the last one stored, so a
    restart does not refresh again; at once when none is stored (a table made before its formula columns were
    replicated has them empty until then)."""
    return 0.0 if finished_at is None else max(0.0, finished_at + interval - now)


async def _no_gate(name: str) -> None:
    """The API-budget gate's place (`salesforce.api_reserve`, issue 12 §4): a gate waits here while the org's
    remaining daily API requests are below the reserve (the service passes `Service._budget_gate`). This default,
    for a refresh outside the service, starts a refresh when it is due."""


class RefreshSchedule:
    """The scheduled refresh of one object inside the service (see the module docstring). `run()` returns when
    the service stops; nothing it does raises into the service."""

    def __init__(self, client: SalesforceClient, store: Store, settings: Settings, name: str,
                 metrics: Metrics | None = None, gate: Callable[[str], Awaitable[None]] = _no_gate):
        self.client, self.store, self.settings, self.name = client, store, settings, name
        self.interval = settings.objects[name].formula_refresh_s
        self.metrics = metrics or Metrics()
        self.gate = gate
        self.failures = 0
        self.runs = 0

    @stop_ends_waits
    async def run(self, stop: asyncio.Event) -> None:
        if self.interval <= 0:
            return
        while not stop.is_set():
            try:
                if not await self._wait_until_due(stop):
                    return
                await self.gate(self.name)  # the one check before a refresh starts (API budget)
                if stop.is_set():
                    return
                if not await self._refresh_once(stop):  # nothing to refresh: look again an interval later
                    await sleep_or_stop(stop, self.interval)
                self.failures = 0
            except Stopped:
                return
            except Exception as exc:
                await self._failed(exc, stop)

    async def _wait_until_due(self, stop: asyncio.Event) -> bool:
        """Wait until the object streams (or polls) and its refresh is due; False when the service stops first."""
        poll_s = self.settings.service.control_poll_s
        while not stop.is_set():
            st = await self.store.get_object(self.name)
            if st is not None and st.phase == Phase.STREAMING:
                last = await self.store.last_refresh(self.name)
                finished = last["finished_at"].timestamp() if last and last["finished_at"] else None
                health = self.metrics.object(self.name)
                if finished is not None:
                    health.refreshed_at = finished
                now = time.time()
                wait = seconds_until_due(finished, self.interval, now)
                health.refresh_due_at = now + wait
                if wait <= 0:
                    return True
                await sleep_or_stop(stop, min(wait, max(poll_s, 60.0)))  # a resync meanwhile is seen again
            else:
                await sleep_or_stop(stop, poll_s)
        return False

    async def _refresh_once(self, stop: asyncio.Event) -> bool:
        """One refresh; False when the object has no column to refresh (a formula field may be added later). A stop
        cancels it (its UPDATE rolls back; nothing of it is committed but whole)."""
        result = await until_stopped(stop, refresh_object(self.client, self.store, self.settings, self.name))
        self.runs += 1
        if not result.columns:
            return False
        self.metrics.object(self.name).refreshed_at = time.time()
        if result.rows_changed:
            self.metrics.refresh_rows_changed.labels(object=self.name).inc(result.rows_changed)
        return True

    async def _failed(self, exc: Exception, stop: asyncio.Event) -> None:
        self.failures += 1
        error = f"{type(exc).__name__}: {exc}"
        delay = backoff_delay(exc, self.failures, base=RETRY_BASE_S, cap=RETRY_CAP_S)
        self.metrics.errors.labels(object=self.name, kind=type(exc).__name__).inc()
        log.error("refresh.failed", object=self.name, error=error, retry_in_s=round(delay, 1), failures=self.failures,
                  action="the stream goes on; the refresh is tried again")
        try:
            await self.store.record_refresh_error(self.name, error)
        except Exception as again:  # the database may be what failed: the log line above says it all
            log.warning("refresh.error_not_recorded", object=self.name, error=f"{type(again).__name__}: {again}")
        await sleep_or_stop(stop, delay)
