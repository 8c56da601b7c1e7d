"""Backfill one object: describe → table → Bulk API 2.0 queryAll job → parallel result pages → Postgres.

Resumable: the job id is stored before any page is downloaded, and each page is recorded in the transaction
that loads it. A restart continues the same job at the pages not yet committed while the job exists
(Salesforce deletes terminal jobs after 7 days,
docs/bulk-rest-oauth.md §2.1); otherwise a new job starts, loaded through the
keyed upsert so rows already present are not duplicated.
"""

from __future__ import annotations

import asyncio
import io
import tempfile
import time
from array import array
from bisect import bisect_left
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from dataclasses import dataclass

import structlog

from ..config import ObjectSettings, Settings
from ..lifecycle import Phase
from ..model import DeadLetter, JobFailedError, JobsFailedError, RejectedDataError, TableSpec, TerminalError
from ..postgres.sink import strip_nul_chunks
from ..postgres.store import Store
from ..retry import retry_transient
from ..salesforce.bulk import BulkClient, ResultPage
from ..salesforce.client import SalesforceClient
from . import rows as rowcheck
from .schema import history_names, object_table, refreshed_columns, soql

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
        info = object_table(describe, self.settings.postgres.schema_, self.obj, history_names(self.settings, self.obj))
        self.sink = self.store.page_sink(info)
        self.spec = info.spec
        refreshed = bool(refreshed_columns(describe, info.spec))  # the extract reads them: it counts as a refresh
        empty = await self.sink.prepare()
        attempts = self.settings.backfill.job_retries + 1
        for attempt in range(1, attempts + 1):
            job_id, mode, page_size = await self._job(empty, resume=attempt == 1)
            if mode != "copy":  # after a failed first load: its history's indexes before any other write
                await self.sink.build_indexes()
            try:
                await self._extract(job_id, mode, page_size)
                if mode == "upsert":  # the table had rows: those the whole extract lacks left the org
                    removed = await self.sink.remove_unseen()
                    if removed:
                        log.warning("backfill.rows_gone", object=self.name, rows=removed, job_id=job_id,
                                    reason="not in the extract: purged or hard-deleted in the org")
                await self.sink.build_indexes()  # a first load's history went without them
                break
            except JobFailedError as exc:
                log.warning("backfill.job_failed", object=self.name, job_id=job_id, attempt=attempt, error=str(exc))
                empty = False  # a new job may overlap what was loaded: go through the upsert
                if attempt == attempts:
                    raise JobsFailedError(
                        f"{self.name}: Bulk query job failed {attempts} times (last {job_id}): {exc}"
                    ) from exc
        await self.store.finish_backfill(self.name, counts_as_refresh=refreshed)
        self.progress.finished = time.monotonic()
        self._on_progress(self.progress)
        return self.progress

    async def _job(self, table_empty: bool, resume: bool) -> tuple[str, str, int]:
        """The job to extract from: the stored one if it still exists, else a new one (recorded first)."""
        st = await self.store.get_object(self.name)
        if resume and st and st.phase == Phase.BACKFILLING and st.job_id:
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
        if mode == "copy":
            await self.sink.end_versions()
        await self.store.start_job(self.name, job.id, mode, page_size, job.created_date)
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
        started = time.monotonic()

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
                 dead_letters=dead, rows_done=self.progress.rows_done,
                 duration_s=round(time.monotonic() - started, 4))  # download and load, retries included
        self._on_progress(self.progress)

    async def _load_page_checked(self, page: ResultPage, mode: str) -> tuple[int, int]:
        """Download the page again, check every row, load the good ones, dead-letter the rest (those the checks
        catch here, and those Postgres still refuses: `PageSink.load_checked`)."""
        with tempfile.SpooledTemporaryFile(max_size=_SPOOL_BYTES, mode="w+b") as spool:
            async with self.bulk.open_page(page) as stream:
                async for chunk in strip_nul_chunks(stream.chunks()):  # checked as COPY will receive it
                    spool.write(chunk)
            spool.seek(0)
            with CheckedPage(self.name, self.spec, page) as good:
                dead = await asyncio.to_thread(self._split_page, spool, good)
                return await self.sink.load_checked(page.job_id, page.locator, mode, good, dead)

    def _split_page(self, spool, good: CheckedPage) -> list[DeadLetter]:
        text = io.TextIOWrapper(spool, encoding="utf-8", errors="replace", newline="")
        reader = rowcheck.page_rows(text)
        header = next(reader, [])
        try:
            rowcheck.check_header(header, self.spec)
        except ValueError as exc:
            raise TerminalError(f"{self.name}: {exc}") from exc
        good.start(header)
        dead: list[DeadLetter] = []
        for row, reason in rowcheck.split_rows(reader, self.spec):
            if reason is None:
                good.append(row)
            else:
                dead.append(good.dead_letter(row, reason))
        text.detach()
        return dead


