"""The org's allocations, read from REST `/limits` on a schedule, and the API budget that scheduled work asks.

- Every `salesforce.limits_interval_s` (one API request each): `{Name: {Max, Remaining}}` for the allocations in
  `WATCHED` (docs/bulk-rest-oauth.md §2.1; docs/salesforce-coverage.md §3). Metrics per limit: allocation, used,
  and projected exhaustion (seconds until Remaining reaches 0 at the rate seen between the last two reads). A
  warning when one passes 80% used, and a line when it falls back below.
- The API budget (`Budget.allows()`): false while DailyApiRequests Remaining / Max is below
  `salesforce.api_reserve`; poll rounds are not started meanwhile (the formula refresh asks it too), streams go on.
  The share is taken from the freshest source: the `Sforce-Limit-Info` header of the last response (it carries
  the same DailyApiRequests count, docs/bulk-rest-oauth.md §2.1), else the last `/limits` read. A 403
  REQUEST_LIMIT_EXCEEDED on `/limits` itself counts as nothing left. One log line and a metric on each change.
- The event delivery allocation: a stream that ends with `subscription.limit.exceeded` marks it exhausted
  (`events_exhausted()`); streams come back (`events_available()`) once a `/limits` read made after that shows
  DailyDeliveredPlatformEvents Remaining at `EVENTS_RESUME_SHARE` of Max or more. Salesforce's allocation is a
  rolling 24 h window (Change Data Capture Developer Guide, "Change Data Capture Allocations",
  https://developer.salesforce.com/docs/atlas.en-us.change_data_capture.meta/change_data_capture/cdc_allocations.htm):
  resuming at the first free event would exhaust it again at once, and every switch costs a capture and a poll
  round, so streams wait for a tenth of the allocation.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterable
from dataclasses import dataclass

import structlog
from prometheus_client.core import GaugeMetricFamily, Metric

from ..model import ApiLimitError, ReplicatorError
from ..pipeline.stopping import sleep_or_stop
from ..retry import stop_ends_waits

log = structlog.get_logger(__name__)

API_REQUESTS = "DailyApiRequests"
DELIVERED_EVENTS = "DailyDeliveredPlatformEvents"
# The allocations watched (Platform Events Developer Guide, "Monitor Platform Event Publishing and Delivery
# Usage", https://developer.salesforce.com/docs/atlas.en-us.platform_events.meta/platform_events/platform_events_monitor_usage.htm;
# docs/bulk-rest-oauth.md §2.1). MonthlyPlatformEventsUsageEntitlement appears only with the add-on, and its
# Remaining can go negative.
WATCHED = (API_REQUESTS, DELIVERED_EVENTS, "MonthlyPlatformEventsUsageEntitlement", "DailyBulkV2QueryJobs")
WARN_SHARE = 0.8  # used / Max that logs a warning
EVENTS_RESUME_SHARE = 0.1  # Remaining / Max of DailyDeliveredPlatformEvents before streams resume


@dataclass(slots=True)
class Reading:
    max: int
    remaining: int
    at: float  # epoch s of the read
    rate: float | None = None  # used per second between the last two reads

    @property
    def used(self) -> int:
        return self.max - self.remaining

    def exhaustion_s(self) -> float | None:
        """Seconds until nothing is left at the current rate; None when nothing is being used."""
        if self.remaining <= 0:
            return 0.0
        return self.remaining / self.rate if self.rate else None


class OrgLimits:
    """The allocation watcher and the API budget of one service (one org)."""

    def __init__(self, client, reserve: float = 0.2, interval_s: float = 300.0):
        self.client, self.reserve, self.interval_s = client, reserve, interval_s
        self.readings: dict[str, Reading] = {}
        self.reads = 0
        self.api_paused = False
        self.events_exhausted_at: float | None = None
        self._warned: set[str] = set()

    @stop_ends_waits
    async def run(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            await self.refresh()
            await sleep_or_stop(stop, self.interval_s)

    async def refresh(self) -> None:
        """One read of `/limits`; a failure is logged and the last readings are kept."""
        try:
            body = await self.client.limits_once()
        except ApiLimitError as exc:
            last = self.readings.get(API_REQUESTS)
            if last is not None:
                self.readings[API_REQUESTS] = Reading(last.max, 0, time.time(), last.rate)
            log.warning("limits.read_refused", error=str(exc), action="API requests exhausted; polling paused")
            self._check_budget()
            return
        except ReplicatorError as exc:
            log.warning("limits.read_failed", error=str(exc), retry_in_s=self.interval_s)
            return
        now = time.time()
        for name in WATCHED:
            entry = body.get(name)
            if isinstance(entry, dict) and isinstance(entry.get("Max"), int) and isinstance(entry.get("Remaining"), int):
                self._record(name, entry["Max"], entry["Remaining"], now)
        self.reads += 1
        self._check_budget()

    def _record(self, name: str, most: int, remaining: int, now: float) -> None:
        prev = self.readings.get(name)
        rate = None
        if prev is not None and prev.max == most and now > prev.at:
            rate = max(0.0, (prev.remaining - remaining) / (now - prev.at))
        reading = self.readings[name] = Reading(most, remaining, now, rate)
        share = reading.used / most if most > 0 else 0.0
        if share >= WARN_SHARE and name not in self._warned:
            self._warned.add(name)
            log.warning("limits.high", limit=name, used=reading.used, max=most, used_pct=round(100 * share, 1),
                        exhaustion_s=reading.exhaustion_s())
        elif share < WARN_SHARE and name in self._warned:
            self._warned.discard(name)
            log.info("limits.normal", limit=name, used=reading.used, max=most)

    # -- the API budget ---------------------------------------------------------------------------------------
    def api_share(self) -> float | None:
        """Remaining / Max of the org's daily API requests, from the freshest source; None when unknown."""
        usage = getattr(self.client, "api_usage", None)
        if usage and usage[1] > 0:
            return max(0, usage[1] - usage[0]) / usage[1]
        reading = self.readings.get(API_REQUESTS)
        if reading is None or reading.max <= 0:
            return None
        return max(0, reading.remaining) / reading.max

    def allows(self) -> bool:
        """May scheduled API work (a poll round, a formula refresh) start now? Streams never ask."""
        self._check_budget()
        return not self.api_paused

    def _check_budget(self) -> None:
        share = self.api_share()
        paused = self.reserve > 0 and share is not None and share < self.reserve
        if paused == self.api_paused:
            return
        self.api_paused = paused
        if paused:
            log.warning("limits.api_budget_paused", remaining_pct=round(100 * share, 1),
                        reserve_pct=round(100 * self.reserve, 1),
                        action="poll rounds and refreshes wait until the org's daily API requests recover; "
                               "streams go on (salesforce.api_reserve)")
        else:
            log.info("limits.api_budget_resumed", remaining_pct=round(100 * (share or 0), 1))

    # -- the event delivery allocation ------------------------------------------------------------------------
    def events_exhausted(self, error: str) -> None:
        """A stream ended with `subscription.limit.exceeded`: change events wait for the next /limits read."""
        if self.events_exhausted_at is None:
            log.error("limits.event_allocation_exhausted", error=error,
                      action="streamed objects switch to polling until /limits shows room "
                             f"({DELIVERED_EVENTS} remaining ≥ {EVENTS_RESUME_SHARE:.0%})")
        self.events_exhausted_at = time.time()

    def events_available(self) -> bool:
        """May objects stream change events? False from an exhaustion until a later read shows room."""
        if self.events_exhausted_at is None:
            return True
        reading = self.readings.get(DELIVERED_EVENTS)
        if reading is None or reading.at <= self.events_exhausted_at or reading.max <= 0:
            return False
        if reading.remaining / reading.max < EVENTS_RESUME_SHARE:
            return False
        log.info("limits.event_allocation_available", remaining=reading.remaining, max=reading.max)
        self.events_exhausted_at = None
        return True

    # -- metrics ----------------------------------------------------------------------------------------------
    def collect(self) -> Iterable[Metric]:
        most = GaugeMetricFamily("replicator_salesforce_limit_max", "Allocation.", labels=["limit"])
        used = GaugeMetricFamily("replicator_salesforce_limit_used", "Used of the allocation.", labels=["limit"])
        ends = GaugeMetricFamily("replicator_salesforce_limit_exhaustion_seconds", "Seconds until exhausted.",
                                 labels=["limit"])
        for name, r in list(self.readings.items()):
            most.add_metric([name], float(r.max))
            used.add_metric([name], float(r.used))
            left = r.exhaustion_s()
            if left is not None:
                ends.add_metric([name], left)
        yield from (most, used, ends)
        yield GaugeMetricFamily("replicator_api_budget_paused", "1 while scheduled API work waits.",
                                value=1.0 if self.api_paused else 0.0)
        yield GaugeMetricFamily("replicator_event_allocation_exhausted", "1 while change events wait.",
                                value=0.0 if self.events_exhausted_at is None else 1.0)
