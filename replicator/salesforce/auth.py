"""OAuth 2.0 against the Salesforce token endpoint: client credentials, JWT bearer, refresh token
(docs/bulk-rest-oauth.md §4).

Owns the current access token. Salesforce sends no `expires_in` (docs/bulk-rest-oauth.md §4.1): a
session ends after inactivity (docs/bulk-rest-oauth.md §4.2), so the client reacts to 401
INVALID_SESSION_ID by calling `refresh(stale)`, which is single-flight. Secrets never appear in a repr, a log
line or an exception message.
"""

from __future__ import annotations

import asyncio
import re
import time
from dataclasses import dataclass

import httpx
import jwt
import orjson
import structlog

from replicator.model import AuthError, ConfigError, CredentialsError, TransientError
from replicator.salesforce.errors import HTTPX_ERRORS, error_body, map_httpx_error, retry_after_seconds

log = structlog.get_logger(__name__)

FLOWS = ("client_credentials", "jwt_bearer", "refresh_token")
JWT_GRANT = "urn:ietf:params:oauth:grant-type:jwt-bearer"
DEFAULT_AUDIENCE = "https://login.salesforce.com"
# simple-salesforce signs assertions valid for 3 minutes (docs/bulk-rest-oauth.md §4.1): long
# enough for clock skew, short if leaked.
JWT_LIFETIME_SECONDS = 180

# What to fix, per OAuth error code (docs/bulk-rest-oauth.md §4.1; "OAuth 2.0 Authorization
# Errors", https://help.salesforce.com/s/articleView?id=xcloud.remoteaccess_oauth_flow_errors.htm&type=5).
# Shown to the operator; never includes a secret.
_HINTS = {
    "invalid_grant": "check the user/credentials, the JWT audience and that the connected app is approved "
    "for this user (a refresh token may have been revoked or rotated)",
    "invalid_client_id": "check salesforce.client_id (the connected app's consumer key)",
    "invalid_client_credentials": "check salesforce.client_id and salesforce.client_secret (or client_secret_file)",
    "invalid_client": "check salesforce.client_id and salesforce.client_secret (or client_secret_file)",
    "unsupported_grant_type": "enable this OAuth flow on the connected app (client credentials needs a Run As "
    "user and the My Domain token URL)",
    "invalid_request": "check token_url and the flow's parameters",
    "inactive_user": "the user is inactive in the org",
    "inactive_org": "the org is inactive",
}


@dataclass(frozen=True)
class Credentials:
    """How to obtain an access token. `token_url` is the My Domain (or login/test) `/services/oauth2/token`."""

    flow: str  # "client_credentials" | "jwt_bearer" | "refresh_token"
    token_url: str
    client_id: str
    client_secret: str | None = None
    username: str | None = None  # JWT `sub`
    private_key: str | None = None  # PEM text, RS256
    audience: str | None = None  # JWT `aud`; default https://login.salesforce.com
    refresh_token: str | None = None

    def __repr__(self) -> str:
        def hidden(value: str | None) -> str:
            return "None" if value is None else "'***'"

        return (
            f"Credentials(flow={self.flow!r}, token_url={self.token_url!r}, client_id={self.client_id!r}, "
            f"client_secret={hidden(self.client_secret)}, username={self.username!r}, "
            f"private_key={hidden(self.private_key)}, audience={self.audience!r}, "
            f"refresh_token={hidden(self.refresh_token)})"
        )

    __str__ = __repr__

    def validate(self) -> None:
        """Raise ConfigError naming the missing setting for this flow."""
        if self.flow not in FLOWS:
            raise ConfigError(f"flow must be one of {', '.join(FLOWS)}, not {self.flow!r}", code="flow")
        if not self.token_url:
            raise ConfigError("token_url is required", code="token_url")
        if not self.client_id:
            raise ConfigError("client_id is required", code="client_id")
        needs = {
            "client_credentials": ("client_secret",),
            "jwt_bearer": ("username", "private_key"),
            "refresh_token": ("refresh_token",),
        }[self.flow]
        for name in needs:
            if not getattr(self, name):
                raise ConfigError(f"{name} is required for the {self.flow} flow", code=name)


@dataclass(frozen=True)
class Token:
    access_token: str
    instance_url: str
    issued_at: float  # epoch seconds
    # The org id (`00D…`): Pub/Sub's `tenantid` header (docs/pubsub-cdc.md §1). From the token
    # response's identity URL `…/id/<orgId>/<userId>`, else from the access token itself, which Salesforce
    # issues as `<orgId>!…`.
    org_id: str | None = None

    def __repr__(self) -> str:
        return (
            f"Token(access_token='***', instance_url={self.instance_url!r}, issued_at={self.issued_at!r}, "
            f"org_id={self.org_id!r})"
        )

    __str__ = __repr__


