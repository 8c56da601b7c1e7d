"""Error mapping at the Salesforce edge: every httpx exception and every status lands on a model error."""

from __future__ import annotations

import inspect
import ssl

import httpx
import orjson
import pytest

from replicator.model import (
    ApiLimitError,
    ConfigError,
    ReplicatorError,
    SessionExpiredError,
    TerminalError,
    TransientError,
)
from replicator.salesforce.client import parse_limit_info
from replicator.salesforce.errors import HTTPX_ERRORS, error_for_response, map_httpx_error

REQUEST = httpx.Request("GET", "https://org.example.test/services/data/v62.0/query?q=SELECT+Id+FROM+Account")


def httpx_exception_types() -> list[type[BaseException]]:
    return [
        obj
        for _, obj in inspect.getmembers(httpx, inspect.isclass)
        if issubclass(obj, BaseException) and obj.__module__.startswith("httpx")
    ]


def make(exc_type: type[BaseException]) -> BaseException:
    if issubclass(exc_type, httpx.HTTPStatusError):
        return exc_type("boom", request=REQUEST, response=httpx.Response(500, request=REQUEST))
    if issubclass(exc_type, httpx.RequestError):
        return exc_type("boom", request=REQUEST)
    if issubclass(exc_type, httpx.StreamError) and exc_type is not httpx.StreamError:
        return exc_type()  # RequestNotRead, StreamClosed, ...: no arguments
    return exc_type("boom")


@pytest.mark.parametrize("exc_type", httpx_exception_types(), ids=lambda t: t.__name__)
def test_every_httpx_exception_is_covered_and_mapped(exc_type):
    # Fails when httpx adds an exception type outside HTTPX_ERRORS, or one maps to something unexpected.
    exc = make(exc_type)
    assert isinstance(exc, HTTPX_ERRORS), f"{exc_type.__name__} escapes `except HTTPX_ERRORS`"
    mapped = map_httpx_error(exc, "GET /x")
    assert isinstance(mapped, ReplicatorError)
    assert isinstance(mapped, TransientError | TerminalError)


@pytest.mark.parametrize(
    "exc_type",
    [httpx.ReadError, httpx.ReadTimeout, httpx.ConnectTimeout, httpx.ConnectError, httpx.RemoteProtocolError,
     httpx.WriteError, httpx.PoolTimeout, httpx.DecodingError],
)
def test_network_failures_are_transient(exc_type):
    assert isinstance(map_httpx_error(make(exc_type)), TransientError)


@pytest.mark.parametrize("exc_type", [httpx.UnsupportedProtocol, httpx.LocalProtocolError, httpx.InvalidURL])
def test_our_own_mistakes_are_terminal(exc_type):
    assert isinstance(map_httpx_error(make(exc_type)), TerminalError)


def test_untrusted_certificate_is_terminal_and_says_what_to_fix():
    exc = httpx.ConnectError(f"[SSL: CERTIFICATE_VERIFY_FAILED] {ssl.SSLError.__name__}", request=REQUEST)
    mapped = map_httpx_error(exc)
    assert isinstance(mapped, TerminalError) and "ca_file" in str(mapped)


def response(status: int, body=None, **headers) -> httpx.Response:
    content = orjson.dumps(body) if body is not None else b""
    return httpx.Response(status, content=content, headers=headers, request=REQUEST)


@pytest.mark.parametrize("status", [500, 502, 503, 504, 429, 420, 408])
def test_server_and_throttling_statuses_are_transient(status):
    err = error_for_response(response(status, [{"errorCode": "SERVER_UNAVAILABLE", "message": "down"}]))
    assert type(err) is TransientError


def test_request_limit_exceeded_is_api_limit_error():
    err = error_for_response(
        response(403, [{"errorCode": "REQUEST_LIMIT_EXCEEDED", "message": "TotalRequests Limit exceeded."}],
                 **{"Retry-After": "120"})
    )
    assert isinstance(err, ApiLimitError) and err.code == "REQUEST_LIMIT_EXCEEDED" and err.retry_after == 120


def test_other_403_is_terminal():
    err = error_for_response(response(403, [{"errorCode": "INSUFFICIENT_ACCESS", "message": "no"}]))
    assert type(err) is TerminalError and err.code == "INSUFFICIENT_ACCESS"


def test_400_is_terminal_with_error_code_and_message_and_path():
    err = error_for_response(
        response(400, [{"errorCode": "INVALID_FIELD", "message": "No such column 'BadField' on entity 'Account'"}])
    )
    assert type(err) is TerminalError and err.code == "INVALID_FIELD"
    text = str(err)
    assert "GET /services/data/v62.0/query" in text and "BadField" in text and "HTTP 400" in text
    assert "SELECT" not in text  # path only, not the query string


@pytest.mark.parametrize(("code", "message", "fix"), [
    ("INVALID_TYPE", "sObject type 'Acount' is not supported.", "API name"),
    ("INVALIDENTITY", "Entity 'AccountHistory' is not supported by the Bulk API.", "leave it out"),
])
def test_an_object_salesforce_will_not_serve_is_a_configuration_error(code, message, fix):
    err = error_for_response(response(400, [{"errorCode": code, "message": message}]))  # no retry changes it
    assert isinstance(err, ConfigError) and err.code == code and message in str(err) and fix in str(err)


def test_401_is_session_expired():
    err = error_for_response(response(401, [{"errorCode": "INVALID_SESSION_ID", "message": "Session expired"}]))
    assert isinstance(err, SessionExpiredError)


@pytest.mark.parametrize(
    "body", [None, {"errorCode": "NOT_FOUND", "message": "gone"}, [{"errorCode": "NotFound", "message": "x"}]]
)
def test_404_has_code_not_found(body):
    err = error_for_response(response(404, body))
    assert type(err) is TerminalError and err.code == "NOT_FOUND"


def test_non_json_error_body_is_excerpted():
    err = error_for_response(httpx.Response(502, content=b"<html>Bad gateway</html>", request=REQUEST))
    assert isinstance(err, TransientError) and "Bad gateway" in str(err)


@pytest.mark.parametrize(
    "header, expected",
    [
        ("api-usage=10018/100000", (10018, 100000)),
        ("api-usage=10018/100000; api-bursts=1/750", (10018, 100000)),
        ("api-usage=25/5000; per-app-api-usage=17/250(appName=sample-connected-app)", (25, 5000)),
        ("per-app-api-usage=17/250(appName=x); api-usage=25/5000", (25, 5000)),
        ("per-app-api-usage=17/250(appName=x)", None),
        ("garbage", None),
        ("", None),
        (None, None),
    ],
)
def test_limit_info_parsing(header, expected):
    assert parse_limit_info(header) == expected
