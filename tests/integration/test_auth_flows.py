"""JWT bearer and refresh token flows, from replicator's configuration to a backfill, over HTTPS."""

from __future__ import annotations

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from replicator.app.commands import run_backfills
from replicator.sim.server import SimulatorThread

from .helpers import compare_with_truth, ground_truth, settings_for


@pytest.fixture(scope="module")
def keys(tmp_path_factory):
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    d = tmp_path_factory.mktemp("keys")
    private = d / "server.key"
    private.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                          serialization.NoEncryption()))
    public = key.public_key().public_bytes(serialization.Encoding.PEM,
                                           serialization.PublicFormat.SubjectPublicKeyInfo)
    return private, public


@pytest.fixture(scope="module")
def sim(keys):
    with SimulatorThread(records=200, seed=5, jwt_public_key=keys[1]) as thread:
        yield thread.info


async def test_jwt_bearer_backfill(sim, keys, pg_url):
    settings = settings_for(sim, pg_url, "jwt", salesforce={
        "auth": "jwt_bearer", "client_secret": None, "private_key_file": str(keys[0]), "username": sim["username"]})
    results = await run_backfills(settings, ["Account"])
    assert not isinstance(results["Account"], BaseException), results["Account"]
    assert await compare_with_truth(pg_url, "jwt", "Account", "Id", await ground_truth(sim, "Account")) == []


async def test_jwt_signed_by_another_key_is_refused(sim, tmp_path, pg_url):
    other = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    path = tmp_path / "other.key"
    path.write_bytes(other.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                         serialization.NoEncryption()))
    settings = settings_for(sim, pg_url, "jwt_bad", salesforce={
        "auth": "jwt_bearer", "client_secret": None, "private_key_file": str(path), "username": sim["username"]})
    results = await run_backfills(settings, ["Account"])
    assert "invalid_grant" in str(results["Account"])


async def test_refresh_token_backfill(sim, pg_url):
    settings = settings_for(sim, pg_url, "refresh", salesforce={
        "auth": "refresh_token", "refresh_token": sim["refresh_token"]})
    results = await run_backfills(settings, ["Invoice__c"])
    assert not isinstance(results["Invoice__c"], BaseException), results["Invoice__c"]
    truth = await ground_truth(sim, "Invoice__c")
    assert await compare_with_truth(pg_url, "refresh", "Invoice__c", "External_Id__c", truth) == []
