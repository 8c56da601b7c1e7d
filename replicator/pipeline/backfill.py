"""Backfill one object: describe → table → Bulk API 2.0 queryAll job → parallel result pages → Postgres.

Resumable: the job id is stored before any page is downloaded, and each page is recorded in the transaction
that loads it. A restart continues the same job at the pages not yet committed while the job exists
(Salesforce deletes terminal jobs after 7 days,
docs/salesforce-bulk-rest-oauth.md §2.1); otherwise a new job starts, loaded through the
keyed upsert so rows already present are not duplicated.
"""

from __future__ import annotations

import asyncio
import io
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass

import structlog

from ..config import ObjectSettings, Settings
from ..model import DeadLetter, JobFailedError, RejectedDataError, TerminalError
from ..postgres.sink import strip_nul_chunks
from ..postgres.store import Store
from ..retry import retry_transient
from ..salesforce.bulk import BulkClient, ResultPage
from ..salesforce.client import SalesforceClient
from . import rows as rowcheck
from .schema import object_table, soql

log = structlog.get_logger(__name__)

# Largest part of a page kept in memory on the careful path; the rest spills to a temporary file.
_SPOOL_BYTES = 16 * 1024 * 1024


@dataclass(slots=True)
class Progress:
    object: str
    rows_done: int = 0
    rows_expected: int | None = None
    pages_done: int = 0
    dead_letters: int = 0
    started: float = 0.0
    finished: float | None = None
    job_id: str | None = None
    resumed_pages: int = 0
    load_started: float | None = None  # when the job completed and pages began to download

    @property
    def load_s(self) -> float:
        """Seconds spent downloading and loading pages (after the job completed)."""
        end = self.finished or time.monotonic()
        return end - (self.load_started or self.started)

    @property
    def rows_per_s(self) -> float:
        end = self.finished or time.monotonic()
        return self.rows_done / max(end - self.started, 1e-9)


ProgressCallback = Callable[[Progress], None]


