"""Maps httpx exceptions and Salesforce error responses to the two error kinds of `model`, once
(docs/design.md, Principles 4).

Nothing above `salesforce/` sees an httpx exception. Messages carry the method, the path and Salesforce's
`errorCode`/`message`; never a header, a token or a form body.
"""

from __future__ import annotations

import re
from email.utils import parsedate_to_datetime
from typing import Any
from urllib.parse import urlsplit

import httpx
import orjson

from replicator.model import (
    ApiLimitError,
    ConfigError,
    ReplayIdInvalidError,
    ReplicatorError,
    SessionExpiredError,
    TerminalError,
    TransientError,
)

# 420 is what the Salesforce edge answers while an org "is setting things up" and 429 is throttling: airbyte
# retries both (docs/bulk-rest-oauth.md §2.2). 408 Request Timeout means the server gave up waiting
# for the request, so sending it again may succeed (RFC 9110 §15.5.9, https://www.rfc-editor.org/rfc/rfc9110#name-408-request-timeout).
# 5xx is retried as a rule.
TRANSIENT_STATUSES = frozenset({408, 420, 429})

# httpx exceptions that mean "the network or the peer failed this time": worth retrying.
_TRANSIENT_HTTPX: tuple[type[BaseException], ...] = (
    httpx.TimeoutException,  # connect/read/write/pool timeouts
    httpx.NetworkError,  # ConnectError, ReadError, WriteError, CloseError
    httpx.RemoteProtocolError,  # peer closed mid-body, truncated chunked encoding
    httpx.DecodingError,  # truncated or corrupt gzip body: re-fetching the page fixes it
    httpx.ProxyError,
)


def map_httpx_error(exc: BaseException, what: str = "") -> ReplicatorError:
    """The model error for an exception raised by httpx (or by the TLS layer beneath it)."""
    prefix = f"{what}: " if what else ""
    name = type(exc).__name__
    text = str(exc) or name
    if isinstance(exc, ReplicatorError):
        return exc
    if isinstance(exc, httpx.ConnectError) and "CERTIFICATE_VERIFY_FAILED" in text:
        # Retrying cannot fix a certificate the client does not trust: point at ca_file instead.
        return TerminalError(
            f"{prefix}TLS certificate not trusted ({text}); set ca_file to the server's CA", code="TLS"
        )
    if isinstance(exc, _TRANSIENT_HTTPX):
        return TransientError(f"{prefix}{name}: {text}", code=name)
    # Everything else (UnsupportedProtocol, LocalProtocolError, InvalidURL, TooManyRedirects, StreamError,
    # CookieConflict, HTTPStatusError) is a bug or a bad configuration on our side: retrying will not help.
    return TerminalError(f"{prefix}{name}: {text}", code=name)


# Every exception type httpx defines (its hierarchy has four roots); `except HTTPX_ERRORS` around each httpx
# call, then `map_httpx_error`. tests/salesforce/test_errors.py fails when httpx grows a type not covered here.
HTTPX_ERRORS: tuple[type[BaseException], ...] = (
    httpx.HTTPError,
    httpx.InvalidURL,
    httpx.StreamError,
    httpx.CookieConflict,
)


def error_body(response: httpx.Response) -> tuple[str | None, str]:
    """(errorCode, message) from a REST error body: an array `[{errorCode, message}]`
    (docs/bulk-rest-oauth.md §2.2), a single object, or an OAuth `{error, error_description}`.
    Falls back to a short excerpt of the raw text."""
    try:
        data: Any = orjson.loads(response.content) if response.content else None
    except orjson.JSONDecodeError:
        data = None
    if isinstance(data, list) and data and isinstance(data[0], dict):
        data = data[0]
    if isinstance(data, dict):
        code = data.get("errorCode") or data.get("error")
        message = data.get("message") or data.get("error_description") or ""
        return (str(code) if code else None), str(message)
    text = response.content[:200].decode("utf-8", "replace").strip() if response.content else ""
    return None, text


def retry_after_seconds(response: httpx.Response) -> float | None:
    """`Retry-After` as seconds (delta-seconds or HTTP date), or None."""
    value = response.headers.get("Retry-After")
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    date = response.headers.get("Date")
    try:
        now = parsedate_to_datetime(date) if date else None
    except (TypeError, ValueError):
        now = None
    if now is None:
        return None
    return max(0.0, (when - now).total_seconds())


def describe_request(method: str, url: str | httpx.URL) -> str:
    """`GET /services/data/v62.0/sobjects/Account/describe`: method and path, without query or host."""
    return f"{method.upper()} {urlsplit(str(url)).path}"


def error_for_response(response: httpx.Response, what: str = "") -> ReplicatorError:
    """The model error for a response with status >= 400 (the body must already be read).

    401 → SessionExpiredError (the caller refreshes the token once); 403 REQUEST_LIMIT_EXCEEDED → ApiLimitError;
    408/420/429/5xx → TransientError; INVALID_TYPE and INVALIDENTITY (the configured object) → ConfigError; every
    other 4xx → TerminalError with Salesforce's errorCode.
    """
    status = response.status_code
    code, message = error_body(response)
    where = what or describe_request(response.request.method, response.request.url)
    text = f"{where}: HTTP {status}" + (f" {code}" if code else "") + (f": {message}" if message else "")
    if status == 401:
        return SessionExpiredError(text)
    if status == 403 and code == "REQUEST_LIMIT_EXCEEDED":
        return ApiLimitError(text, retry_after=retry_after_seconds(response), code=code)
    if status >= 500 or status in TRANSIENT_STATUSES:
        return TransientError(text, retry_after=retry_after_seconds(response), code=code or f"HTTP_{status}")
    if status == 404 and (code is None or _normal(code) == "NOTFOUND"):
        code = "NOT_FOUND"
    if code and _normal(code) in _CONFIG_CODES:
        return ConfigError(f"{text}; {_CONFIG_CODES[_normal(code)]}", code=code)
    return TerminalError(text, code=code or f"HTTP_{status}")


