"""The REST client: authenticated requests with one error mapping, retries, and the REST calls we use
(docs/bulk-rest-oauth.md §3).

Every Salesforce HTTP call of the program goes through `SalesforceClient.request` or `.stream`: they add the
Bearer token, refresh it once on 401 INVALID_SESSION_ID, map errors once (`errors.py`) and retry transient
ones (`replicator.retry`). Returned values are plain dicts or `model` types, never httpx objects (except the
raw `request`/`stream` primitives used by `bulk.py`).
"""

from __future__ import annotations

import datetime as dt
import re
import ssl
import time
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from typing import Any
from urllib.parse import urlsplit

import httpx
import orjson
import structlog

from replicator.model import AuthError, ConfigError, ObjectDescribe, TerminalError
from replicator.retry import retry_transient
from replicator.salesforce.auth import Credentials, Token, TokenProvider
from replicator.salesforce.describe import object_describe, strip_attributes
from replicator.salesforce.errors import (
    HTTPX_ERRORS,
    describe_request,
    error_for_response,
    map_httpx_error,
)
from replicator.salesforce.records import soql_datetime

log = structlog.get_logger(__name__)

# sObject Collections retrieve by POST takes at most 2,000 ids per call; more gives a 400
# (docs/bulk-rest-oauth.md §3.5; "Get Records With a Request Body Using sObject Collections",
# https://developer.salesforce.com/docs/atlas.en-us.api_rest.meta/api_rest/resources_composite_sobjects_collections_retrieve_post.htm).
RETRIEVE_BATCH = 2000
# Object names per Record Count call: 200 names of up to 60 characters (a namespaced custom object), each with its
# encoded comma, keep the URI under the 16,384 bytes REST accepts (docs/bulk-rest-oauth.md §2.1).
RECORD_COUNT_BATCH = 200

# `api-usage=N/M`, alone or followed by `; api-bursts=…`, or with the pilot `per-app-api-usage=…`
# (docs/bulk-rest-oauth.md §2.1). The anchor keeps `per-app-api-usage=17/250` from matching as the
# org's usage.
_API_USAGE = re.compile(r"(?:^|[;,\s])api-usage=(\d+)/(\d+)")


# What a call is, for `replicator_salesforce_requests_total{kind}` (bench/api_calls.py counts calls per row
# with it): the resource after /services/data/vXX.X/, the first match wins.
_CALL_KINDS = (
    ("jobs/query", "bulk"), ("queryAll", "queryAll"), ("query", "query"), ("composite/", "retrieve"),
    ("/deleted", "getDeleted"), ("/updated", "getUpdated"), ("/describe", "describe"), ("sobjects", "sobjects"),
    ("limits", "limits"),
)


def call_kind(path_or_url: str) -> str:
    """`bulk`, `query`, `queryAll`, `retrieve`, `getDeleted`, `getUpdated`, `describe`, `sobjects`, `limits` or `other`."""
    path = urlsplit(path_or_url).path
    if path.startswith("/services/data/v"):
        path = path.split("/", 4)[4] if path.count("/") >= 4 else ""
    for marker, kind in _CALL_KINDS:
        if path.startswith(marker) or (marker.startswith("/") and marker in path):
            return kind
    return "other"


def parse_limit_info(value: str | None) -> tuple[int, int] | None:
    """(used, max) from a `Sforce-Limit-Info` header, or None when absent or unparsable."""
    if not value:
        return None
    match = _API_USAGE.search(value)
    if not match:
        return None
    return int(match.group(1)), int(match.group(2))


def _origin(url: str) -> tuple[str, str]:
    parts = urlsplit(url)
    return parts.scheme.lower(), parts.netloc.lower()


