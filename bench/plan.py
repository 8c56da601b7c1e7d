"""What a `python -m bench` run measures and at what sizes: a `Plan`, full or quick (the CI smoke test,
tests/integration/test_bench.py), which every scenario of bench/scenarios.py takes."""

from __future__ import annotations

from dataclasses import dataclass, field

# Salesforce's overflow threshold: "An overflow event is generated when a single transaction contains more than
# 100,000 changes" (Overflow Events, Change Data Capture Developer Guide:
# https://developer.salesforce.com/docs/atlas.en-us.change_data_capture.meta/change_data_capture/cdc_other_events_overflow.htm;
# docs/pubsub-cdc.md, section 7)
OVERFLOW_THRESHOLD = 100_000

# The quick run's one transitions sequence (about 25 s), fixed rather than drawn: a second process, the first killed
# under it (the second takes over, a new first stands by), then the holder paused past its lease (the first takes
# over; the paused one's commits are fenced).
QUICK_TRANSITIONS = "replica:start; traffic:100; replica:killfirst; replica:pause; traffic:100"


@dataclass
class Plan:
    quick: bool
    repeat: int
    server_url: str
    records: int = 1_000_000  # backfill sweeps over page size and parallelism
    record_counts: list[int] = field(default_factory=lambda: [100_000, 1_000_000, 5_000_000])
    page_sizes: list[int] = field(default_factory=lambda: [10_000, 50_000, 100_000, 250_000])
    parallel: list[int] = field(default_factory=lambda: [1, 2, 3, 4, 5])
    stream_records: int = 20_000
    stream_events: int = 30_000
    batch_sizes: list[int] = field(default_factory=lambda: [100, 500, 2_000, 10_000])
    num_requested: list[int] = field(default_factory=lambda: [1, 10, 50, 100])
    collisions: list[float] = field(default_factory=lambda: [0.0, 0.5, 0.9])
    rates: list[int] = field(default_factory=lambda: [1_000, 2_000, 3_000, 5_000, 10_000, 20_000])
    lag_seconds: float = 10.0
    ceiling_events: int = 20_000
    burst_events: int = 60_000
    burst_lag_rates: list[int] = field(default_factory=lambda: [1_000, 10_000])
    # Another checkout (a worktree with its own .venv) whose burst drain is measured beside this one's, alternated.
    against: str | None = None
    peer_records: int = 200_000
    width_records: int = 200_000
    limit_events: int = 50
    transaction_changes: int = OVERFLOW_THRESHOLD
    e2e_records: int = 200_000  # per object, 4 objects
    e2e_changes: int = 100_000
    e2e_rate: int = 5_000
    e2e_kills: list[int] = field(default_factory=lambda: [0, 10])
    chaos_records: int = 20_000  # per object, 4 objects
    chaos_changes: int = 20_000
    chaos_rate: int = 1_000
    chaos_kills: int = 16  # during the traffic, plus chaos_backfill_kills during the backfill: 20 in all
    chaos_backfill_kills: int = 4
    chaos_runs: int = 3
    chaos_history: bool = False  # every object keeps history; verify --history must be equal too (bench/chaos.py)
    chaos_limit_errors: bool = True  # 1% 403 REQUEST_LIMIT_EXCEEDED among the faults (not in quick runs: chaos.faults_of)
    transitions_sequences: int = 20
    transitions_seed: int = 1  # sequences use seeds transitions_seed, transitions_seed + 1, …
    transitions_length: tuple[int, int] = (5, 15)  # operations a sequence
    transitions_kinds: list[str] | None = None  # None: every kind (pgrestart only with an own Postgres)
    transitions_ops: str | None = None  # one sequence given by hand ("kill; mode:Contact:poll"), to minimise
    transitions_own_postgres: bool = False
    transitions_progress: str | None = None  # a JSON line per finished sequence is appended here
    transitions_lookback: float = 0  # poll.lookback_s of the service under test (bench/transitions.py LOOKBACK_S)
    transitions_minimise: bool = False  # after the run, shrink each failing sequence to its fewest operations
    transitions_fixed: list[str] | None = None  # sequences given as lists (quick runs), instead of drawn ones
    fleet_duration: float = 180.0  # seconds of faults (bench/fleet.py)
    fleet_rate: float = 30.0  # creates and updates a second per org, throughout
    fleet_records: int = 500  # per object, 4 objects, 3 orgs
    fleet_lease_s: float = 6.0  # service.lease_s of the replicas (the default is 15)
    fleet_seed: int = 1

    def db(self, name: str) -> str:
        """A scenario's database name: quick runs (the CI smoke test) use their own, so a quick run never drops
        the database of a full run in progress on the same server."""
        return f"replicator_bench{'q' if self.quick else ''}{name}"

    @classmethod
    def make(cls, quick: bool, repeat: int | None, server_url: str) -> Plan:
        if not quick:
            return cls(False, repeat or 3, server_url)
        return cls(True, repeat or 1, server_url, records=6_000, record_counts=[2_000, 6_000],
                   page_sizes=[1_000, 6_000], parallel=[1, 3], stream_records=2_000, stream_events=1_500,
                   batch_sizes=[100, 2_000], num_requested=[10, 100], width_records=1_000, limit_events=5, collisions=[0.0, 0.9], rates=[300, 600], lag_seconds=3.0,
                   transaction_changes=1_000,
                   ceiling_events=1_000, burst_events=2_000, burst_lag_rates=[], e2e_records=2_000, e2e_changes=4_000, e2e_rate=2_000, e2e_kills=[0, 2],
                   chaos_records=1_600, chaos_changes=3_000, chaos_rate=1_000, chaos_kills=2, chaos_backfill_kills=1,
                   chaos_runs=1, chaos_limit_errors=False, transitions_sequences=2, transitions_length=(5, 5),
                   transitions_fixed=[QUICK_TRANSITIONS], fleet_duration=40.0, fleet_records=200)
