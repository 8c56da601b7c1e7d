"""Fixtures for the Salesforce client tests: a fake org (sf_fakes.FakeOrg) and a client wired to it."""

from __future__ import annotations

import httpx
import pytest
from sf_fakes import SECRET, TOKEN_URL, FakeOrg

from replicator.salesforce.auth import Credentials
from replicator.salesforce.client import SalesforceClient


@pytest.fixture
def org() -> FakeOrg:
    return FakeOrg()


@pytest.fixture
def creds() -> Credentials:
    return Credentials(flow="client_credentials", token_url=TOKEN_URL, client_id="cid", client_secret=SECRET)


@pytest.fixture
async def client(org: FakeOrg, creds: Credentials):
    async with SalesforceClient(
        creds, transport=httpx.MockTransport(org.handler), retry_attempts=3, retry_base=0.001
    ) as sf:
        yield sf


@pytest.fixture
async def sf(sim):
    """A client of the simulator the test module starts (its `sim` fixture), over real HTTPS."""
    creds = Credentials(flow="client_credentials", token_url=sim["token_url"], client_id=sim["client_id"],
                        client_secret=sim["client_secret"])
    async with SalesforceClient(creds, api_version="62.0", ca_file=sim["ca_file"], retry_base=0.01) as client:
        yield client