# Answers about a configured object that no retry changes (docs/bulk-rest-oauth.md §2.2): a configuration error
# (model.ConfigError), with what to fix. INVALID_TYPE: SOQL does not know the sObject, or the user may not read it
# ("sObject type 'X' is not supported"); INVALIDENTITY: Bulk API 2.0 does not serve the object.
_CONFIG_CODES = {
    "INVALIDTYPE": "check the object's API name (custom objects end in __c) and that the integration user may read it",
    "INVALIDENTITY": 'Bulk API 2.0 does not serve this object: leave it out of the configuration',
}


def _normal(code: str) -> str:
    return re.sub(r"[^A-Z]", "", code.upper())


# --------------------------------------------------------------------------------------------------------------
# Pub/Sub API (gRPC). Plain strings here so this module does not import grpc: `pubsub.py` hands over the
# status name, the details and the `error-code` trailer (docs/pubsub-cdc.md §4). Every
# grpc.StatusCode has a row; tests/salesforce/test_sf_pubsub_errors.py fails when grpc grows one that is not
# classified.
#   transient: reconnect with backoff. auth: refresh the token once. terminal: stop the object.
#   reset: transient only when the details say the HTTP/2 stream was reset (RST_STREAM), else terminal.
GRPC_STATUS_KINDS: dict[str, str] = {
    "OK": "terminal",  # never an error on its own; a stream that *ends* is handled by the subscriber
    "CANCELLED": "transient",  # the server or a proxy cancelled the call
    "UNKNOWN": "reset",
    "INVALID_ARGUMENT": "terminal",  # replay id errors become ReplayIdInvalidError below
    "DEADLINE_EXCEEDED": "transient",
    "NOT_FOUND": "terminal",
    "ALREADY_EXISTS": "terminal",
    "PERMISSION_DENIED": "terminal",
    "RESOURCE_EXHAUSTED": "transient",
    "FAILED_PRECONDITION": "terminal",
    "ABORTED": "transient",
    "OUT_OF_RANGE": "terminal",
    "UNIMPLEMENTED": "terminal",
    "INTERNAL": "reset",
    "UNAVAILABLE": "transient",
    "DATA_LOSS": "terminal",
    "UNAUTHENTICATED": "auth",
}

# `error-code` trailers (suffixes of `sfdc.platform.eventbus.grpc.`) that mean "try again later" whatever the
# status: the org's daily delivery allocation or the concurrent-client limit (a long wait), a service outage.
_GRPC_LIMIT_CODES = ("limit.exceeded", "stream.limit.triggered")
_GRPC_RETRY_CODES = ("service.unavailable", "subscription.internal.error")


def map_grpc_status(
    status: str, details: str = "", error_code: str | None = None, what: str = "", rpc: str = ""
) -> ReplicatorError:
    """The model error for a failed Pub/Sub RPC: `status` is the grpc.StatusCode name, `error_code` the
    `error-code` trailer. UNAUTHENTICATED → SessionExpiredError (refresh once); a replay id refusal →
    ReplayIdInvalidError (the pipeline resyncs; never LATEST); NOT_FOUND on a topic → TOPIC_NOT_FOUND."""
    prefix = f"{what}: " if what else ""
    sf_code = (error_code or "").removeprefix("sfdc.platform.eventbus.grpc.")
    text = f"{prefix}gRPC {status}" + (f" {sf_code}" if sf_code else "") + (f": {details}" if details else "")
    kind = GRPC_STATUS_KINDS.get(status, "terminal")
    if kind == "auth":
        return SessionExpiredError(text)
    if status == "INVALID_ARGUMENT" and "replayid" in sf_code.lower():
        return ReplayIdInvalidError(
            f"{text}; the stored replay id is invalid or outside the 72 h retention window: resync the object",
            code=sf_code,
        )
    if status == "NOT_FOUND":
        if rpc == "GetSchema":
            return TerminalError(text, code="SCHEMA_NOT_FOUND")
        return TerminalError(
            f"{text}; enable Change Data Capture for the object (Setup > Change Data Capture) or check the topic "
            "name (/data/<Object>ChangeEvent, custom objects /data/<Name>__ChangeEvent)",
            code="TOPIC_NOT_FOUND",
        )
    if any(c in sf_code for c in _GRPC_LIMIT_CODES):
        return ApiLimitError(text, code=sf_code)
    if kind == "transient" or any(c in sf_code for c in _GRPC_RETRY_CODES):
        return TransientError(text, code=sf_code or status)
    if kind == "reset" and "RST_STREAM" in details.upper():
        return TransientError(text, code=sf_code or status)
    return TerminalError(text, code=sf_code or status)
