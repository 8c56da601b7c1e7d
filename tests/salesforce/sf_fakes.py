"""A fake org behind httpx.MockTransport: token endpoint, Bearer check, and per-test routes."""

from __future__ import annotations

import itertools
from collections.abc import Callable
from typing import Any

import httpx
import orjson

TOKEN_URL = "https://login.example.test/services/oauth2/token"
INSTANCE = "https://org.example.test"
SECRET = "s3cr3t-client-secret"

Handler = Callable[[httpx.Request], httpx.Response]


def json_response(status: int, body: Any, **headers: str) -> httpx.Response:
    return httpx.Response(status, content=orjson.dumps(body), headers={"Content-Type": "application/json", **headers})


class FakeOrg:
    def __init__(self) -> None:
        self._seq = itertools.count(1)
        self.valid: set[str] = set()
        self.logins = 0
        self.calls: list[httpx.Request] = []
        self.routes: dict[tuple[str, str], list[Handler] | Handler] = {}
        self.limit_info = "api-usage=10/15000"

    def issue(self) -> str:
        token = f"tok-{next(self._seq)}"
        self.valid.add(token)
        return token

    def expire_all(self) -> None:
        self.valid.clear()

    def route(self, method: str, path: str, *handlers: Handler | httpx.Response) -> None:
        """Respond with the handlers in turn; the last one repeats."""
        fns = [h if callable(h) else (lambda _r, h=h: h) for h in handlers]
        self.routes[(method, path)] = fns

    def handler(self, request: httpx.Request) -> httpx.Response:
        if request.url.path == "/services/oauth2/token":
            self.logins += 1
            return json_response(
                200,
                {
                    "access_token": self.issue(),
                    "instance_url": INSTANCE,
                    "issued_at": "1700000000000",
                    "token_type": "Bearer",
                    "id": f"{INSTANCE}/id/00D/005",
                },
            )
        self.calls.append(request)
        auth = request.headers.get("Authorization", "")
        if not auth.startswith("Bearer ") or auth[7:] not in self.valid:
            return json_response(401, [{"message": "Session expired or invalid", "errorCode": "INVALID_SESSION_ID"}])
        fns = self.routes.get((request.method, request.url.path))
        if fns is None:
            return json_response(404, [{"errorCode": "NOT_FOUND", "message": "The requested resource does not exist"}])
        fn = fns.pop(0) if len(fns) > 1 else fns[0]
        response = fn(request)
        response.headers.setdefault("Sforce-Limit-Info", self.limit_info)
        return response
