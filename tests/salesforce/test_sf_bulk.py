"""BulkClient against the fake org: job lifecycle, polling, result pages, streamed (gzip) page bodies."""

from __future__ import annotations

import datetime as dt
import gzip
import inspect

import httpx
import orjson
import pytest
from sf_fakes import json_response

from replicator.model import BulkJob, JobFailedError, ResultPage, TerminalError, TransientError
from replicator.salesforce.bulk import BulkClient, job_from_json, locator_of, next_locator

V = "/services/data/v62.0"
JOB = "750R0000000zlh9IAA"
CSV = b'"Id","Name"\n"001A","Acme"\n"001B","Globex, Inc."\n'


def job(state: str, **extra) -> dict:
    return {"id": JOB, "operation": "queryAll", "object": "Account", "state": state, "apiVersion": 62.0,
            "columnDelimiter": "COMMA", "lineEnding": "LF", "numberRecordsProcessed": 2, **extra}


class Sleeps:
    def __init__(self) -> None:
        self.delays: list[float] = []

    async def __call__(self, delay: float) -> None:
        self.delays.append(delay)


@pytest.fixture
def sleeps() -> Sleeps:
    return Sleeps()


@pytest.fixture
def bulk(client, sleeps) -> BulkClient:
    return BulkClient(client, poll_initial=0.5, poll_max=2.0, sleep=sleeps)


def test_job_from_json():
    j = job_from_json(job("JobComplete"))
    assert j == BulkJob(id=JOB, state="JobComplete", operation="queryAll", object="Account", api_version="62.0",
                        number_records_processed=2, error_message=None)
    assert j.done


def test_job_created_date_is_read_on_salesforces_clock():
    # the job info's createdDate (docs/bulk-rest-oauth.md §1.3's example), for the removal after a resync
    j = job_from_json(job("JobComplete", createdDate="2018-12-10T17:50:19.000+0000"))
    assert j.created_date == dt.datetime(2018, 12, 10, 17, 50, 19, tzinfo=dt.UTC)
    assert job_from_json(job("JobComplete", createdDate="not a time")).created_date is None


def test_locators():
    assert locator_of(f"{V}/jobs/query/{JOB}/results?locator=MTAwMDA&maxRecords=10") == "MTAwMDA"
    assert locator_of(f"{V}/jobs/query/{JOB}/results") == ""
    assert next_locator("null") is None and next_locator(None) is None and next_locator("MTAw") == "MTAw"


async def test_create_query_job_sends_queryall(bulk, org):
    bodies = []

    def create(request):
        bodies.append(orjson.loads(request.content))
        return json_response(200, job("UploadComplete"))

    org.route("POST", f"{V}/jobs/query", create)
    created = await bulk.create_query_job("SELECT Id FROM Account")
    assert created.state == "UploadComplete" and created.id == JOB
    assert bodies == [{"operation": "queryAll", "query": "SELECT Id FROM Account", "contentType": "CSV",
                       "columnDelimiter": "COMMA", "lineEnding": "LF"}]
    await bulk.create_query_job("SELECT Id FROM Account", all_rows=False, column_delimiter="PIPE", line_ending="CRLF")
    assert bodies[1]["operation"] == "query" and bodies[1]["columnDelimiter"] == "PIPE"


async def test_wait_for_job_polls_with_growing_interval(bulk, org, sleeps):
    org.route("GET", f"{V}/jobs/query/{JOB}", *[json_response(200, job("InProgress"))] * 6,
              json_response(200, job("JobComplete")))
    done = await bulk.wait_for_job(JOB)
    assert done.state == "JobComplete"
    assert sleeps.delays == [0.5, 0.75, 1.125, 1.6875, 2.0, 2.0]


@pytest.mark.parametrize("state", ["Failed", "Aborted"])
async def test_failed_or_aborted_job_raises_job_failed(bulk, org, state):
    org.route("GET", f"{V}/jobs/query/{JOB}", json_response(200, job(state, errorMessage="QUERY_TIMEOUT")))
    with pytest.raises(JobFailedError) as info:
        await bulk.wait_for_job(JOB)
    assert state in str(info.value) and "QUERY_TIMEOUT" in str(info.value)


async def test_job_that_never_ends_is_aborted_after_the_timeout(client, org, sleeps):
    bulk = BulkClient(client, poll_initial=0.5, poll_max=1.0, job_timeout=0.0, sleep=sleeps)
    org.route("GET", f"{V}/jobs/query/{JOB}", json_response(200, job("InProgress")))
    org.route("PATCH", f"{V}/jobs/query/{JOB}", json_response(200, job("Aborted")))
    with pytest.raises(JobFailedError) as info:
        await bulk.wait_for_job(JOB)
    assert info.value.code == "TIMEOUT"
    assert [c.method for c in org.calls][-1] == "PATCH"


