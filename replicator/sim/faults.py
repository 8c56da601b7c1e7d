"""Fault knobs: settable at start (constructor / CLI) and at run time (PUT /__sim/faults, which merges).

Faults apply to Salesforce endpoints (/services/...) only, never to /__sim/. The Pub/Sub knobs (keepalive,
retention, duplicates, gap size, overflow threshold) shape the gRPC side and change capture (cdc.py).
"""

from __future__ import annotations

import random
from dataclasses import asdict, dataclass, fields

KNOB_HELP = {
    "error_500_rate": "probability (0..1) that a Salesforce request fails with 500 UNKNOWN_EXCEPTION",
    "error_503_rate": "probability (0..1) that a Salesforce request fails with 503 SERVER_UNAVAILABLE",
    "limit_exceeded_rate": "probability (0..1) that a REST request fails with 403 REQUEST_LIMIT_EXCEEDED",
    "latency_ms": "added latency per Salesforce request, milliseconds",
    "token_idle_seconds": "an access token unused for this long expires (Salesforce default: 120 min, "
                          "docs/bulk-rest-oauth.md §4.2)",
    "fail_jobs": "the next N created query jobs end in state Failed",
    "fail_jobs_object": "with fail_jobs: only query jobs on this object take a failure (empty: any object)",
    "malformed_rows": "N records of the NEXT completed job's results are rendered with one column missing",
    "hold_jobs": "while true, query jobs wait in UploadComplete (lets tests observe a job before completion)",
    "failed_job_error_message": "include `errorMessage` in Failed job info (optional: "
                                "docs/bulk-rest-oauth.md §1.3)",
    "keepalive_seconds": "Subscribe: empty FetchResponse with latest_replay_id after this long without events "
                         "while events are owed (Salesforce: within 270 s, docs/pubsub-cdc.md §3)",
    "retention_seconds": "events older than this are expired (Salesforce: 72 h, docs/pubsub-cdc.md §3)",
    "retention_events": "at most this many events are kept (memory bound; the oldest expire first)",
    "duplicate_rate": "probability (0..1) that Subscribe delivers an event twice (same replay id)",
    "stream_close_seconds": "Subscribe: end every stream with UNAVAILABLE (no error-code) this many seconds "
                            "after it started, like a network cut (docs/pubsub-cdc.md §4); 0 = never",
    "stream_close_rate": "Subscribe: probability (0..1) that a stream ends with UNAVAILABLE right after a "
                         "FetchResponse",
    "keepalive_ahead": "Subscribe: a keepalive's latest_replay_id runs this many positions past the newest "
                       "event, as if other orgs' events went by on the shared bus (replay tightening, "
                       "docs/pubsub-cdc.md §3); 0 = off",
    "timestamp_precision": "s (default), or ms for comparison: stamp every SystemModstamp, LastModifiedDate, CreatedDate, datetime value "
                           "set through /__sim/changes, commitTimestamp and job timestamp in whole seconds, as "
                           "Salesforce does (datetime fields store no milliseconds: docs/salesforce-coverage.md, "
                           "Time and visibility)",
    "gap_event_bytes": "a change event whose encoding exceeds this becomes a GAP_* event (Salesforce: 1 MB, "
                       "docs/pubsub-cdc.md §7)",
    "overflow_threshold": "changes per transaction before GAP_OVERFLOW (Salesforce: 100,000, "
                          "docs/pubsub-cdc.md §7)",
    "diff_fields": "on: a large text value of an UPDATE travels as a unified diff listed in diffFields when "
                   "Salesforce's rules allow (docs/pubsub-cdc.md §6, diffFields contents), as Salesforce "
                   "does (default); off: full values",
    "silent_changes": "on: the traffic generator now and then sets LastViewedDate or LastActivityDate of a record "
                      "with no change event and no new SystemModstamp, as Salesforce does (docs/salesforce-"
                      "coverage.md §2) (default); off: it never does",
}

# The knobs that take one of a few words.
KNOB_CHOICES = {"timestamp_precision": ("ms", "s"), "diff_fields": ("on", "off"), "silent_changes": ("on", "off")}


@dataclass
class Faults:
    error_500_rate: float = 0.0
    error_503_rate: float = 0.0
    limit_exceeded_rate: float = 0.0
    latency_ms: float = 0.0
    token_idle_seconds: float = 7200.0
    fail_jobs: int = 0
    fail_jobs_object: str = ""
    malformed_rows: int = 0
    hold_jobs: bool = False
    failed_job_error_message: bool = False
    keepalive_seconds: float = 270.0
    retention_seconds: float = 259_200.0
    retention_events: int = 1_000_000
    duplicate_rate: float = 0.0
    timestamp_precision: str = "s"
    stream_close_seconds: float = 0.0
    stream_close_rate: float = 0.0
    keepalive_ahead: int = 0
    gap_event_bytes: int = 1_000_000
    overflow_threshold: int = 100_000
    diff_fields: str = "on"
    silent_changes: str = "on"

    def __post_init__(self) -> None:
        self.rng = random.Random(0)

    def to_dict(self) -> dict:
        return asdict(self)

    def update(self, changes: dict) -> None:
        """Merge `changes` into the knobs; raise ValueError naming the first bad key."""
        types = {f.name: f.type for f in fields(self)}
        staged = {}
        for key, value in changes.items():
            if key not in types:
                raise ValueError(f"unknown fault knob: {key}")
            kind = types[key]
            if key in KNOB_CHOICES:
                if value not in KNOB_CHOICES[key]:
                    raise ValueError(f"{key} must be one of: {', '.join(KNOB_CHOICES[key])}")
            elif kind == "bool":
                if not isinstance(value, bool):
                    raise ValueError(f"{key} must be a boolean")
            elif kind == "str":
                if not isinstance(value, str):
                    raise ValueError(f"{key} must be a string")
            elif isinstance(value, bool) or not isinstance(value, int | float):
                raise ValueError(f"{key} must be a number")
            elif value < 0 or (key.endswith("_rate") and value > 1):
                raise ValueError(f"{key} out of range")
            staged[key] = int(value) if kind == "int" else float(value) if kind == "float" else value
        for key, value in staged.items():
            setattr(self, key, value)

    @property
    def whole_seconds(self) -> bool:
        return self.timestamp_precision == "s"

    def roll(self, rate: float) -> bool:
        return rate > 0 and self.rng.random() < rate

    def take_failed_job(self, object_name: str) -> bool:
        if self.fail_jobs > 0 and self.fail_jobs_object in ("", object_name):
            self.fail_jobs -= 1
            return True
        return False

    def take_malformed_rows(self) -> int:
        n, self.malformed_rows = self.malformed_rows, 0
        return n
