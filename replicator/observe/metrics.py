"""Prometheus metrics of one service, on a registry of its own (no process-wide state).

Counters and histograms are updated where the work happens (backfill progress, each applied batch). Gauges
that depend on the clock (lag, checkpoint age, time to data loss) are computed at scrape time from each
object's `ObjectHealth`, so a stalled stream shows its lag growing even though nothing updates it.

Lag is `now − commitTimestamp` of the newest event applied, except while the stream is caught up (connected,
nothing received and not yet applied): then it is 0, so a quiet org does not look like a stalled replicator.
After a quiet spell the clock restarts from when the stream was last seen caught up, not from the last event.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass, fields

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from ..lifecycle import Phase

PHASES = (Phase.STARTING, Phase.BACKFILLING, Phase.RESYNCING, Phase.STREAMING, Phase.RETRYING, Phase.FAILED)
MODES = ("cdc", "poll")


@dataclass(slots=True)
class ObjectHealth:
    """What the service knows about one object right now (read by the collector and by /readyz)."""

    name: str
    phase: str = Phase.STARTING
    connected: bool = False  # the subscription has a live stream
    idle: bool = False  # caught up: nothing received that is not yet applied
    caught_up_at: float | None = None  # epoch s when last seen caught up
    last_commit: float | None = None  # epoch s: commitTimestamp of the newest event applied
    position_time: float | None = None  # epoch s: how old the stored replay position is (its event's commit)
    checkpoint_saved: float | None = None  # epoch s: when the checkpoint was last committed
    rows_done: int = 0
    rows_expected: int | None = None
    last_error: str | None = None
    mode: str | None = None  # cdc or poll: decided at start-up, switched by the service (app/service.py)
    poll_position: float | None = None  # epoch s: SystemModstamp of the poll position (polled objects)
    refreshed_at: float | None = None  # epoch s: when the object's last refresh finished (pipeline/refresh.py)
    refresh_due_at: float | None = None  # epoch s: when its next refresh is due

    def fail(self, error: str, phase: str = Phase.FAILED) -> None:
        """Not running now, for `error`: FAILED (stopped on an error no retry fixes) or RETRYING (to be tried
        again), shown by /readyz and the metrics."""
        self.phase, self.connected, self.last_error = phase, False, error

    def reset(self) -> None:
        """Nothing runs here now (the object was handed to another replica): what this process knew of it is stale,
        so its gauges go away (a lag would grow here while another replica keeps the object current)."""
        for f in fields(self):
            if f.name != "name":
                setattr(self, f.name, f.default)

    def lag(self, now: float) -> float | None:
        if self.phase == Phase.STREAMING and self.connected and self.idle:
            return 0.0
        fresh = max((t for t in (self.last_commit, self.caught_up_at) if t is not None), default=None)
        return None if fresh is None else max(0.0, now - fresh)

    def time_to_data_loss(self, now: float, retention_s: float) -> float | None:
        if self.phase == Phase.STREAMING and self.connected and self.idle:
            return retention_s
        if self.position_time is None:
            return None
        return retention_s - (now - self.position_time)


# Name, type, labels, meaning: the metrics table of docs/operating.md is generated from this list (replicator/docs.py).
CATALOGUE: list[tuple[str, str, str, str]] = [
    ("replicator_backfill_rows_total", "counter", "object", "Rows loaded by backfills and resyncs."),
    ("replicator_backfill_rows_expected", "gauge", "object", "Rows the running (or last) extract holds."),
    ("replicator_backfill_progress_ratio", "gauge", "object", "Rows loaded / rows expected of the running extract."),
    ("replicator_events_received_total", "counter", "object", "Change events received from the Pub/Sub API."),
    ("replicator_events_applied_total", "counter", "object", "Change events applied (committed with their checkpoint)."),
    ("replicator_rows_written_total", "counter", "object, op", "Row operations applied: upsert, update, delete, skipped (older than the row)."),
    ("replicator_batches_total", "counter", "object", "Apply batches committed."),
    ("replicator_batch_duration_seconds", "histogram", "object", "Time to fold, reconcile and commit one batch."),
    ("replicator_batch_size_events", "histogram", "object", "Events per committed batch."),
    ("replicator_stage_seconds_total", "counter", "object, stage", "Seconds spent per stage of the stream: decode (Avro → changes), fold (classify and fold a batch), reconcile (reads before the commit: rows present, diffs, keys, fetches), commit (the batch's transaction)."),
    ("replicator_lag_seconds", "gauge", "object", "now − commitTimestamp of the newest applied event; 0 while caught up."),
    ("replicator_last_event_commit_timestamp_seconds", "gauge", "object", "commitTimestamp of the newest applied event (epoch)."),
    ("replicator_checkpoint_age_seconds", "gauge", "object", "Seconds since the object's checkpoint was last committed."),
    ("replicator_time_to_data_loss_seconds", "gauge", "object", "Retention (72 h) − age of the oldest unapplied position: below 0, events were purged before being applied."),
    ("replicator_stream_connected", "gauge", "object", "1 while the object's Pub/Sub stream is connected."),
    ("replicator_object_phase", "gauge", "object, phase", "1 for the object's current phase (STARTING, BACKFILLING, RESYNCING, STREAMING, RETRYING, FAILED: stopped on an error no retry fixes)."),
    ("replicator_object_mode", "gauge", "object, mode", "1 for how the object is replicated: cdc (change events) or poll (docs/polling.md)."),
    ("replicator_poll_position_timestamp_seconds", "gauge", "object", "Polled objects: SystemModstamp of the poll position (epoch)."),
    ("replicator_refresh_last_timestamp_seconds", "gauge", "object", "When the last refresh of the columns change events never carry (formula fields, LastActivityDate, LastViewedDate) finished (epoch)."),
    ("replicator_refresh_rows_changed_total", "counter", "object", "Rows whose refreshed columns a refresh changed."),
    ("replicator_gaps_healed_total", "counter", "object", "Records fetched by id to heal gap events and updates of rows not yet present."),
    ("replicator_resyncs_total", "counter", "object", "Resyncs from a fresh Bulk extract (expired replay id, GAP_OVERFLOW, operator request)."),
    ("replicator_dead_letters_total", "counter", "object, source", "Records and events sent to replicator.dead_letters."),
    ("replicator_errors_total", "counter", "object, kind", "Failures that made an object retry, or stop (FAILED), by exception kind."),
    ("replicator_api_calls_total", "counter", "", "REST and Bulk API calls made to Salesforce."),
    ("replicator_api_requests_remaining", "gauge", "", "Daily API requests left, from the last Sforce-Limit-Info header."),
    ("replicator_api_requests_max", "gauge", "", "Daily API request allocation, from the last Sforce-Limit-Info header."),
    ("replicator_postgres_pool_connections", "gauge", "state", "Pool connections: in_use, idle, max."),
    ("replicator_salesforce_requests_total", "counter", "kind", "Salesforce HTTP calls by kind: bulk, query, queryAll, retrieve, getDeleted, getUpdated, describe, sobjects, limits, other."),
    ("replicator_salesforce_limit_max", "gauge", "limit", "The org's allocation from REST /limits (DailyApiRequests, DailyDeliveredPlatformEvents, DailyBulkV2QueryJobs, …)."),
    ("replicator_salesforce_limit_used", "gauge", "limit", "Used of that allocation (Max − Remaining) at the last /limits read."),
    ("replicator_salesforce_limit_exhaustion_seconds", "gauge", "limit", "Projected seconds until the allocation is used up, at the rate between the last two reads (absent while unused)."),
    ("replicator_api_budget_paused", "gauge", "", "1 while poll rounds wait because the org's remaining daily API requests are below salesforce.api_reserve."),
    ("replicator_event_allocation_exhausted", "gauge", "", "1 while the event delivery allocation is used up and streamed objects are polled instead."),
    ("replicator_mode_switches_total", "counter", "object, mode, cause", "Switches between cdc and poll: mode switched to, cause (topic, allocation)."),
    ("replicator_unit_held", "gauge", "unit", "1 for a unit (object:NAME, channel:NAME) this process holds and writes, 0 for one it stands by for (another process holds it; docs/operating.md \"One writer\")."),
    ("replicator_unit_fence", "gauge", "unit, owner", "The fence number of a unit's live lease, labelled with the replica that holds it (owner: its service.replica_id), for each unit this process runs, held here or by another (docs/replicas.md)."),
    ("replicator_unit_lease_age_seconds", "gauge", "unit", "Seconds since the unit's live lease was last renewed (by this process or the one that holds it): above service.lease_s ÷ 3 plus a read, its holder is slow or gone."),
    ("replicator_replicas_live", "gauge", "", "Replicas live on this database (replicator.replicas rows not expired, this one included)."),
    ("replicator_units_fair_share", "gauge", "", "The most units this process takes: the units the live replicas run ÷ live replicas, rounded down, or one more for the first replicas when units are left over (app/fleet.py shares)."),
    ("replicator_fenced_commits_total", "counter", "unit", "Commits refused because this process no longer held the unit's lease (another took it over while this one was paused or cut off): nothing of them was written."),
]

# Histogram buckets, chosen from what the bench measured (bench/RESULTS.md): a batch of the default 2,000 narrow
# events applies in ~0.2–0.3 s at saturation and a quiet stream's batches of 1–10 events in a few ms, so durations
# span 5 ms to 30 s (a 100,000-event transaction took ~16 s). Sizes mark the settings that bound a batch: 1 (a
# lone event), 100 (Pub/Sub's num_requested cap), 2,000 (`stream.batch_max_events`), 100,000 (the largest
# Salesforce transaction, held whole) and 200,000 (`stream.max_transaction_events`).
_BATCH_SIZES = (1, 10, 50, 100, 500, 1000, 2000, 5000, 10_000, 50_000, 100_000, 200_000)
_DURATIONS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)


class Metrics:
    """The service's metrics. `registry` is what `/metrics` serves."""

    def __init__(self, retention_s: float = 72 * 3600):
        self.registry = CollectorRegistry()
        self.retention_s = retention_s
        self.objects: dict[str, ObjectHealth] = {}
        self.client = None  # SalesforceClient: API calls and the daily allocation
        self.store = None  # postgres.store.Store: pool usage
        self.limits = None  # app.limits.OrgLimits: the org's allocations and the API budget
        self.units = None  # app.units.Units: the units this process holds or stands by for
        r = self.registry
        self.backfill_rows = Counter("replicator_backfill_rows", "Rows loaded by backfills.", ["object"], registry=r)
        self.events_received = Counter("replicator_events_received", "Change events received.", ["object"], registry=r)
        self.events_applied = Counter("replicator_events_applied", "Change events applied.", ["object"], registry=r)
        self.rows_written = Counter("replicator_rows_written", "Row operations applied.", ["object", "op"], registry=r)
        self.batches = Counter("replicator_batches", "Apply batches committed.", ["object"], registry=r)
        self.batch_duration = Histogram("replicator_batch_duration_seconds", "Seconds per batch.", ["object"],
                                        buckets=_DURATIONS, registry=r)
        self.batch_size = Histogram("replicator_batch_size_events", "Events per batch.", ["object"],
                                    buckets=_BATCH_SIZES, registry=r)
        self.gaps_healed = Counter("replicator_gaps_healed", "Records fetched by id.", ["object"], registry=r)
        self.resyncs = Counter("replicator_resyncs", "Resyncs.", ["object"], registry=r)
        self.refresh_rows_changed = Counter("replicator_refresh_rows_changed", "Rows a refresh changed.", ["object"],
                                            registry=r)
        self.dead_letters = Counter("replicator_dead_letters", "Dead letters.", ["object", "source"], registry=r)
        self.errors = Counter("replicator_errors", "Failures by kind.", ["object", "kind"], registry=r)
        self.mode_switches = Counter("replicator_mode_switches", "Mode switches.", ["object", "mode", "cause"],
                                     registry=r)
        self.channel_skipped = Counter("replicator_channel_events_skipped", "Change events a channel subscription "
                                       "received for objects it does not serve (not configured, or on a "
                                       "subscription of their own).", ["channel", "object"], registry=r)
        self.fenced_commits = Counter("replicator_fenced_commits", "Commits refused: the unit's lease was lost.",
                                      ["unit"], registry=r)
        self.stage_seconds = Counter("replicator_stage_seconds", "Seconds per stream stage.", ["object", "stage"],
                                     registry=r)
        r.register(_Collector(self))
        self._backfill_seen: dict[str, tuple[int, int]] = {}

    def object(self, name: str) -> ObjectHealth:
        health = self.objects.get(name)
        if health is None:
            health = self.objects[name] = ObjectHealth(name)
            for m in (self.backfill_rows, self.events_received, self.events_applied, self.batches,
                      self.gaps_healed, self.resyncs, self.refresh_rows_changed):
                m.labels(object=name)  # present (at 0) from the start, so rate() works from the first scrape
        return health

    def backfill_progress(self, progress) -> None:
        """Backfill progress callback: counts rows loaded since the last report of the same run."""
        health = self.object(progress.object)
        health.rows_done, health.rows_expected = progress.rows_done, progress.rows_expected
        run, seen = self._backfill_seen.get(progress.object, (None, 0))
        if run != id(progress):  # first report of a run: rows already there (a resumed job) are not new
            self._backfill_seen[progress.object] = (id(progress), progress.rows_done)
            return
        if progress.rows_done > seen:
            self.backfill_rows.labels(object=progress.object).inc(progress.rows_done - seen)
            self._backfill_seen[progress.object] = (run, progress.rows_done)