async def test_unknown_job_is_not_found(bulk, org):
    with pytest.raises(TerminalError) as info:
        await bulk.get_job("750000000000000AAA")
    assert info.value.code == "NOT_FOUND"


async def test_abort_and_delete(bulk, org):
    patches = []

    def abort(request):
        patches.append(orjson.loads(request.content))
        return json_response(200, job("Aborted"))

    org.route("PATCH", f"{V}/jobs/query/{JOB}", abort)
    org.route("DELETE", f"{V}/jobs/query/{JOB}", httpx.Response(204))
    assert (await bulk.abort_job(JOB)).state == "Aborted"
    assert patches == [{"state": "Aborted"}]
    assert await bulk.delete_job(JOB) is None


def result_url(locator: str | None) -> str:
    return f"{V}/jobs/query/{JOB}/results" + (f"?locator={locator}" if locator else "")


async def test_result_pages_follows_next_records_url_in_both_spellings(bulk, org):
    def first(request):
        assert request.url.params["maxRecords"] == "1000"
        return json_response(200, {"resultPages": [{"resultUrl": result_url(None)}, {"resultUrl": result_url("MTAwMA")}],
                                   "nextRecordsUrl": f"{V}/jobs/query/{JOB}/resultPages?locator=p2", "done": False})

    def second(request):
        assert request.url.params["locator"] == "p2"
        return json_response(200, {"resultPages": [{"resultUrl": result_url("MjAwMA")}],
                                   "nextRecordUrl": f"{V}/jobs/query/{JOB}/resultPages?locator=p3", "done": False})

    third = json_response(200, {"resultPages": [{"resultUrl": result_url("MzAwMA")}], "done": True})
    org.route("GET", f"{V}/jobs/query/{JOB}/resultPages", first, second, third)
    pages = [p async for p in bulk.result_pages(JOB, max_records=1000)]
    assert [p.locator for p in pages] == ["", "MTAwMA", "MjAwMA", "MzAwMA"]
    assert pages[1] == ResultPage(job_id=JOB, locator="MTAwMA", url=result_url("MTAwMA"))


def body(data: bytes) -> httpx.ByteStream:
    """A response body that is streamed like one from the network (content= would arrive already read)."""
    return httpx.ByteStream(data)


def csv_page(request, *, gzip_it: bool, locator: str = "null") -> httpx.Response:
    headers = {"Content-Type": "text/csv; charset=UTF-8", "Sforce-NumberOfRecords": "2", "Sforce-Locator": locator}
    if gzip_it:
        assert request.headers["Accept-Encoding"] == "gzip"
        return httpx.Response(200, stream=body(gzip.compress(CSV)), headers={**headers, "Content-Encoding": "gzip"})
    return httpx.Response(200, stream=body(CSV), headers=headers)


@pytest.mark.parametrize("gzip_it", [True, False])
async def test_open_page_streams_decompressed_bytes(bulk, org, gzip_it):
    org.route("GET", f"{V}/jobs/query/{JOB}/results", lambda r: csv_page(r, gzip_it=gzip_it, locator="MTAw"))
    page = ResultPage(job_id=JOB, locator="", url=result_url(None))
    async with bulk.open_page(page) as stream:
        assert stream.number_of_records == 2 and stream.next_locator == "MTAw"
        body = b"".join([c async for c in stream.chunks()])
    assert body == CSV


class BreaksMidway(httpx.AsyncByteStream):
    """A body that yields one chunk, then fails the way a dropped connection does."""

    def __init__(self, exc: BaseException):
        self.exc = exc

    async def __aiter__(self):
        yield CSV[:10]
        raise self.exc

    async def aclose(self) -> None:
        pass


def transport_failures() -> list[type[BaseException]]:
    return [
        obj for _, obj in inspect.getmembers(httpx, inspect.isclass)
        if issubclass(obj, httpx.TransportError) and obj not in (httpx.TransportError,)
    ]


@pytest.mark.parametrize("exc_type", transport_failures(), ids=lambda t: t.__name__)
async def test_no_httpx_exception_escapes_a_page_download(bulk, org, exc_type):
    request = httpx.Request("GET", "https://org.example.test/x")
    org.route("GET", f"{V}/jobs/query/{JOB}/results",
              lambda r: httpx.Response(200, stream=BreaksMidway(exc_type("connection dropped", request=request))))
    page = ResultPage(job_id=JOB, locator="", url=result_url(None))
    with pytest.raises((TransientError, TerminalError)) as info:
        async with bulk.open_page(page) as stream:
            async for _ in stream.chunks():
                pass
    assert not isinstance(info.value, httpx.HTTPError)


