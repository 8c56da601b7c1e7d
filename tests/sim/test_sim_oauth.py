"""OAuth 2.0 token endpoint and session idle expiry (docs/bulk-rest-oauth.md §4.1, §4.2)."""

from __future__ import annotations

import base64
import ssl
import time

import httpx
import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from replicator.sim.server import SimulatorThread

from .conftest import V


def _check_success(body: dict, sim: dict) -> None:
    assert body["access_token"].startswith(sim["org_id"][:15] + "!")
    assert body["instance_url"] == sim["instance_url"]
    assert body["token_type"] == "Bearer"
    assert body["issued_at"].isdigit() and len(body["issued_at"]) == 13
    assert body["id"].endswith(f"/id/{sim['org_id']}/{sim['user_id']}")
    assert "signature" in body and "scope" in body
    assert "expires_in" not in body


def test_client_credentials_in_form_and_basic(sim, client):
    r = client.post("/services/oauth2/token", data={"grant_type": "client_credentials",
                                                     "client_id": sim["client_id"],
                                                     "client_secret": sim["client_secret"]})
    assert r.status_code == 200
    _check_success(r.json(), sim)
    assert "refresh_token" not in r.json()
    basic = base64.b64encode(f"{sim['client_id']}:{sim['client_secret']}".encode()).decode()
    r = client.post("/services/oauth2/token", data={"grant_type": "client_credentials"},
                    headers={"Authorization": f"Basic {basic}"})
    assert r.status_code == 200
    token = r.json()["access_token"]
    assert client.get(f"/services/data/{V}/limits", headers={"Authorization": f"Bearer {token}"}).status_code == 200


def test_bad_credentials_are_400(sim, client):
    r = client.post("/services/oauth2/token", data={"grant_type": "client_credentials",
                                                     "client_id": sim["client_id"], "client_secret": "nope"})
    assert r.status_code == 400 and r.json()["error"] == "invalid_client"
    assert "error_description" in r.json()
    r = client.post("/services/oauth2/token", data={"grant_type": "client_credentials",
                                                     "client_id": "other", "client_secret": "x"})
    assert r.status_code == 400 and r.json()["error"] == "invalid_client_id"
    r = client.post("/services/oauth2/token", data={"grant_type": "magic"})
    assert r.status_code == 400 and r.json()["error"] == "unsupported_grant_type"


def test_refresh_token_flow(sim, client):
    form = {"grant_type": "refresh_token", "refresh_token": sim["refresh_token"],
            "client_id": sim["client_id"], "client_secret": sim["client_secret"]}
    r = client.post("/services/oauth2/token", data=form)
    assert r.status_code == 200
    _check_success(r.json(), sim)
    r = client.post("/services/oauth2/token", data={**form, "refresh_token": "bogus"})
    assert r.status_code == 400 and r.json()["error"] == "invalid_grant"


def test_jwt_bearer_flow(tmp_path):
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pub = tmp_path / "pub.pem"
    pub.write_bytes(key.public_key().public_bytes(serialization.Encoding.PEM,
                                                  serialization.PublicFormat.SubjectPublicKeyInfo))
    with SimulatorThread(records=5, jwt_public_key=str(pub)) as running:
        sim = running.info
        with httpx.Client(base_url=sim["instance_url"], verify=ssl.create_default_context(cafile=sim["ca_file"])) as client:
            def assertion(**over):
                claims = {"iss": sim["client_id"], "sub": sim["username"], "aud": "https://login.salesforce.com",
                          "exp": int(time.time()) + 180, **over}
                return jwt.encode(claims, key, algorithm="RS256")

            def post(a):
                return client.post("/services/oauth2/token", data={
                    "grant_type": "urn:ietf:params:oauth:grant-type:jwt-bearer", "assertion": a})

            r = post(assertion())
            assert r.status_code == 200, r.text
            _check_success(r.json(), sim)
            assert "refresh_token" not in r.json()
            assert post(assertion(aud="https://evil.example")).json()["error"] == "invalid_grant"
            assert post(assertion(exp=int(time.time()) - 10)).json()["error"] == "invalid_grant"
            assert post(assertion(iss="someone-else")).json()["error"] == "invalid_client_id"
            other = rsa.generate_private_key(public_exponent=65537, key_size=2048)
            forged = jwt.encode({"iss": sim["client_id"], "sub": "x", "aud": "https://login.salesforce.com",
                                 "exp": int(time.time()) + 60}, other, algorithm="RS256")
            assert post(forged).status_code == 400


def test_idle_expiry_gives_401_invalid_session():
    with SimulatorThread(records=5, tls=False, token_idle_seconds=0.3) as running:
        sim = running.info
        with httpx.Client(base_url=sim["instance_url"]) as client:
            token = client.post("/services/oauth2/token", data={
                "grant_type": "client_credentials", "client_id": sim["client_id"],
                "client_secret": sim["client_secret"]}).json()["access_token"]
            h = {"Authorization": f"Bearer {token}"}
            assert client.get(f"/services/data/{V}/limits", headers=h).status_code == 200
            deadline = time.monotonic() + 10
            while True:  # wait on the condition (the token's idle timer), not a fixed sleep
                r = client.get(f"/services/data/{V}/limits", headers=h)
                if r.status_code == 401 or time.monotonic() > deadline:
                    break
                time.sleep(0.4)
            assert r.status_code == 401
            assert r.json() == [{"message": "Session expired or invalid", "errorCode": "INVALID_SESSION_ID"}]


def test_expire_all_tokens_and_revoke(sim, client):
    def new_token():
        return client.post("/services/oauth2/token", data={
            "grant_type": "client_credentials", "client_id": sim["client_id"],
            "client_secret": sim["client_secret"]}).json()["access_token"]

    token = new_token()
    h = {"Authorization": f"Bearer {token}"}
    assert client.post("/services/oauth2/revoke", data={"token": token}).status_code == 200
    assert client.get(f"/services/data/{V}/limits", headers=h).status_code == 401
    assert client.post("/services/oauth2/revoke", data={"token": token}).json()["error"] == "invalid_token"
    token = new_token()
    assert client.post("/__sim/tokens/expire").json()["expired"] >= 1
    assert client.get(f"/services/data/{V}/limits", headers={"Authorization": f"Bearer {token}"}).status_code == 401


def test_missing_token_is_401(client):
    r = client.get(f"/services/data/{V}/sobjects/")
    assert r.status_code == 401 and r.json()[0]["errorCode"] == "INVALID_SESSION_ID"
