"""Fixtures: one simulator per session on a real HTTPS socket, an httpx client trusting its certificate."""

from __future__ import annotations

import ssl
import time

import httpx
import pytest

from replicator.sim.faults import Faults
from replicator.sim.server import SimulatorThread

RECORDS = 600
V = "v62.0"


def wait_for(condition, timeout: float = 30.0, interval: float = 0.02):
    """Poll `condition` until it returns a truthy value or the deadline passes."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError("condition not met before the deadline")
        time.sleep(interval)


@pytest.fixture(scope="session")
def sim():
    with SimulatorThread(records=RECORDS, seed=7, page_size=250) as running:
        yield running.info


@pytest.fixture(scope="session")
def client(sim):
    with httpx.Client(base_url=sim["instance_url"], verify=ssl.create_default_context(cafile=sim["ca_file"]), timeout=60) as c:
        yield c


@pytest.fixture
def token(sim, client) -> str:
    """A fresh session per test: some tests expire or revoke every token."""
    r = client.post("/services/oauth2/token", data={"grant_type": "client_credentials",
                                                     "client_id": sim["client_id"],
                                                     "client_secret": sim["client_secret"]})
    assert r.status_code == 200, r.text
    return r.json()["access_token"]


@pytest.fixture
def auth(token) -> dict:
    return {"Authorization": f"Bearer {token}"}


@pytest.fixture(autouse=True)
def reset_faults(request):
    yield
    if "client" in request.fixturenames:
        client = request.getfixturevalue("client")
        client.put("/__sim/faults", json=Faults().to_dict())


def ground_truth(client: httpx.Client, obj: str) -> list[dict]:
    import orjson
    r = client.get(f"/__sim/objects/{obj}/records")
    assert r.status_code == 200
    return [orjson.loads(line) for line in r.content.splitlines() if line]


def wait_job(client: httpx.Client, auth: dict, job_id: str, version: str = V) -> dict:
    def done():
        info = client.get(f"/services/data/{version}/jobs/query/{job_id}", headers=auth).json()
        return info if info["state"] in ("JobComplete", "Failed", "Aborted") else None
    return wait_for(done)