class Backfill:
    """Runs the backfill of one object end to end. `run()` is safe to call again after a crash."""

    def __init__(
        self,
        client: SalesforceClient,
        store: Store,
        settings: Settings,
        name: str,
        obj: ObjectSettings,
        on_progress: ProgressCallback | None = None,
    ):
        self.client = client
        self.bulk = BulkClient(client, poll_max=settings.backfill.poll_max_s)
        self.store = store
        self.settings = settings
        self.name = name
        self.obj = obj
        self.progress = Progress(object=name)
        self._on_progress = on_progress or (lambda p: None)

    async def run(self) -> Progress:
        self.progress.started = time.monotonic()
        describe = await self.client.describe(self.name)
        info = object_table(describe, self.settings.postgres.schema_, self.obj)
        self.sink = self.store.page_sink(info)
        self.spec = info.spec
        empty = await self.sink.prepare()
        attempts = self.settings.backfill.job_retries + 1
        for attempt in range(1, attempts + 1):
            job_id, mode, page_size = await self._job(empty, resume=attempt == 1)
            try:
                await self._extract(job_id, mode, page_size)
                break
            except JobFailedError as exc:
                log.warning("backfill.job_failed", object=self.name, job_id=job_id, attempt=attempt, error=str(exc))
                empty = False  # a new job may overlap what was loaded: go through the upsert
                if attempt == attempts:
                    raise TerminalError(
                        f"{self.name}: Bulk query job failed {attempts} times (last {job_id}): {exc}"
                    ) from exc
        await self.store.finish_backfill(self.name)
        self.progress.finished = time.monotonic()
        self._on_progress(self.progress)
        return self.progress

    async def _job(self, table_empty: bool, resume: bool) -> tuple[str, str, int]:
        """The job to extract from: the stored one if it still exists, else a new one (recorded first)."""
        st = await self.store.get_object(self.name)
        if resume and st and st.phase == "BACKFILLING" and st.job_id:
            try:
                job = await self.bulk.get_job(st.job_id)
            except TerminalError as exc:
                if exc.code != "NOT_FOUND":
                    raise
                log.info("backfill.job_gone", object=self.name, job_id=st.job_id)
            else:
                if job.state not in ("Failed", "Aborted"):
                    log.info("backfill.resume", object=self.name, job_id=job.id, pages_done=st.pages_done)
                    self.progress.rows_done = st.rows_loaded
                    self.progress.pages_done = st.pages_done
                    return job.id, st.load_mode or "upsert", st.page_size or self.settings.backfill.page_size
            table_empty = False
        page_size = self.settings.backfill.page_size
        job = await self.bulk.create_query_job(soql(self.spec), all_rows=True)
        mode = "copy" if table_empty else "upsert"
        await self.store.start_job(self.name, job.id, mode, page_size)
        log.info("backfill.job_created", object=self.name, job_id=job.id, load_mode=mode)
        return job.id, mode, page_size

    async def _extract(self, job_id: str, mode: str, page_size: int) -> None:
        self.progress.job_id = job_id
        job = await self.bulk.wait_for_job(job_id)
        self.progress.load_started = time.monotonic()
        self.progress.rows_expected = job.number_records_processed
        await self.store.set_expected(self.name, job.number_records_processed)
        done = await self.store.committed_pages(self.name, job_id)
        self.progress.resumed_pages = len(done)
        self._on_progress(self.progress)
        slots = asyncio.Semaphore(self.settings.backfill.parallel_pages)

        async def load(page: ResultPage) -> None:
            try:
                await self._load_page(page, mode)
            finally:
                slots.release()

        try:
            async with asyncio.TaskGroup() as tg:
                async for page in self.bulk.result_pages(job_id, max_records=page_size):
                    if page.locator in done:
                        continue
                    await slots.acquire()
                    tg.create_task(load(page))
        except BaseExceptionGroup as group:
            raise _first_leaf(group) from group

    async def _load_page(self, page: ResultPage, mode: str) -> None:
        async def fast() -> int:
            async with self.bulk.open_page(page) as stream:
                return await self.sink.load_page(page.job_id, page.locator, mode, stream.chunks())

        try:
            rows = await retry_transient(fast, what=f"{self.name} page {page.locator or 'first'}")
            dead = 0
        except RejectedDataError as exc:
            log.warning("backfill.page_rejected", object=self.name, locator=page.locator, error=str(exc))
            rows, dead = await retry_transient(lambda: self._load_page_checked(page, mode), what="careful page")
        self.progress.rows_done += rows
        self.progress.pages_done += 1
        self.progress.dead_letters += dead
        log.info("backfill.page", object=self.name, job_id=page.job_id, locator=page.locator, rows=rows,
                 dead_letters=dead, rows_done=self.progress.rows_done)
        self._on_progress(self.progress)

    async def _load_page_checked(self, page: ResultPage, mode: str) -> tuple[int, int]:
        """Download the page again, check every row, load the good ones, dead-letter the rest."""
        with tempfile.SpooledTemporaryFile(max_size=_SPOOL_BYTES, mode="w+b") as spool:
            async with self.bulk.open_page(page) as stream:
                async for chunk in strip_nul_chunks(stream.chunks()):  # checked as COPY will receive it
                    spool.write(chunk)
            spool.seek(0)
            with tempfile.SpooledTemporaryFile(max_size=_SPOOL_BYTES, mode="w+b") as good:
                dead = await asyncio.to_thread(self._split_page, spool, good, page)
                good.seek(0)
                rows = await self.sink.load_checked(page.job_id, page.locator, mode, _read_chunks(good), dead)
        return rows, len(dead)

    def _split_page(self, spool, good_file, page: ResultPage) -> list[DeadLetter]:
        text = io.TextIOWrapper(spool, encoding="utf-8", errors="replace", newline="")
        out = io.TextIOWrapper(good_file, encoding="utf-8", newline="")
        reader = rowcheck.page_rows(text)
        header = next(reader, [])
        try:
            rowcheck.check_header(header, self.spec)
        except ValueError as exc:
            raise TerminalError(f"{self.name}: {exc}") from exc
        good = rowcheck.csv_writer(out)
        good.writerow(header)
        dead: list[DeadLetter] = []
        key_at = [c.name for c in self.spec.columns].index(self.spec.key)
        for row, reason in rowcheck.split_rows(reader, self.spec):
            if reason is None:
                good.writerow(row)
            else:
                dead.append(
                    DeadLetter(
                        object=self.name,
                        reason=reason,
                        key=row[key_at] if len(row) > key_at else None,
                        payload={"header": header, "row": row, "job_id": page.job_id, "locator": page.locator},
                    )
                )
        text.detach()
        out.flush()
        out.detach()
        return dead


def _first_leaf(group: BaseExceptionGroup) -> BaseException:
    exc: BaseException = group
    while isinstance(exc, BaseExceptionGroup):
        exc = exc.exceptions[0]
    return exc


async def _read_chunks(fh, size: int = 1 << 20):
    while chunk := fh.read(size):
        yield chunk