@pytest.mark.parametrize("exc_type", [httpx.ReadError, httpx.RemoteProtocolError, httpx.ReadTimeout])
async def test_mid_page_network_errors_are_transient(bulk, org, exc_type):
    request = httpx.Request("GET", "https://org.example.test/x")
    org.route("GET", f"{V}/jobs/query/{JOB}/results",
              lambda r: httpx.Response(200, stream=BreaksMidway(exc_type("dropped", request=request))))
    with pytest.raises(TransientError):
        async with bulk.open_page(ResultPage(job_id=JOB, locator="", url=result_url(None))) as stream:
            async for _ in stream.chunks():
                pass


async def test_truncated_gzip_page_is_transient(bulk, org):
    truncated = gzip.compress(CSV * 50)[:-12]
    org.route("GET", f"{V}/jobs/query/{JOB}/results",
              lambda r: httpx.Response(200, stream=body(truncated), headers={"Content-Encoding": "gzip"}))
    with pytest.raises(TransientError):
        async with bulk.open_page(ResultPage(job_id=JOB, locator="", url=result_url(None))) as stream:
            async for _ in stream.chunks():
                pass


async def test_corrupt_gzip_page_is_transient(bulk, org):
    org.route("GET", f"{V}/jobs/query/{JOB}/results",
              lambda r: httpx.Response(200, stream=body(b"\x1f\x8b\x08\x00garbage"), headers={"Content-Encoding": "gzip"}))
    with pytest.raises(TransientError):
        async with bulk.open_page(ResultPage(job_id=JOB, locator="", url=result_url(None))) as stream:
            async for _ in stream.chunks():
                pass


async def test_multi_member_gzip_page_is_decoded_whole(bulk, org):
    data = gzip.compress(CSV) + gzip.compress(b'"001C","Initech"\n')
    org.route("GET", f"{V}/jobs/query/{JOB}/results",
              lambda r: httpx.Response(200, stream=body(data), headers={"Content-Encoding": "gzip"}))
    async with bulk.open_page(ResultPage(job_id=JOB, locator="", url=result_url(None))) as stream:
        assert b"".join([c async for c in stream.chunks()]) == CSV + b'"001C","Initech"\n'


async def test_results_before_completion_is_terminal(bulk, org):
    org.route("GET", f"{V}/jobs/query/{JOB}/results", json_response(
        412, [{"errorCode": "JOB_NOT_COMPLETE", "message": "can only download query results of completed jobs"}]))
    with pytest.raises(TerminalError) as info:
        async with bulk.open_page(ResultPage(job_id=JOB, locator="", url=result_url(None))):
            pass
    assert info.value.code == "JOB_NOT_COMPLETE"


async def test_pages_sequential_follows_sforce_locator(bulk, org):
    seen = []

    def results(request):
        loc = request.url.params.get("locator", "")
        seen.append((loc, request.url.params.get("maxRecords")))
        following = {"": "MTAw", "MTAw": "MjAw", "MjAw": "null"}[loc]
        return csv_page(request, gzip_it=False, locator=following)

    org.route("GET", f"{V}/jobs/query/{JOB}/results", results)
    bodies = []
    async for page in bulk.pages_sequential(JOB, max_records=100):
        if page.locator == "MTAw":
            continue  # a page the caller skips is fetched for its headers only
        async with bulk.open_page(page) as stream:
            bodies.append(b"".join([c async for c in stream.chunks()]))
    assert [loc for loc, _ in seen] == ["", "MTAw", "MjAw"]
    assert {m for _, m in seen} == {"100"}
    assert bodies == [CSV, CSV]


class Trickle(httpx.AsyncByteStream):
    """A body that arrives a few bytes at a time."""

    def __init__(self, data: bytes, size: int = 7):
        self.data, self.size = data, size

    async def __aiter__(self):
        for i in range(0, len(self.data), self.size):
            yield self.data[i : i + self.size]


async def test_gzip_arriving_in_small_pieces_is_decoded_incrementally(bulk, org):
    big = CSV * 2000
    data = gzip.compress(big) + gzip.compress(CSV)
    org.route("GET", f"{V}/jobs/query/{JOB}/results",
              lambda r: httpx.Response(200, stream=Trickle(data), headers={"Content-Encoding": "gzip"}))
    async with bulk.open_page(ResultPage(job_id=JOB, locator="", url=result_url(None))) as stream:
        chunks = [c async for c in stream.chunks()]
    assert b"".join(chunks) == big + CSV
    assert len(chunks) > 1 and max(map(len, chunks)) < len(big)
