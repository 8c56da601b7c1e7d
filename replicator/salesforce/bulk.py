"""Bulk API 2.0 query jobs (docs/bulk-rest-oauth.md §1): create, poll, list result pages, stream
each page's CSV.

Pages are streamed: `PageStream.chunks()` yields decompressed bytes as they arrive, so a page is never held in
memory (docs/design.md, Contracts 8). Every failure leaves this module as a `model` error; a network error in
the middle of a page is a `TransientError`, and the caller re-fetches the whole page (locators are
re-fetchable, docs/bulk-rest-oauth.md §1.5).
"""

from __future__ import annotations

import datetime as dt
import time
import zlib
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit

import httpx
import orjson
import structlog

from replicator.model import BulkJob, JobFailedError, ResultPage, TerminalError, TransientError
from replicator.retry import pause
from replicator.salesforce.client import SalesforceClient
from replicator.salesforce.errors import HTTPX_ERRORS, map_httpx_error

log = structlog.get_logger(__name__)

# Polling: 0.5 s first (airbyte's first poll, docs/bulk-rest-oauth.md §5) growing ×1.5 to 10 s.
# Small jobs finish in seconds; a large job can run for hours, and at 10 s a 24 h job costs ~8,600 calls of a
# 100k+ daily allowance (docs/bulk-rest-oauth.md §2.1).
POLL_GROWTH = 1.5
# Salesforce keeps a query job's results for 7 days, but a job still running after 24 h is stuck (airbyte #17148);
# simple-salesforce and airbyte give up after the same 24 h (docs/bulk-rest-oauth.md §5).
DEFAULT_JOB_TIMEOUT = 86400.0
# zlib window bits for a gzip header and trailer (16 + 15): the trailer's CRC32 and length are checked.
GZIP_WBITS = 16 + zlib.MAX_WBITS


def job_from_json(data: dict[str, Any]) -> BulkJob:
    """Job info JSON (docs/bulk-rest-oauth.md §1.3) → BulkJob. `apiVersion` arrives as a JSON
    number (58.0)."""
    api_version = data.get("apiVersion")
    return BulkJob(
        id=str(data["id"]),
        state=str(data.get("state") or ""),
        operation=str(data.get("operation") or "queryAll"),
        object=str(data.get("object") or ""),
        api_version=f"{float(api_version):.1f}" if isinstance(api_version, int | float) else str(api_version or ""),
        number_records_processed=int(data.get("numberRecordsProcessed") or 0),
        error_message=data.get("errorMessage") or None,
        column_delimiter=str(data.get("columnDelimiter") or "COMMA"),
        line_ending=str(data.get("lineEnding") or "LF"),
        created_date=_job_time(data.get("createdDate")),
    )


def _job_time(value: Any) -> dt.datetime | None:
    """A job JSON timestamp (`2018-12-10T17:50:19.000+0000`, docs/bulk-rest-oauth.md §1.3); None when absent or
    not one."""
    if not isinstance(value, str):
        return None
    try:
        return dt.datetime.fromisoformat(value.replace("Z", "+00:00").replace("+0000", "+00:00"))
    except ValueError:
        return None


def locator_of(url: str) -> str:
    """The `locator` query parameter of a results URL; "" for the first page (no locator)."""
    values = parse_qs(urlsplit(url).query).get("locator")
    return values[0] if values else ""


def next_locator(header: str | None) -> str | None:
    """`Sforce-Locator`: the next page's locator, or None at the end (the literal "null", or absent;
    docs/bulk-rest-oauth.md §1.5)."""
    if header is None or header.strip() in ("", "null"):
        return None
    return header.strip()


