"""The allocation watcher and API budget (app/limits.py) against the simulator's REST `/limits` over HTTPS:
readings, projected exhaustion, the 80% warning, the budget closing below `api_reserve` and on 403
REQUEST_LIMIT_EXCEEDED, and calls counted by kind (salesforce/client.py)."""

from __future__ import annotations

import ssl

import httpx
import pytest
from structlog.testing import capture_logs

from replicator.app.limits import OrgLimits
from replicator.salesforce.client import call_kind
from replicator.sim.server import SimulatorThread


@pytest.fixture(scope="module")
def sim():
    with SimulatorThread(records=20, seed=4) as running:
        yield running.info


def _admin(sim, body: dict) -> dict:
    r = httpx.put(sim["instance_url"] + "/__sim/limits", json=body,
                  verify=ssl.create_default_context(cafile=sim["ca_file"]))
    assert r.status_code == 200, r.text
    return r.json()


async def test_readings_rate_and_projected_exhaustion(sf, sim):
    _admin(sim, {"api_allocation": 1000, "event_allocation": 500, "reset": True})
    limits = OrgLimits(sf, reserve=0.2)
    await limits.refresh()
    first = limits.readings["DailyApiRequests"]
    assert first.max == 1000 and first.remaining == 999  # the read itself counts
    assert limits.readings["DailyDeliveredPlatformEvents"].max == 500
    assert limits.readings["DailyBulkV2QueryJobs"].max == 10_000
    assert first.exhaustion_s() is None  # no rate from a single read
    for _ in range(9):
        await sf.describe_global()
    await limits.refresh()
    second = limits.readings["DailyApiRequests"]
    assert second.remaining == 989 and second.rate > 0
    assert second.exhaustion_s() == pytest.approx(989 / second.rate)
    assert limits.allows() and not limits.api_paused


async def test_warning_at_80_percent_and_budget_below_the_reserve(sf, sim):
    _admin(sim, {"api_allocation": 100, "reset": True})
    limits = OrgLimits(sf, reserve=0.2)
    for _ in range(78):
        await sf.describe_global()
    with capture_logs() as logs:
        await limits.refresh()  # 79 used, 21 left: under way to the warning, budget open
        assert limits.allows()
        await sf.describe_global()
        await limits.refresh()  # 81 used: warning; 19% left < 20%: budget closed
        assert not limits.allows()
        assert not limits.allows()  # one line on entering, not one per ask
    events = [e["event"] for e in logs]
    assert events.count("limits.high") == 1 and events.count("limits.api_budget_paused") == 1
    _admin(sim, {"api_allocation": 1000})
    await limits.refresh()
    assert limits.allows()


async def test_a_refused_limits_read_closes_the_budget_at_once(sf, sim):
    _admin(sim, {"api_allocation": 5, "reset": True})
    limits = OrgLimits(sf, reserve=0.2)
    await limits.refresh()
    while limits.readings["DailyApiRequests"].remaining > 0:
        await limits.refresh()
    sf.api_usage = None  # only the /limits reading decides now
    with capture_logs() as logs:
        await limits.refresh()  # 403 REQUEST_LIMIT_EXCEEDED, not retried
    assert "limits.read_refused" in [e["event"] for e in logs]
    assert not limits.allows() and limits.readings["DailyApiRequests"].remaining == 0
    _admin(sim, {"api_allocation": 5_000_000, "reset": True})
    await limits.refresh()
    assert limits.allows()


async def test_event_allocation_resumes_only_after_a_later_read_shows_room(sf, sim):
    _admin(sim, {"event_allocation": 1000, "reset": True})
    limits = OrgLimits(sf, reserve=0.2)
    await limits.refresh()
    limits.events_exhausted("ApiLimitError: subscription.limit.exceeded")
    assert not limits.events_available()  # the reading predates the exhaustion
    await limits.refresh()
    assert limits.events_available() and limits.events_exhausted_at is None


def test_calls_are_counted_by_kind():
    cases = {"queryAll": "queryAll", "/services/data/v62.0/query/01g-2000": "query", "jobs/query": "bulk",
             "/services/data/v62.0/jobs/query/750/results?locator=x": "bulk", "composite/sobjects/Account": "retrieve",
             "sobjects/Account/deleted/": "getDeleted", "sobjects/Account/describe/": "describe",
             "sobjects/": "sobjects", "limits": "limits", "/services/data/": "other"}
    assert {path: call_kind(path) for path in cases} == cases


async def test_the_monthly_entitlement_is_read_where_present_and_its_overrun_warned(sf, sim):
    _admin(sim, {"monthly_entitlement": None, "reset": True})
    limits = OrgLimits(sf, reserve=0.2)
    await limits.refresh()
    assert "MonthlyPlatformEventsUsageEntitlement" not in limits.readings  # an org without the add-on
    _admin(sim, {"monthly_entitlement": 10})
    await limits.refresh()
    reading = limits.readings["MonthlyPlatformEventsUsageEntitlement"]
    assert (reading.max, reading.remaining) == (10, 10)  # nothing delivered in this org yet
    # past the entitlement Salesforce reports a negative Remaining: warned, and never a reason to stop streaming
    with capture_logs() as logs:
        limits._record("MonthlyPlatformEventsUsageEntitlement", 10, -5, reading.at + 60)
    overrun = limits.readings["MonthlyPlatformEventsUsageEntitlement"]
    assert overrun.used == 15 and overrun.exhaustion_s() == 0.0
    assert [(e["event"], e["limit"], e["used_pct"]) for e in logs] == \
        [("limits.high", "MonthlyPlatformEventsUsageEntitlement", 150.0)]
    assert limits.events_available()
    _admin(sim, {"monthly_entitlement": None})