def jwt_assertion(creds: Credentials, *, now: float | None = None) -> str:
    """The RS256-signed JWT bearer assertion: iss = consumer key, sub = username, aud, exp
    (docs/bulk-rest-oauth.md §4.1)."""
    issued = int(time.time() if now is None else now)
    claims = {
        "iss": creds.client_id,
        "sub": creds.username,
        "aud": creds.audience or DEFAULT_AUDIENCE,
        "exp": issued + JWT_LIFETIME_SECONDS,
    }
    try:
        return jwt.encode(claims, creds.private_key or "", algorithm="RS256")
    except (ValueError, TypeError, jwt.PyJWTError) as exc:
        # The message of a key-parsing error can echo key material: keep only the type. Every unit logs in with
        # it: the service stops rather than mark every object FAILED.
        raise CredentialsError(
            f"private_key is not a usable RSA private key in PEM form ({type(exc).__name__})", code="private_key"
        ) from None


class TokenProvider:
    """Logs in lazily, caches the token, refreshes single-flight."""

    def __init__(self, creds: Credentials, http: httpx.AsyncClient):
        creds.validate()
        self._creds = creds
        self._http = http
        self._lock = asyncio.Lock()
        self._current: Token | None = None
        # Refresh-token rotation (docs/bulk-rest-oauth.md §4.1): each refresh may issue a new
        # refresh token and invalidate the old one.
        self._refresh_token = creds.refresh_token
        self.logins = 0  # token requests made, for tests and metrics

    @property
    def current(self) -> Token | None:
        return self._current

    async def token(self) -> Token:
        """The current token; the first call logs in."""
        current = self._current
        if current is not None:
            return current
        return await self.refresh(None)

    async def refresh(self, stale: Token | None) -> Token:
        """A token newer than `stale`. Single-flight: when another task already replaced `stale`, return the
        replacement without a request, so N concurrent 401s cause one login."""
        async with self._lock:
            current = self._current
            if current is not None and current is not stale:
                return current
            token = await self._login()
            self._current = token
            return token

    def _form(self) -> dict[str, str]:
        c = self._creds
        if c.flow == "client_credentials":
            return {"grant_type": "client_credentials", "client_id": c.client_id, "client_secret": c.client_secret or ""}
        if c.flow == "jwt_bearer":
            return {"grant_type": JWT_GRANT, "assertion": jwt_assertion(c)}
        form = {"grant_type": "refresh_token", "client_id": c.client_id, "refresh_token": self._refresh_token or ""}
        if c.client_secret:
            form["client_secret"] = c.client_secret
        return form

    async def _login(self) -> Token:
        url = self._creds.token_url
        self.logins += 1
        try:
            response = await self._http.post(
                url, data=self._form(), headers={"Accept": "application/json"}
            )
        except HTTPX_ERRORS as exc:
            raise map_httpx_error(exc, f"token request to {url}") from None
        status = response.status_code
        if status >= 500 or status in (408, 420, 429):
            raise TransientError(
                f"token endpoint {url} answered HTTP {status}",
                retry_after=retry_after_seconds(response),
                code=f"HTTP_{status}",
            )
        if status >= 400:
            code, description = error_body(response)
            if code == "rate_limit_exceeded":
                raise TransientError(f"token endpoint {url}: rate_limit_exceeded", code=code)
            hint = _HINTS.get(code or "", "check the connected app and the credentials")
            if code and code.startswith("invalid_client") and code not in _HINTS:
                hint = _HINTS["invalid_client"]
            detail = f"{code}: {description}" if description else (code or f"HTTP {status}")
            # No retry changes what the token endpoint thinks of these credentials: a configuration error, which
            # stops `replicator run` (exit 2) rather than retry it for ever (issue 21).
            raise CredentialsError(
                f"{self._creds.flow} login at {url} refused ({detail}); {hint}", code=code or f"HTTP_{status}"
            )
        try:
            data = orjson.loads(response.content)
            access_token = data["access_token"]
            instance_url = data["instance_url"].rstrip("/")
        except (orjson.JSONDecodeError, KeyError, TypeError, AttributeError):
            raise AuthError(
                f"token endpoint {url} answered HTTP {status} without access_token and instance_url",
                code="BAD_TOKEN_RESPONSE",
            ) from None
        issued_at = _issued_at_seconds(data.get("issued_at"))
        if data.get("refresh_token"):
            self._refresh_token = data["refresh_token"]
        log.info("logged in", flow=self._creds.flow, instance_url=instance_url)
        return Token(
            access_token=access_token,
            instance_url=instance_url,
            issued_at=issued_at,
            org_id=org_id_of(data.get("id"), access_token),
        )


_ORG_ID = re.compile(r"00D[0-9A-Za-z]{12}(?:[0-9A-Za-z]{3})?")


def org_id_of(identity_url: object, access_token: str = "") -> str | None:
    """The org id from the identity URL `https://…/id/<orgId>/<userId>`, else from an access token of the form
    `<orgId>!<opaque>`; None when neither carries one."""
    if isinstance(identity_url, str):
        parts = identity_url.rstrip("/").split("/")
        if len(parts) >= 3 and parts[-3] == "id" and _ORG_ID.fullmatch(parts[-2]):
            return parts[-2]
    prefix, bang, _ = access_token.partition("!")
    if bang and _ORG_ID.fullmatch(prefix):
        return prefix
    return None


def _issued_at_seconds(value: object) -> float:
    """`issued_at` is epoch milliseconds as a string (docs/bulk-rest-oauth.md §4.1); fall back to
    now."""
    try:
        return int(str(value)) / 1000.0
    except (TypeError, ValueError):
        return time.time()
