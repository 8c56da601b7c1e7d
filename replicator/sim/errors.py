"""Salesforce-shaped error responses: REST and Bulk 2.0 errors are JSON arrays of
{"message", "errorCode"} objects (docs/bulk-rest-oauth.md §2.2)."""

from __future__ import annotations

import orjson
from aiohttp import web


def sf_error(status: int, code: str, message: str, headers: dict | None = None) -> web.Response:
    body = orjson.dumps([{"message": message, "errorCode": code}])
    return web.Response(status=status, body=body, content_type="application/json", headers=headers)


def json_ok(payload, status: int = 200, headers: dict | None = None) -> web.Response:
    return web.Response(status=status, body=orjson.dumps(payload), content_type="application/json",
                        headers=headers)


def not_found() -> web.Response:
    # 404 {"message":"The requested resource does not exist","errorCode":"NOT_FOUND"}, in an array
    # (docs/bulk-rest-oauth.md §2.2).
    return sf_error(404, "NOT_FOUND", "The requested resource does not exist")


def invalid_session() -> web.Response:
    # An expired or unknown session is 401 INVALID_SESSION_ID (docs/bulk-rest-oauth.md §2.2, §4.2).
    return sf_error(401, "INVALID_SESSION_ID", "Session expired or invalid")
