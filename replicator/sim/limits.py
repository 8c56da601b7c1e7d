"""The org's daily allocations: what REST `/limits` reports and what the simulator enforces.

- `DailyApiRequests`: every REST and Bulk API request authenticated with a session (/services/data/vXX.X/…) counts,
  `/limits` included; the versions list and the OAuth token endpoint do not (docs/bulk-rest-oauth.md §2.1). Past
  the allocation, every such request is refused with 403 `REQUEST_LIMIT_EXCEEDED` (REST API Developer Guide,
  "Status Codes and Error Responses",
  https://developer.salesforce.com/docs/atlas.en-us.api_rest.meta/api_rest/errorcodes.htm) and is not counted.
- `DailyDeliveredPlatformEvents`: every event sent to a Pub/Sub subscriber counts, once per subscriber and per
  delivery (Change Data Capture Developer Guide, "Change Data Capture Allocations",
  https://developer.salesforce.com/docs/atlas.en-us.change_data_capture.meta/change_data_capture/cdc_allocations.htm;
  docs/salesforce-coverage.md §3). An event that would pass the allocation is not sent: Subscribe ends with the
  `error-code` `sfdc.platform.eventbus.grpc.subscription.limit.exceeded` and "You have exceeded the event delivery
  limit for your org." (docs/pubsub-cdc.md §4), and a new Subscribe is refused the same way. The gRPC status of
  that error is not documented (docs/pubsub-cdc.md §4 lists it as unknown); this simulator sends
  RESOURCE_EXHAUSTED, and a client should rely on the error code alone. Nothing is lost by it: events stay retained
  on the bus and are delivered after a reset.
- `DailyBulkV2QueryJobs`: query jobs created (docs/bulk-rest-oauth.md §2.1).
- `MonthlyPlatformEventsUsageEntitlement`: present only in an org with the platform events add-on (here: with
  `--monthly-event-entitlement N`, or `monthly_entitlement` set by PUT): the month's entitlement and what is left
  of it after the events delivered this month. Salesforce updates it daily and its Remaining goes negative past
  the entitlement; it is a usage measure, delivery goes on (Platform Events Developer Guide, "Monitor Platform
  Event Publishing and Delivery Usage",
  https://developer.salesforce.com/docs/atlas.en-us.platform_events.meta/platform_events/platform_events_monitor_usage.htm).
  Here it is updated at once, and `reset` (the daily window) leaves the month's count alone.

- getDeleted and getUpdated answer at most 600,000 ids a call; more found is `EXCEEDED_ID_LIMIT`, corrected by
  "choosing start and end dates that are closer together" (REST API Developer Guide, "sObject Get Deleted",
  https://developer.salesforce.com/docs/atlas.en-us.api_rest.meta/api_rest/resources_getdeleted.htm, and "sObject
  Get Updated"; SOAP API Developer Guide, "getDeleted()"). Not a daily allocation, but set here with them:
  `replication_id_limit` lowers it so a test reaches it with a few deletes (rest_replication.py).

Salesforce counts over a rolling 24 h; the simulator counts from its start (or the last reset). Defaults are
large, as a busy real org's allocation is for one client (an Unlimited Edition org's API allocation grows with its
licences; the add-on adds 100,000 events a day): a test or a benchmark that wants to reach them sets them low.

Admin: `GET /__sim/limits` (allocations and usage), `PUT /__sim/limits` with any of `{"api_allocation": N,
"event_allocation": N, "monthly_entitlement": N | null, "replication_id_limit": N, "reset": true}` (`reset` sets the daily usage back to 0,
as a rolling window that has moved on).
"""

from __future__ import annotations

from dataclasses import dataclass

import orjson
from aiohttp import web

from .errors import json_ok

DEFAULT_API_ALLOCATION = 5_000_000
DEFAULT_EVENT_ALLOCATION = 10_000_000
DAILY_BULK_V2_QUERY_JOBS = 10_000  # docs/bulk-rest-oauth.md §2.1
REPLICATION_ID_LIMIT = 600_000  # ids a getDeleted or getUpdated call answers (docs/bulk-rest-oauth.md §3.5)
API_LIMIT_TEXT = "TotalRequests Limit exceeded."
EVENT_LIMIT_CODE = "sfdc.platform.eventbus.grpc.subscription.limit.exceeded"
EVENT_LIMIT_TEXT = "You have exceeded the event delivery limit for your org."


