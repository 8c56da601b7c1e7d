"""OAuth 2.0 token endpoint, revocation and session bookkeeping (docs/bulk-rest-oauth.md §4).

Flows (docs/bulk-rest-oauth.md §4.1): client_credentials (form fields or `Authorization: Basic`),
refresh_token, and JWT bearer (RS256 assertion checked against the configured public key: iss = client_id, aud,
exp, sub). Refresh tokens: neither client credentials nor JWT bearer issues one (the flow table of
docs/bulk-rest-oauth.md §4.1). The simulator plays a connected app that was authorised once through a
browser flow: it mints one refresh token at start and reports it in the ready info (`refresh_token`); the
refresh flow trades it for access tokens without rotation. Sessions expire after `token_idle_seconds` without
use; each call resets the timer (docs/bulk-rest-oauth.md §4.2).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import secrets
import time
from dataclasses import dataclass

import jwt
from aiohttp import web

# Audiences Salesforce accepts for a JWT bearer assertion (docs/bulk-rest-oauth.md §4.1), plus this
# simulator's own URL.
STANDARD_AUDIENCES = ("https://login.salesforce.com", "https://test.salesforce.com")


@dataclass
class Session:
    token: str
    refresh_token: str | None
    last_used: float


class TokenStore:
    """Access tokens with idle expiry, and refresh tokens."""

    def __init__(self, org_id: str, idle_seconds) -> None:
        self.org_id = org_id
        self._idle = idle_seconds  # callable returning the current idle limit (a fault knob)
        self.sessions: dict[str, Session] = {}
        self.refresh_tokens: set[str] = set()

    def mint_refresh_token(self) -> str:
        token = "5Aep861" + secrets.token_urlsafe(60).replace("-", "").replace("_", "")[:80]
        self.refresh_tokens.add(token)
        return token

    def issue(self, refresh_token: str | None = None) -> str:
        # Salesforce session ids are "<15-char org id>!<opaque>".
        token = f"{self.org_id[:15]}!{secrets.token_urlsafe(72)}"
        self.sessions[token] = Session(token, refresh_token, time.monotonic())
        return token

    def touch(self, token: str) -> bool:
        """True when `token` is a live session; resets its idle timer."""
        session = self.sessions.get(token)
        if session is None:
            return False
        now = time.monotonic()
        if now - session.last_used > self._idle():
            del self.sessions[token]
            return False
        session.last_used = now
        return True

    def expire_all(self) -> int:
        n = len(self.sessions)
        self.sessions.clear()
        return n

    def revoke(self, token: str) -> bool:
        if self.sessions.pop(token, None) is not None:
            return True
        if token in self.refresh_tokens:
            self.refresh_tokens.discard(token)
            for key in [k for k, s in self.sessions.items() if s.refresh_token == token]:
                # revoking a refresh token revokes its access tokens (docs/bulk-rest-oauth.md §4.2)
                del self.sessions[key]
            return True
        return False


def oauth_error(error: str, description: str, status: int = 400) -> web.Response:
    """Token errors are HTTP 400 JSON {error, error_description} (docs/bulk-rest-oauth.md §4.1)."""
    return web.json_response({"error": error, "error_description": description}, status=status)


class OAuthEndpoints:
    def __init__(self, *, tokens: TokenStore, client_id: str, client_secret: str, org_id: str, user_id: str,
                 username: str, instance_url, jwt_public_key: bytes | None) -> None:
        self.tokens = tokens
        self.client_id = client_id
        self.client_secret = client_secret
        self.org_id = org_id
        self.user_id = user_id
        self.username = username
        self.instance_url = instance_url  # callable: known only once the port is bound
        self.jwt_public_key = jwt_public_key

    def success(self, refresh_token: str | None, scope: str, issue_refresh: bool = False) -> web.Response:
        access = self.tokens.issue(refresh_token)
        # epoch milliseconds, as a string (docs/bulk-rest-oauth.md §4.1)
        issued_at = str(int(time.time() * 1000))
        identity = f"{self.instance_url()}/id/{self.org_id}/{self.user_id}"
        signature = base64.b64encode(hmac.new(self.client_secret.encode(), (identity + issued_at).encode(),
                                              hashlib.sha256).digest()).decode()
        body = {"access_token": access, "signature": signature, "scope": scope,
                "instance_url": self.instance_url(), "id": identity, "token_type": "Bearer",
                "issued_at": issued_at}
        if issue_refresh and refresh_token:
            body["refresh_token"] = refresh_token
        return web.json_response(body)  # no expires_in (docs/bulk-rest-oauth.md §4.1)

    def _client(self, request: web.Request, form) -> tuple[str | None, str | None]:
        client_id, secret = form.get("client_id"), form.get("client_secret")
        auth = request.headers.get("Authorization", "")
        if auth.lower().startswith("basic "):
            try:
                client_id, _, secret = base64.b64decode(auth[6:].strip()).decode().partition(":")
            except (binascii.Error, UnicodeDecodeError):
                return None, None
        return client_id, secret

    def _check_client(self, client_id, secret) -> web.Response | None:
        if client_id != self.client_id:
            return oauth_error("invalid_client_id", "client identifier invalid")
        if not secret or not hmac.compare_digest(secret, self.client_secret):
            return oauth_error("invalid_client", "invalid client credentials")
        return None

    async def token(self, request: web.Request) -> web.Response:
        form = await request.post()
        grant = form.get("grant_type")
        if grant == "client_credentials":
            failure = self._check_client(*self._client(request, form))
            return failure or self.success(None, "api")
        if grant == "refresh_token":
            failure = self._check_client(*self._client(request, form))
            if failure:
                return failure
            refresh = str(form.get("refresh_token") or "")
            if refresh not in self.tokens.refresh_tokens:
                return oauth_error("invalid_grant", "expired access/refresh token")
            return self.success(refresh, "api refresh_token")
        if grant == "urn:ietf:params:oauth:grant-type:jwt-bearer":
            return self._jwt_bearer(str(form.get("assertion") or ""))
        if grant in ("password", "authorization_code"):
            return oauth_error("unsupported_grant_type", "grant type not supported")
        return oauth_error("unsupported_grant_type", "grant type not supported")

    def _jwt_bearer(self, assertion: str) -> web.Response:
        if not assertion:
            return oauth_error("invalid_request", "assertion required")
        try:
            unverified = jwt.decode(assertion, options={"verify_signature": False})
        except jwt.PyJWTError:
            return oauth_error("invalid_grant", "invalid assertion")
        if unverified.get("iss") != self.client_id:
            return oauth_error("invalid_client_id", "client identifier invalid")
        if self.jwt_public_key is None:
            return oauth_error("invalid_grant", "user hasn't approved this consumer")
        audiences = [*STANDARD_AUDIENCES, self.instance_url()]
        try:
            claims = jwt.decode(assertion, self.jwt_public_key, algorithms=["RS256"], audience=audiences,
                                options={"require": ["exp", "iss", "aud", "sub"]})
        except jwt.ExpiredSignatureError:
            return oauth_error("invalid_grant", "expired authorization code")
        except jwt.InvalidAudienceError:
            return oauth_error("invalid_grant", "audience is invalid")
        except jwt.PyJWTError:
            return oauth_error("invalid_grant", "invalid assertion")
        if not claims.get("sub"):
            return oauth_error("invalid_grant", "user hasn't approved this consumer")
        return self.success(None, "api")

    async def revoke(self, request: web.Request) -> web.Response:
        form = await request.post()
        token = str(form.get("token") or request.query.get("token") or "")
        if not token:
            return oauth_error("unsupported_token_type", "unsupported token type")
        if not self.tokens.revoke(token):
            return oauth_error("invalid_token", "invalid token")
        return web.Response(status=200)
