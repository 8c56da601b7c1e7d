"""A simulator shared by the integration tests of a module: real HTTPS on a loopback port."""

from __future__ import annotations

import pytest

from replicator.sim.server import SimulatorThread


@pytest.fixture(scope="module")
def sim():
    with SimulatorThread(records=1500, seed=7) as thread:
        yield thread.info