@dataclass
class Allocations:
    api_allocation: int = DEFAULT_API_ALLOCATION
    event_allocation: int = DEFAULT_EVENT_ALLOCATION
    api_used: int = 0
    events_delivered: int = 0
    refused_requests: int = 0  # REST requests answered 403 REQUEST_LIMIT_EXCEEDED
    refused_subscribes: int = 0  # Subscribe calls ended or refused by the delivery allocation
    monthly_entitlement: int | None = None  # MonthlyPlatformEventsUsageEntitlement's Max; None: no add-on
    events_this_month: int = 0  # not reset by `reset` (a daily window)
    replication_id_limit: int = REPLICATION_ID_LIMIT  # more ids than this: EXCEEDED_ID_LIMIT

    def charge_api(self) -> bool:
        """Count one API request; False (not counted) once the allocation is used up."""
        if self.api_used >= self.api_allocation:
            self.refused_requests += 1
            return False
        self.api_used += 1
        return True

    def event_room(self) -> int:
        return max(0, self.event_allocation - self.events_delivered)

    def delivered(self, count: int) -> None:
        self.events_delivered += count
        self.events_this_month += count

    def update(self, body: object) -> None:
        """Apply an admin change; ValueError (nothing changed) for anything but the documented keys."""
        if not isinstance(body, dict):
            raise ValueError("body must be a JSON object")
        keys = ("api_allocation", "event_allocation", "monthly_entitlement", "replication_id_limit")
        unknown = set(body) - {*keys, "reset"}
        if unknown:
            raise ValueError(f"unknown key {sorted(unknown)[0]!r} ({', '.join(keys)}, reset)")
        for key in keys:
            value = body.get(key)
            if key == "monthly_entitlement" and value is None:
                continue  # no add-on
            if key in body and (not isinstance(value, int) or isinstance(value, bool) or value < 0):
                raise ValueError(f"{key} must be an integer ≥ 0")
        if "reset" in body and not isinstance(body["reset"], bool):
            raise ValueError("reset must be true or false")
        self.api_allocation = body.get("api_allocation", self.api_allocation)
        self.event_allocation = body.get("event_allocation", self.event_allocation)
        self.monthly_entitlement = body.get("monthly_entitlement", self.monthly_entitlement)
        self.replication_id_limit = body.get("replication_id_limit", self.replication_id_limit)
        if body.get("reset"):
            self.api_used = self.events_delivered = 0

    def to_dict(self) -> dict:
        return {"api_allocation": self.api_allocation, "api_used": self.api_used,
                "event_allocation": self.event_allocation, "events_delivered": self.events_delivered,
                "refused_requests": self.refused_requests, "refused_subscribes": self.refused_subscribes,
                "monthly_entitlement": self.monthly_entitlement, "events_this_month": self.events_this_month,
                "replication_id_limit": self.replication_id_limit}

    def limits_body(self, jobs_created: int) -> dict:
        """REST `/limits`: `{Name: {Max, Remaining}}` (docs/bulk-rest-oauth.md §2.1)."""
        monthly = {} if self.monthly_entitlement is None else {"MonthlyPlatformEventsUsageEntitlement": {
            "Max": self.monthly_entitlement, "Remaining": self.monthly_entitlement - self.events_this_month}}
        return {
            **monthly,
            "DailyApiRequests": {"Max": self.api_allocation,
                                 "Remaining": max(0, self.api_allocation - self.api_used)},
            "DailyDeliveredPlatformEvents": {"Max": self.event_allocation, "Remaining": self.event_room()},
            "DailyBulkV2QueryJobs": {"Max": DAILY_BULK_V2_QUERY_JOBS,
                                     "Remaining": max(0, DAILY_BULK_V2_QUERY_JOBS - jobs_created)},
            # 1 TB of results and 15,000 batches a day (docs/bulk-rest-oauth.md §2.1)
            "DailyBulkV2QueryFileStorageMB": {"Max": 1_048_576, "Remaining": 1_048_576},
            "DailyBulkApiBatches": {"Max": 15_000, "Remaining": 15_000},
            "ConcurrentAsyncGetReportInstances": {"Max": 200, "Remaining": 200},
        }


def _allocations(request: web.Request) -> Allocations:
    from .state import STATE  # the state module imports this one

    return request.app[STATE].limits


async def get_limits(request: web.Request) -> web.Response:
    return json_ok(_allocations(request).to_dict())


async def put_limits(request: web.Request) -> web.Response:
    allocations = _allocations(request)
    try:
        allocations.update(orjson.loads(await request.read()))
    except (orjson.JSONDecodeError, ValueError) as exc:
        return json_ok({"error": str(exc)}, status=400)
    _wake_subscribers(request.app)
    return json_ok(allocations.to_dict())


def _wake_subscribers(app: web.Application) -> None:
    """After a change, streams waiting for room look again (a reset restores delivery at once)."""
    from .state import STATE

    pubsub = app[STATE].pubsub
    if pubsub is not None:
        pubsub.bus.notify()


def add_routes(app: web.Application) -> None:
    app.router.add_get("/__sim/limits", get_limits)
    app.router.add_put("/__sim/limits", put_limits)