class CheckedPage:
    """The rows of a page that passed the checks, spooled as CSV (the rows, and each row's key with its index) with
    each row's offset (8 bytes a row in memory), so that `PageSink.load_checked` can load any range of them again
    and turn any one into a dead letter. A context manager: the spools are removed on exit."""

    def __init__(self, name: str, spec: TableSpec, page: ResultPage):
        self.name, self.page = name, page
        self.key_index = [c.name for c in spec.columns].index(spec.key)
        self.encoder = rowcheck.RowEncoder()
        self.rows = tempfile.SpooledTemporaryFile(max_size=_SPOOL_BYTES, mode="w+b")
        self.keys = tempfile.SpooledTemporaryFile(max_size=_SPOOL_BYTES, mode="w+b")
        self.offsets = array("q", [0])
        self.header: list[str] = []
        self.header_line = b""

    def __enter__(self) -> CheckedPage:
        return self

    def __exit__(self, *exc_info) -> None:
        self.rows.close()
        self.keys.close()

    def start(self, header: list[str]) -> None:
        self.header, self.header_line = header, self.encoder.encode(header)

    @property
    def count(self) -> int:
        return len(self.offsets) - 1

    def append(self, row: list[str]) -> None:
        line = self.encoder.encode(row)
        self.keys.write(self.encoder.encode([row[self.key_index], str(self.count)]))
        self.rows.write(line)
        self.offsets.append(self.offsets[-1] + len(line))

    async def chunks(self, start: int, stop: int, skip: Sequence[int] = ()) -> AsyncIterator[bytes]:
        """CSV of rows [start, stop) but those in `skip` (sorted), header first. Seeks before every read, so
        attempts never share a file position."""
        yield self.header_line
        at = bisect_left(skip, start)
        while start < stop:
            end = skip[at] if at < len(skip) and skip[at] < stop else stop
            for chunk in _read(self.rows, self.offsets[start], self.offsets[end]):
                yield chunk
            start, at = end + 1, at + 1

    async def key_chunks(self) -> AsyncIterator[bytes]:
        for chunk in _read(self.keys, 0, self.keys.seek(0, io.SEEK_END)):
            yield chunk

    def refused(self, index: int, reason: str) -> DeadLetter:
        line = b"".join(_read(self.rows, self.offsets[index], self.offsets[index + 1]))
        return self.dead_letter(rowcheck.decode_row(line), reason)

    def dead_letter(self, row: list[str], reason: str) -> DeadLetter:
        """A row of the page that cannot load: its raw values, where it came from, and why."""
        return DeadLetter(
            object=self.name,
            reason=reason,
            key=row[self.key_index] if len(row) > self.key_index else None,
            payload={"header": self.header, "row": row, "job_id": self.page.job_id, "locator": self.page.locator},
        )


def _read(file, start: int, end: int, size: int = 1 << 20) -> Iterator[bytes]:
    """Bytes [start, end) of a spool, in pieces of at most `size`."""
    while start < end:
        file.seek(start)
        piece = file.read(min(size, end - start))
        if not piece:
            raise OSError(f"spool ended at byte {start} of {end}")
        start += len(piece)
        yield piece


def _first_leaf(group: BaseExceptionGroup) -> BaseException:
    exc: BaseException = group
    while isinstance(exc, BaseExceptionGroup):
        exc = exc.exceptions[0]
    return exc