class PageStream:
    """One result page being downloaded. Headers are known; the body is read with `chunks()` once."""

    def __init__(self, page: ResultPage, response: httpx.Response):
        self.page = page
        self._response = response
        raw = response.headers.get("Sforce-NumberOfRecords")
        try:
            self.number_of_records: int | None = int(raw) if raw is not None else None
        except ValueError:
            self.number_of_records = None
        self.next_locator: str | None = next_locator(response.headers.get("Sforce-Locator"))
        self.content_encoding: str = response.headers.get("Content-Encoding", "identity")

    async def chunks(self) -> AsyncIterator[bytes]:
        """Decompressed CSV bytes as they arrive (gzip or identity, docs/bulk-rest-oauth.md §1.7).
        Network errors → TransientError.

        gzip is decoded here rather than by httpx, because httpx accepts a gzip stream that ends early: a body
        cut short would pass as a shorter page. Here an incomplete stream or a CRC mismatch is a TransientError.
        """
        what = f"GET {urlsplit(self.page.url).path}"
        encoding = self.content_encoding.strip().lower()
        try:
            if encoding == "gzip":
                async for chunk in _gunzip(self._response.aiter_raw(), what):
                    yield chunk
            elif encoding in ("", "identity"):
                async for chunk in self._response.aiter_raw():
                    if chunk:
                        yield chunk
            else:  # deflate, br, ...: not sent by Salesforce, but httpx can decode them
                async for chunk in self._response.aiter_bytes():
                    if chunk:
                        yield chunk
        except HTTPX_ERRORS as exc:
            raise map_httpx_error(exc, what) from exc


async def _gunzip(raw: AsyncIterator[bytes], what: str) -> AsyncIterator[bytes]:
    """Decode a gzip body (possibly several members) chunk by chunk; a truncated or corrupt body raises."""
    decoder = zlib.decompressobj(GZIP_WBITS)
    seen_data = False
    try:
        async for data in raw:
            while data:
                seen_data = True
                out = decoder.decompress(data)
                if out:
                    yield out
                data = b""
                if decoder.eof:  # end of one member: the rest (if any) starts the next member
                    data = decoder.unused_data
                    decoder = zlib.decompressobj(GZIP_WBITS)
                    seen_data = False
    except zlib.error as exc:
        raise TransientError(f"{what}: corrupt gzip body ({exc})", code="DecodingError") from exc
    if seen_data and not decoder.eof:
        raise TransientError(f"{what}: gzip body ended before its end marker", code="DecodingError")


