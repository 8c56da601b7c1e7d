"""Token provider: flows, single-flight refresh, error mapping, no secrets in reprs or messages."""

from __future__ import annotations

import asyncio
from urllib.parse import parse_qs

import httpx
import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from sf_fakes import INSTANCE, SECRET, TOKEN_URL, json_response

from replicator.model import AuthError, ConfigError, CredentialsError, ServiceConfigError, TransientError
from replicator.salesforce.auth import JWT_GRANT, Credentials, Token, TokenProvider, jwt_assertion


def form(request: httpx.Request) -> dict[str, str]:
    return {k: v[0] for k, v in parse_qs(request.content.decode()).items()}


def ok(token: str = "tok-1", **extra) -> httpx.Response:
    return json_response(200, {"access_token": token, "instance_url": INSTANCE + "/", "issued_at": "1700000000123",
                               **extra})


@pytest.fixture(scope="module")
def rsa_key() -> tuple[str, str]:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    private = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()
    public = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    ).decode()
    return private, public


def provider(creds: Credentials, handler) -> TokenProvider:
    return TokenProvider(creds, httpx.AsyncClient(transport=httpx.MockTransport(handler)))


def test_reprs_never_show_secrets(rsa_key):
    creds = Credentials(flow="jwt_bearer", token_url=TOKEN_URL, client_id="cid", client_secret=SECRET,
                        username="u@example.com", private_key=rsa_key[0], refresh_token="rt-secret")
    text = repr(creds) + str(creds)
    assert SECRET not in text and "PRIVATE KEY" not in text and "rt-secret" not in text
    assert "cid" in text and "u@example.com" in text
    token = Token(access_token="00Dxx!AQ0Ao.secret", instance_url=INSTANCE, issued_at=1.0)
    assert "secret" not in repr(token) and "secret" not in str(token)


@pytest.mark.parametrize(
    "kwargs, missing",
    [
        ({"flow": "client_credentials"}, "client_secret"),
        ({"flow": "jwt_bearer", "username": "u"}, "private_key"),
        ({"flow": "refresh_token"}, "refresh_token"),
        ({"flow": "password"}, "flow"),
    ],
)
def test_missing_setting_is_named(kwargs, missing):
    with pytest.raises(ConfigError) as info:
        Credentials(token_url=TOKEN_URL, client_id="cid", **kwargs).validate()
    assert info.value.code == missing


async def test_client_credentials_login(creds):
    seen = []

    def handler(request):
        seen.append(form(request))
        return ok()

    tokens = provider(creds, handler)
    token = await tokens.token()
    assert token.access_token == "tok-1" and token.instance_url == INSTANCE and token.issued_at == 1700000000.123
    assert await tokens.token() is token  # cached
    assert seen == [{"grant_type": "client_credentials", "client_id": "cid", "client_secret": SECRET}]


async def test_jwt_bearer_assertion_claims(rsa_key):
    private, public = rsa_key
    creds = Credentials(flow="jwt_bearer", token_url=TOKEN_URL, client_id="consumer-key",
                        username="int@example.com", private_key=private)
    seen = []

    def handler(request):
        seen.append(form(request))
        return ok()

    await provider(creds, handler).token()
    assert seen[0]["grant_type"] == JWT_GRANT
    assertion = seen[0]["assertion"]
    assert jwt.get_unverified_header(assertion)["alg"] == "RS256"
    claims = jwt.decode(assertion, public, algorithms=["RS256"], audience="https://login.salesforce.com")
    assert claims["iss"] == "consumer-key" and claims["sub"] == "int@example.com"
    assert 0 < claims["exp"] - __import__("time").time() <= 180


def test_jwt_audience_override_and_bad_key(rsa_key):
    creds = Credentials(flow="jwt_bearer", token_url=TOKEN_URL, client_id="c", username="u",
                        private_key=rsa_key[0], audience="https://test.salesforce.com")
    claims = jwt.decode(jwt_assertion(creds, now=1000), options={"verify_signature": False})
    assert claims == {"iss": "c", "sub": "u", "aud": "https://test.salesforce.com", "exp": 1180}
    bad = Credentials(flow="jwt_bearer", token_url=TOKEN_URL, client_id="c", username="u",
                      private_key="-----BEGIN PRIVATE KEY-----\nnotakey\n-----END PRIVATE KEY-----")
    with pytest.raises(ConfigError) as info:
        jwt_assertion(bad)
    assert "notakey" not in str(info.value)


async def test_refresh_token_flow_keeps_the_rotated_token():
    creds = Credentials(flow="refresh_token", token_url=TOKEN_URL, client_id="cid", refresh_token="rt-1")
    seen = []

    def handler(request):
        seen.append(form(request))
        return ok(token=f"tok-{len(seen)}", refresh_token=f"rt-{len(seen) + 1}")

    tokens = provider(creds, handler)
    first = await tokens.token()
    await tokens.refresh(first)
    assert [f["refresh_token"] for f in seen] == ["rt-1", "rt-2"]
    assert "client_secret" not in seen[0]


async def test_concurrent_refreshes_cause_one_login(creds):
    release = asyncio.Event()
    logins = 0

    async def handler(request):
        nonlocal logins
        logins += 1
        await release.wait()
        return ok(token=f"tok-{logins}")

    tokens = provider(creds, handler)
    stale = Token(access_token="old", instance_url=INSTANCE, issued_at=0)
    tasks = [asyncio.create_task(tokens.refresh(stale)) for _ in range(10)]
    tasks += [asyncio.create_task(tokens.token()) for _ in range(5)]
    while logins == 0:  # wait until the first login is in flight
        await asyncio.sleep(0)
    release.set()
    results = await asyncio.gather(*tasks)
    assert logins == 1
    assert {t.access_token for t in results} == {"tok-1"}


async def test_refresh_with_an_already_replaced_token_makes_no_request(creds):
    calls = 0

    def handler(request):
        nonlocal calls
        calls += 1
        return ok(token=f"tok-{calls}")

    tokens = provider(creds, handler)
    first = await tokens.token()
    second = await tokens.refresh(first)
    assert second.access_token == "tok-2"
    assert await tokens.refresh(first) is second  # `first` is stale: someone already refreshed
    assert calls == 2


@pytest.mark.parametrize(
    "error, hint",
    [("invalid_grant", "approved"), ("invalid_client_id", "client_id"), ("invalid_client", "client_secret"),
     ("invalid_client_credentials", "client_secret"), ("unsupported_grant_type", "enable")],
)
async def test_refused_credentials_are_auth_errors_without_secrets(creds, error, hint):
    def handler(request):
        return json_response(400, {"error": error, "error_description": "authentication failure"})

    with pytest.raises(AuthError) as info:
        await provider(creds, handler).token()
    message = str(info.value)
    assert info.value.code == error and hint in message and "authentication failure" in message
    assert SECRET not in message
    # no retry fixes them, and every unit shares them: `replicator run` stops with exit code 2 (issue 21)
    assert isinstance(info.value, CredentialsError) and isinstance(info.value, ServiceConfigError)


@pytest.mark.parametrize("status", [500, 503, 429])
async def test_token_endpoint_outage_is_transient(creds, status):
    with pytest.raises(TransientError):
        await provider(creds, lambda r: httpx.Response(status)).token()


async def test_network_error_at_login_is_transient(creds):
    def handler(request):
        raise httpx.ConnectError("connection refused", request=request)

    with pytest.raises(TransientError):
        await provider(creds, handler).token()


async def test_response_without_instance_url_is_auth_error(creds):
    with pytest.raises(AuthError):
        await provider(creds, lambda r: json_response(200, {"access_token": "x"})).token()