class SalesforceClient:
    """One org, one connection pool, one token provider. Use as `async with SalesforceClient(creds) as sf:`."""

    def __init__(
        self,
        creds: Credentials,
        *,
        api_version: str = "62.0",
        ca_file: str | None = None,
        verify: bool = True,
        timeout: float = 120.0,
        max_connections: int = 16,
        retry_attempts: int = 6,
        retry_base: float = 0.5,
        transport: httpx.AsyncBaseTransport | None = None,  # tests inject httpx.MockTransport here
    ):
        self.api_version = api_version.removeprefix("v")
        verify_arg: ssl.SSLContext | bool = verify
        if ca_file:
            try:
                verify_arg = ssl.create_default_context(cafile=ca_file)
            except (OSError, ssl.SSLError) as exc:
                raise ConfigError(f"ca_file {ca_file!r} is not a readable PEM CA file ({exc})", code="ca_file") from None
        self._http = httpx.AsyncClient(
            verify=verify_arg,
            timeout=httpx.Timeout(timeout),
            limits=httpx.Limits(max_connections=max_connections, max_keepalive_connections=max_connections),
            transport=transport,
            follow_redirects=False,
        )
        self.tokens = TokenProvider(creds, self._http)
        self._retry_attempts = retry_attempts
        self._retry_base = retry_base
        self.api_usage: tuple[int, int] | None = None
        self.call_count = 0  # HTTP requests sent to the instance (token requests not included)
        self.calls_by_kind: dict[str, int] = {}  # the same, by call_kind()

    async def __aenter__(self) -> SalesforceClient:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._http.aclose()

    @property
    def instance_url(self) -> str | None:
        """The instance URL from the token response; None before the first login."""
        current = self.tokens.current
        return current.instance_url if current else None

    @property
    def data_path(self) -> str:
        """`/services/data/v62.0`: the prefix of every versioned REST path."""
        return f"/services/data/v{self.api_version}"

    # ----------------------------------------------------------------------------------------------------------
    # The two primitives.

    async def request(
        self,
        method: str,
        path_or_url: str,
        *,
        params: dict[str, Any] | None = None,
        json: Any = None,
        headers: dict[str, str] | None = None,
    ) -> httpx.Response:
        """Send one call and return the read response (status < 400).

        `path_or_url`: `/services/...` is joined to the instance URL; a bare path such as `sobjects/Account`
        goes under `/services/data/vXX.X/`; an absolute URL must be on the instance (the token is not sent
        elsewhere). Transient errors are retried; terminal ones raise at once.
        """

        async def attempt() -> httpx.Response:
            return await self._send(method, path_or_url, params=params, json=json, headers=headers, stream=False)

        return await self._retry(attempt, describe_request(method, path_or_url))

    @asynccontextmanager
    async def stream(
        self, method: str, url: str, *, headers: dict[str, str] | None = None
    ) -> AsyncIterator[httpx.Response]:
        """Like `request`, but yields the open response before its body is read (status already checked).

        Opening is retried; an httpx error while the caller reads the body is mapped to a model error on its way
        out of the `async with` block (the caller decides whether to retry the whole download).
        """
        what = describe_request(method, url)

        async def attempt() -> httpx.Response:
            return await self._send(method, url, params=None, json=None, headers=headers, stream=True)

        response = await self._retry(attempt, what)
        try:
            yield response
        except HTTPX_ERRORS as exc:
            raise map_httpx_error(exc, what) from exc
        finally:
            try:
                await response.aclose()
            except HTTPX_ERRORS:  # closing a broken connection: nothing left to save
                pass

    async def _retry(self, fn: Any, what: str) -> Any:
        return await retry_transient(fn, attempts=self._retry_attempts, base=self._retry_base, what=what)

    def _url(self, path_or_url: str, token: Token) -> str:
        if path_or_url.startswith(("https://", "http://")):
            if _origin(path_or_url) != _origin(token.instance_url):
                raise TerminalError(
                    f"refusing to send the session to {urlsplit(path_or_url).netloc}: not the instance host",
                    code="FOREIGN_URL",
                )
            return path_or_url
        if path_or_url.startswith("/"):
            return token.instance_url + path_or_url
        return f"{token.instance_url}{self.data_path}/{path_or_url}"

    async def _send(
        self,
        method: str,
        path_or_url: str,
        *,
        params: dict[str, Any] | None,
        json: Any,
        headers: dict[str, str] | None,
        stream: bool,
    ) -> httpx.Response:
        """One attempt: send, refresh once on 401, map any error status. Raises model errors only."""
        what = describe_request(method, path_or_url)
        token = await self.tokens.token()
        response = await self._send_with(token, method, path_or_url, params, json, headers, stream, what)
        if response.status_code == 401:
            await self._read_error(response, what, stream)  # drain so the connection can be reused
            token = await self.tokens.refresh(token)
            response = await self._send_with(token, method, path_or_url, params, json, headers, stream, what)
            if response.status_code == 401:
                error = await self._read_error(response, what, stream)
                raise AuthError(f"{error}; refused again right after a new login", code="INVALID_SESSION_ID")
        if response.status_code >= 400:
            raise await self._read_error(response, what, stream)
        return response

    async def _send_with(
        self,
        token: Token,
        method: str,
        path_or_url: str,
        params: dict[str, Any] | None,
        json: Any,
        headers: dict[str, str] | None,
        stream: bool,
        what: str,
    ) -> httpx.Response:
        all_headers = {"Authorization": f"Bearer {token.access_token}", "Accept": "application/json"}
        content = None
        if json is not None:
            content = orjson.dumps(json)
            all_headers["Content-Type"] = "application/json"
        all_headers.update(headers or {})
        started = time.perf_counter()
        try:
            request = self._http.build_request(
                method, self._url(path_or_url, token), params=params, content=content, headers=all_headers
            )
            self.call_count += 1
            kind = call_kind(path_or_url)
            self.calls_by_kind[kind] = self.calls_by_kind.get(kind, 0) + 1
            response = await self._http.send(request, stream=stream)
        except HTTPX_ERRORS as exc:
            raise map_httpx_error(exc, what) from exc
        usage = parse_limit_info(response.headers.get("Sforce-Limit-Info"))
        if usage is not None:
            self.api_usage = usage
        log.debug(
            "salesforce call",
            call=what,
            status=response.status_code,
            ms=round((time.perf_counter() - started) * 1000, 1),
        )
        return response

    async def _read_error(self, response: httpx.Response, what: str, stream: bool) -> Exception:
        if stream:
            try:
                await response.aread()
            except HTTPX_ERRORS as exc:
                return map_httpx_error(exc, what)
            finally:
                await response.aclose()
        return error_for_response(response, what)

    # ----------------------------------------------------------------------------------------------------------
    # REST calls.

    async def _json(self, method: str, path: str, **kwargs: Any) -> Any:
        response = await self.request(method, path, **kwargs)
        if not response.content:
            return None
        try:
            return orjson.loads(response.content)
        except orjson.JSONDecodeError:
            raise TerminalError(
                f"{describe_request(method, path)}: HTTP {response.status_code} body is not JSON", code="BAD_JSON"
            ) from None

    async def versions(self) -> list[dict]:
        """`GET /services/data/`: the API versions the org serves, oldest first
        (docs/bulk-rest-oauth.md §3.1)."""
        return list(await self._json("GET", "/services/data/") or [])

    async def describe_global(self) -> list[dict]:
        """describeGlobal's `sobjects` entries (docs/bulk-rest-oauth.md §3.1)."""
        data = await self._json("GET", "sobjects/")
        return list((data or {}).get("sobjects") or [])

    async def describe(self, object_name: str) -> ObjectDescribe:
        """The object's describe, mapped to `model.ObjectDescribe` (fields in describe order). 404 NOT_FOUND: the org
        has no such object, or the user may not see it; a configuration error (no retry changes it)."""
        try:
            data = await self._json("GET", f"sobjects/{object_name}/describe/")
        except TerminalError as exc:
            if exc.code != "NOT_FOUND" or isinstance(exc, ConfigError):
                raise
            raise ConfigError(
                f"objects.{object_name}: Salesforce has no object {object_name!r} this user may read (describe "
                "answered 404 NOT_FOUND): check the API name (custom objects end in __c) and the user's access to it",
                code="NOT_FOUND",
            ) from None
        return object_describe(data)

    async def query(self, soql: str, *, all_rows: bool = False) -> AsyncIterator[dict]:
        """Records of a REST SOQL query (`queryAll` when `all_rows`, which includes deleted and archived rows),
        following `nextRecordsUrl` page by page (≤2,000 records each,
        docs/bulk-rest-oauth.md §3.4); `attributes` stripped."""
        data = await self._json("GET", "queryAll" if all_rows else "query", params={"q": soql})
        while True:
            for record in data.get("records") or ():
                yield strip_attributes(record)
            next_url = data.get("nextRecordsUrl")
            if data.get("done", True) or not next_url:
                return
            data = await self._json("GET", next_url)

    async def count(self, soql: str, *, all_rows: bool = False) -> int:
        """`SELECT COUNT() FROM … WHERE …`: the number of matching records, read from `totalSize` (one call; "COUNT()
        and COUNT(fieldName)", SOQL and SOSL Reference,
        https://developer.salesforce.com/docs/atlas.en-us.soql_sosl.meta/soql_sosl/sforce_api_calls_soql_select_count.htm)."""
        data = await self._json("GET", "queryAll" if all_rows else "query", params={"q": soql})
        return int((data or {}).get("totalSize") or 0)

    async def retrieve(self, object_name: str, ids: Sequence[str], fields: Sequence[str]) -> list[dict | None]:
        """Full records by id via sObject Collections POST (docs/bulk-rest-oauth.md §3.5), in the
        order of `ids`; None for an id that is unknown or not readable. Calls are batched by 2,000 ids."""
        out: list[dict | None] = []
        for start in range(0, len(ids), RETRIEVE_BATCH):
            chunk = list(ids[start : start + RETRIEVE_BATCH])
            data = await self._json(
                "POST", f"composite/sobjects/{object_name}", json={"ids": chunk, "fields": list(fields)}
            )
            if not isinstance(data, list) or len(data) != len(chunk):
                raise TerminalError(
                    f"retrieve {object_name}: expected {len(chunk)} results, got "
                    f"{len(data) if isinstance(data, list) else type(data).__name__}",
                    code="BAD_RESPONSE",
                )
            out.extend(strip_attributes(r) if isinstance(r, dict) else None for r in data)
        return out

    async def get_deleted(self, object_name: str, start: dt.datetime, end: dt.datetime) -> dict:
        """sObject Get Deleted: `{"deletedRecords": [{"id", "deletedDate"}], "earliestDateAvailable",
        "latestDateCovered"}` for records deleted between `start` and `end` (UTC; Salesforce truncates their
        seconds; the last 15 days only). REST API Developer Guide, "sObject Get Deleted",
        https://developer.salesforce.com/docs/atlas.en-us.api_rest.meta/api_rest/resources_getdeleted.htm
        (docs/bulk-rest-oauth.md §3.5)."""
        params = {"start": soql_datetime(start), "end": soql_datetime(end)}
        return dict(await self._json("GET", f"sobjects/{object_name}/deleted/", params=params) or {})

    async def get_updated(self, object_name: str, start: dt.datetime, end: dt.datetime) -> dict:
        """sObject Get Updated: `{"ids": [...], "latestDateCovered"}` for records changed between `start` and `end`
        (the last 30 days). REST API Developer Guide, "sObject Get Updated",
        https://developer.salesforce.com/docs/atlas.en-us.api_rest.meta/api_rest/resources_getupdated.htm
        (docs/bulk-rest-oauth.md §3.5)."""
        params = {"start": soql_datetime(start), "end": soql_datetime(end)}
        return dict(await self._json("GET", f"sobjects/{object_name}/updated/", params=params) or {})

    async def limits(self) -> dict:
        """`GET limits`: `{Name: {Max, Remaining}}` (docs/bulk-rest-oauth.md §2.1)."""
        return dict(await self._json("GET", "limits") or {})

    async def record_counts(self, names: Sequence[str] | None = None) -> dict[str, int]:
        """Record Count: `{name: count}` of the listed objects (every object of the org when `names` is None), one
        call per RECORD_COUNT_BATCH names. The counts are a snapshot Salesforce refreshes now and then, without
        soft-deleted records; objects it does not count (unknown names, associated objects such as Share and
        History) are absent. REST API Developer Guide, "Record Count",
        https://developer.salesforce.com/docs/atlas.en-us.api_rest.meta/api_rest/resources_record_count.htm."""
        batches: list[dict[str, str] | None] = [None] if names is None else [
            {"sObjects": ",".join(names[i : i + RECORD_COUNT_BATCH])} for i in range(0, len(names), RECORD_COUNT_BATCH)]
        out: dict[str, int] = {}
        for params in batches:
            data = await self._json("GET", "limits/recordCount", params=params)
            for item in (data or {}).get("sObjects") or ():
                if isinstance(item, dict) and "name" in item:
                    out[str(item["name"])] = int(item.get("count") or 0)
        return out

    async def limits_once(self) -> dict:
        """`GET limits` in one attempt, not retried: the allocation watcher (app/limits.py) reads it on its own
        schedule, and must see 403 REQUEST_LIMIT_EXCEEDED (`ApiLimitError`) at once rather than wait it out."""
        response = await self._send("GET", "limits", params=None, json=None, headers=None, stream=False)
        return dict(orjson.loads(response.content) or {}) if response.content else {}