class BulkClient:
    """Bulk API 2.0 query jobs on top of a SalesforceClient (which owns auth, retries and error mapping)."""

    def __init__(
        self,
        client: SalesforceClient,
        *,
        poll_initial: float = 0.5,
        poll_max: float = 10.0,
        job_timeout: float = DEFAULT_JOB_TIMEOUT,
        sleep: Callable[[float], Awaitable[None]] = pause,  # ends at once on a stop; injectable so tests need not wait
    ):
        self.client = client
        self.poll_initial = poll_initial
        self.poll_max = poll_max
        self.job_timeout = job_timeout
        self._sleep = sleep
        # (job id, locator) → next locator, learnt from Sforce-Locator when a page is opened (pages_sequential).
        self._next: dict[tuple[str, str], str | None] = {}

    def _jobs(self, suffix: str = "") -> str:
        return f"{self.client.data_path}/jobs/query{suffix}"

    async def _job_call(self, method: str, path: str, **kwargs: Any) -> BulkJob:
        response = await self.client.request(method, path, **kwargs)
        return job_from_json(orjson.loads(response.content))

    async def create_query_job(
        self, soql: str, *, all_rows: bool = True, column_delimiter: str = "COMMA", line_ending: str = "LF"
    ) -> BulkJob:
        """Create a query job: `queryAll` (deleted and archived rows too,
        docs/bulk-rest-oauth.md §1.2) unless `all_rows` is False.

        Not idempotent: when a create is retried after a lost response, an orphan job may run and expire.
        """
        body = {
            "operation": "queryAll" if all_rows else "query",
            "query": soql,
            "contentType": "CSV",
            "columnDelimiter": column_delimiter,
            "lineEnding": line_ending,
        }
        job = await self._job_call("POST", self._jobs(), json=body)
        log.info("bulk job created", job_id=job.id, operation=job.operation, object=job.object)
        return job

    async def get_job(self, job_id: str) -> BulkJob:
        """Job info. An unknown (expired, deleted) job raises TerminalError(code="NOT_FOUND")."""
        try:
            return await self._job_call("GET", self._jobs(f"/{job_id}"))
        except TerminalError as exc:
            if exc.code == "NOT_FOUND":
                raise TerminalError(f"bulk job {job_id} not found: {exc}", code="NOT_FOUND") from exc
            raise

    async def wait_for_job(self, job_id: str) -> BulkJob:
        """Poll until the job is done. JobComplete → the job; Failed/Aborted (or no end within job_timeout)
        → JobFailedError, which the pipeline answers with a new job."""
        deadline = time.monotonic() + self.job_timeout
        interval = self.poll_initial
        while True:
            job = await self.get_job(job_id)
            if job.state == "JobComplete":
                log.info("bulk job complete", job_id=job_id, records=job.number_records_processed)
                return job
            if job.state in ("Failed", "Aborted"):
                detail = f": {job.error_message}" if job.error_message else ""
                raise JobFailedError(f"bulk job {job_id} ended {job.state}{detail}", code=job.state)
            if time.monotonic() + interval > deadline:
                await self._abort_quietly(job_id)
                raise JobFailedError(
                    f"bulk job {job_id} still {job.state} after {self.job_timeout:.0f} s; aborted", code="TIMEOUT"
                )
            await self._sleep(interval)
            interval = min(interval * POLL_GROWTH, self.poll_max)

    async def _abort_quietly(self, job_id: str) -> None:
        try:
            await self.abort_job(job_id)
        except Exception as exc:  # best effort: it expires after 7 days (docs/bulk-rest-oauth.md §2.1)
            log.warning("bulk job abort failed", job_id=job_id, error=str(exc))

    async def abort_job(self, job_id: str) -> BulkJob:
        """Abort a job that is UploadComplete or InProgress (docs/bulk-rest-oauth.md §1.4)."""
        return await self._job_call("PATCH", self._jobs(f"/{job_id}"), json={"state": "Aborted"})

    async def delete_job(self, job_id: str) -> None:
        """Delete a terminal job and its results (204, empty body; docs/bulk-rest-oauth.md §1.4)."""
        await self.client.request("DELETE", self._jobs(f"/{job_id}"))
        self._next = {k: v for k, v in self._next.items() if k[0] != job_id}

    async def result_pages(self, job_id: str, *, max_records: int | None = None) -> AsyncIterator[ResultPage]:
        """Every result page of a completed job, for concurrent download (`resultPages`, API v58+,
        docs/bulk-rest-oauth.md §1.6)."""
        params = {"maxRecords": str(max_records)} if max_records else None
        url: str | None = self._jobs(f"/{job_id}/resultPages")
        while url:
            response = await self.client.request("GET", url, params=params)
            data = orjson.loads(response.content)
            for entry in data.get("resultPages") or ():
                result_url = entry["resultUrl"]
                yield ResultPage(job_id=job_id, locator=locator_of(result_url), url=result_url)
            # The docs' element table says nextRecordUrl, their example nextRecordsUrl
            # (docs/bulk-rest-oauth.md §1.6): accept both.
            next_url = data.get("nextRecordsUrl") or data.get("nextRecordUrl")
            if data.get("done", True) or not next_url:
                return
            url, params = next_url, None  # the next URL carries its own query

    @asynccontextmanager
    async def open_page(self, page: ResultPage) -> AsyncIterator[PageStream]:
        """Open one page for streaming. Sends `Accept-Encoding: gzip` and accepts either encoding
        (docs/bulk-rest-oauth.md §1.7)."""
        async with self.client.stream("GET", page.url, headers={"Accept-Encoding": "gzip"}) as response:
            stream = PageStream(page, response)
            self._next[(page.job_id, page.locator)] = stream.next_locator
            yield stream

    async def pages_sequential(self, job_id: str, *, max_records: int | None = None) -> AsyncIterator[ResultPage]:
        """Pages one after another by following `Sforce-Locator` (docs/bulk-rest-oauth.md §1.5):
        the fallback for API < 58.

        The next locator is known only once a page is fetched, so open each page (`open_page`) before asking
        for the next one; a page the caller skipped is fetched here just to read its headers.
        """
        locator = ""
        while True:
            query = {"locator": locator} if locator else {}
            if max_records:
                query["maxRecords"] = str(max_records)
            url = self._jobs(f"/{job_id}/results") + (f"?{urlencode(query)}" if query else "")
            page = ResultPage(job_id=job_id, locator=locator, url=url)
            yield page
            key = (job_id, locator)
            if key not in self._next:
                async with self.open_page(page):
                    pass
            following = self._next.pop(key)
            if following is None:
                return
            locator = following
