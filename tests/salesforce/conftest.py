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