class _Collector:
    """Clock-dependent gauges, computed at scrape time."""

    def __init__(self, metrics: Metrics):
        self.m = metrics

    def describe(self) -> Iterable[Metric]:
        return []

    def collect(self) -> Iterable[Metric]:
        now = time.time()
        g = {name: GaugeMetricFamily(name, doc, labels=["object"]) for name, kind, labels, doc in CATALOGUE
             if kind == "gauge" and labels == "object"}
        phase = GaugeMetricFamily("replicator_object_phase", "Current phase.", labels=["object", "phase"])
        mode = GaugeMetricFamily("replicator_object_mode", "How the object is replicated.", labels=["object", "mode"])
        for name, h in list(self.m.objects.items()):
            lag = h.lag(now)
            ttl = h.time_to_data_loss(now, self.m.retention_s)
            values = {
                "replicator_lag_seconds": lag,
                "replicator_last_event_commit_timestamp_seconds": h.last_commit,
                "replicator_checkpoint_age_seconds": None if h.checkpoint_saved is None else now - h.checkpoint_saved,
                "replicator_time_to_data_loss_seconds": ttl,
                "replicator_stream_connected": 1.0 if h.connected else 0.0,
                "replicator_backfill_rows_expected": h.rows_expected,
                "replicator_poll_position_timestamp_seconds": h.poll_position,
                "replicator_refresh_last_timestamp_seconds": h.refreshed_at,
                "replicator_backfill_progress_ratio": (
                    min(1.0, h.rows_done / h.rows_expected) if h.rows_expected else None),
            }
            for metric, value in values.items():
                if value is not None:
                    g[metric].add_metric([name], float(value))
            for p in PHASES:
                phase.add_metric([name, p], 1.0 if h.phase == p else 0.0)
            if h.mode is not None:
                for m in MODES:
                    mode.add_metric([name, m], 1.0 if h.mode == m else 0.0)
        yield from g.values()
        yield phase
        yield mode
        held = GaugeMetricFamily("replicator_unit_held", "1 held, 0 standing by.", labels=["unit"])
        if self.m.units is not None:
            for unit in self.m.units.held():
                held.add_metric([unit], 1.0)
            for unit in self.m.units.standby():
                held.add_metric([unit], 0.0)
        yield held
        if (fleet := getattr(self.m.units, "fleet", None)) is not None:
            yield from _fleet_metrics(fleet)
        client = self.m.client
        if client is not None:
            calls = CounterMetricFamily("replicator_api_calls", "REST and Bulk API calls made.")
            calls.add_metric([], float(client.call_count))
            yield calls
            kinds = CounterMetricFamily("replicator_salesforce_requests", "Salesforce calls by kind.",
                                        labels=["kind"])
            for kind, count in sorted(getattr(client, "calls_by_kind", {}).items()):
                kinds.add_metric([kind], float(count))
            yield kinds
            usage = getattr(client, "api_usage", None)
            if usage:
                used, cap = usage
                yield GaugeMetricFamily("replicator_api_requests_remaining", "Daily API requests left.",
                                        value=float(cap - used))
                yield GaugeMetricFamily("replicator_api_requests_max", "Daily API allocation.", value=float(cap))
        if self.m.limits is not None:
            yield from self.m.limits.collect()
        store = self.m.store
        if store is not None:
            conns = GaugeMetricFamily("replicator_postgres_pool_connections", "Pool connections.", labels=["state"])
            size, idle, most = store.usage()
            conns.add_metric(["in_use"], float(size - idle))
            conns.add_metric(["idle"], float(idle))
            conns.add_metric(["max"], float(most))
            yield conns


def _fleet_metrics(fleet) -> Iterable[Metric]:
    """Each unit's holder, fence and lease age, and the replicas sharing the units (app/fleet.py)."""
    fence = GaugeMetricFamily("replicator_unit_fence", "Fence of the unit's live lease.", labels=["unit", "owner"])
    age = GaugeMetricFamily("replicator_unit_lease_age_seconds", "Seconds since the lease's last renewal.",
                            labels=["unit"])
    for unit, owner, number, age_s, _ in fleet.rows():
        fence.add_metric([unit, owner], float(number))
        age.add_metric([unit], round(max(age_s, 0.0), 3))
    yield fence
    yield age
    yield GaugeMetricFamily("replicator_replicas_live", "Live replicas.", value=float(fleet.replicas))
    yield GaugeMetricFamily("replicator_units_fair_share", "Units this process takes at most.", value=float(fleet.share))
