"""helpers.running_service, the tests' one way to run the service in this process: a service that ends before the
test's condition fails the test at once with its own error; a failing body still stops the service."""

from __future__ import annotations

import asyncio
import time

import pytest

from replicator.model import ConfigError

from .helpers import running_service, settings_for


def _left_running() -> list[str]:
    return [name for t in asyncio.all_tasks() if t is not asyncio.current_task()
            if (name := t.get_coro().__qualname__).startswith(("Service.", "RefreshSchedule.", "OrgLimits."))]


async def test_a_service_that_ends_before_the_condition_raises_its_own_error_at_once(sim, pg_url):
    settings = settings_for(sim, pg_url, "ends", salesforce={"pubsub_endpoint": sim["pubsub_endpoint"]},
                            objects={"Acount": {}})  # misspelled: nothing left to run
    started = time.monotonic()
    with pytest.raises(ConfigError, match="nothing left to run.*Acount"):
        async with running_service(settings):
            pytest.fail("the body ran, though the service never streamed")
    assert time.monotonic() - started < 60  # not the deadline (120 s)
    assert _left_running() == []


async def test_a_failing_body_stops_the_service_and_its_error_is_the_tests(sim, pg_url):
    settings = settings_for(sim, pg_url, "body", salesforce={"pubsub_endpoint": sim["pubsub_endpoint"]},
                            objects={"Account": {}})
    with pytest.raises(AssertionError, match="the body's own failure"):
        async with running_service(settings, until=None) as svc:
            raise AssertionError("the body's own failure")
    assert svc.stop.is_set()
    assert _left_running() == []
