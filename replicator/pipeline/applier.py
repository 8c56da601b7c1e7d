"""Applying one object's batches of change events, in steps that read top to bottom:

classify (duplicates skipped, dead letters, resync triggers) → follow schema changes → fold per key →
resolve diffs (text sent as a diff of the stored value) → reconcile (fetch full records for gap events, for
updates of rows the table lacks and for diffs that do not fit) → check keys (fetch both records of a key two
records claim) → commit the rows, the dead letters and the checkpoint in one transaction (docs/design.md,
contracts 2–4 and 9).

The lifecycle around it (subscribe, batch, resync) is pipeline/stream.py.
"""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass, field

import structlog

from ..config import ObjectSettings, Settings
from ..lifecycle import Phase
from ..model import Checkpoint, DeadLetter, RejectedDataError, RowOp, StreamEvent
from ..observe.metrics import Metrics
from ..postgres.apply import ApplyResult, UpdatesMissed
from ..postgres.store import Store
from ..salesforce.diffs import TextDiff, apply_diffs
from ..salesforce.records import records_by_id
from ..salesforce.topics import identifies_record
from ..salesforce.values import decode_rest_value
from .changes import ColumnMap, UnknownFieldError, fold, record_op
from .schema import history_names, object_table

log = structlog.get_logger(__name__)

# Commit → applied lag samples kept for the demo's and the bench's percentiles: the newest 100,000, about 3 MB
# (a float object and a deque slot each); at the ~6,000 events/s one core applies (bench/RESULTS.md) that is
# the last ~17 s of a saturated stream, and minutes of a normal one.
LAG_SAMPLES = 100_000
# Replay ids of the newest applied events, to skip a redelivered event. Pub/Sub redelivers what was in flight
# when a stream broke: at most one batch (`stream.batch_max_events`, ≤ 100,000) plus the 100 events a
# subscription may be owed; 10,000 ids (~1 MB) cover the default batch five times over. An older duplicate is
# still harmless (the version guard skips it); only its count would be off.
RECENT_IDS = 10_000
# Rounds of fetching the records of key collisions in one batch. A collision means a stale row (Salesforce keeps
# the key unique); one round fetches each losing record's current state, a second is needed only when a fetched
# record collides with yet another stale row. What is left after that, the sink settles with dead letters.
KEY_ROUNDS = 3


@dataclass(slots=True)
class StreamStats:
    events: int = 0
    batches: int = 0
    upserts: int = 0
    updates: int = 0
    deletes: int = 0
    skipped: int = 0
    dead_letters: int = 0
    refetched: int = 0
    resyncs: int = 0
    duplicates: int = 0  # events delivered again with a replay id already applied (skipped)
    last_commit_ms: int | None = None
    lags: deque = field(default_factory=lambda: deque(maxlen=LAG_SAMPLES))  # commit → applied, seconds
    # Seconds spent per stage (decode, fold, reconcile, commit), also exported as replicator_stage_seconds_total.
    stages: dict[str, float] = field(default_factory=dict)


@dataclass(slots=True)
class Classified:
    """What a batch holds once duplicates and keepalives are set aside."""

    changes: list = field(default_factory=list)
    dead: list[DeadLetter] = field(default_factory=list)
    delivered: int = 0  # events counted as applied (not keepalives, not duplicates)
    resync_reason: str | None = None


class BatchApplier:
    """Applies one object's batches. `apply()` returns the reason to resync the object, or None."""

    def __init__(self, client, store: Store, settings: Settings, name: str, obj: ObjectSettings, topic: str,
                 metrics: Metrics, stats: StreamStats):
        self.client, self.store, self.settings, self.name, self.obj = client, store, settings, name, obj
        self.topic, self.metrics, self.stats = topic, metrics, stats
        self._recent_ids: set[bytes] = set()
        self._recent_order: deque[bytes] = deque()
        self._schemas_seen: set[str] = set()
        # Schema ids whose fields were compared with a describe made after they appeared: a field of theirs the
        # table lacks is one the configuration leaves out (`objects.X.fields`), not a new one.
        self._schemas_described: set[str] = set()
        self._batch_id = 0
        self._diffs = True  # the batch being applied has changes with diffFields (set by fold)

    async def load_schema(self) -> None:
        """Describe the object and bring its table up to date (columns for fields added in Salesforce)."""
        describe = await self.client.describe(self.name)
        info = object_table(describe, self.settings.postgres.schema_, self.obj, history_names(self.settings, self.obj))
        await self.store.page_sink(info).prepare()
        self.spec, self.cmap = info.spec, ColumnMap(info.spec, describe)
        self.table = info
        self.sink = self.store.stream_sink(info)

    async def apply(self, batch: list[StreamEvent]) -> str | None:
        started = time.monotonic()
        found, rows = await self.prepare(batch)
        t2 = time.perf_counter()
        result = await self.commit(rows, found.dead, self.checkpoint_of(batch), found.delivered,
                                   must_find=not self.looks_up_first())
        self.count_stage("commit", time.perf_counter() - t2)
        self.observe(batch, found, rows, result, time.monotonic() - started)
        return found.resync_reason

    async def prepare(self, batch: list[StreamEvent]) -> tuple[Classified, list[RowOp]]:
        """Every step of `apply` but the commit (timed as the stages fold and reconcile), also for a caller that
        commits several objects' rows and one checkpoint in one transaction (pipeline/channel.py): it commits
        with `must_find` unless `looks_up_first()`, calls `look_up` on UpdatesMissed, `observe` after its commit."""
        t0 = time.perf_counter()
        self._batch_id += 1
        found = self.classify(batch)
        await self.follow_schema(found.changes)
        ops = await self.fold(found.changes)
        t1 = time.perf_counter()
        await self.resolve_diffs(ops)
        await self.reconcile(ops, self.looks_up_first())
        await self.check_keys(ops)
        await self.stamp_deletes(ops)
        self.count_stage("fold", t1 - t0)
        self.count_stage("reconcile", time.perf_counter() - t1)
        return found, list(ops.values())

    def looks_up_first(self) -> bool:
        """Whether the rows of partial updates are looked up before the commit. Only for a table keyed by an
        external id: its key step must see a record this copy lacks whole (fetched). Any other table commits
        without (`must_find`), and only a batch whose update found no row pays the lookup (`look_up`)."""
        return self.spec.key != "id"

    async def look_up(self, rows: list[RowOp]) -> list[RowOp]:
        """After UpdatesMissed: the rows of partial updates looked up; those missing fetched by Id."""
        ops = {op.key: op for op in rows}
        await self.reconcile(ops)
        await self.check_keys(ops)
        return list(ops.values())

    def count_stage(self, stage: str, seconds: float) -> None:
        """Add time spent in a stage of the stream (bench: µs per event by stage; production: a counter)."""
        if seconds > 0:
            self.stats.stages[stage] = self.stats.stages.get(stage, 0.0) + seconds
            self.metrics.stage_seconds.labels(object=self.name, stage=stage).inc(seconds)

    # ---- classify ---------------------------------------------------------------------------------------
    def classify(self, batch: list[StreamEvent]) -> Classified:
        out = Classified()
        for ev in batch:
            if ev.keepalive:
                continue
            if ev.replay_id in self._recent_ids:  # delivered again (same replay id): applied once already
                self.stats.duplicates += 1
                continue
            self._remember(ev.replay_id)
            out.delivered += 1
            if ev.error:
                out.dead.append(DeadLetter(self.name, f"undecodable event: {ev.error}", source="stream",
                                           payload={"replay_id": ev.replay_id.hex(), "schema_id": ev.schema_id,
                                                    "payload_hex": ev.payload.hex()}))
                continue
            for ch in ev.changes:
                if ch.object != self.name:
                    out.dead.append(DeadLetter(ch.object, f"change for an object not configured on {self.topic}",
                                               key=ch.record_id, source="stream",
                                               payload={"replay_id": ev.replay_id.hex(), "type": ch.change_type}))
                elif not identifies_record(ch.change_type, ch.record_id):  # GAP_OVERFLOW, empty or wildcard id
                    out.resync_reason = f"{ch.change_type} for {ch.record_id}"
                else:
                    out.changes.append(ch)
        return out

    def _remember(self, replay_id: bytes) -> None:
        self._recent_ids.add(replay_id)
        self._recent_order.append(replay_id)
        if len(self._recent_order) > RECENT_IDS:
            self._recent_ids.discard(self._recent_order.popleft())

    # ---- schema and fold --------------------------------------------------------------------------------
    async def follow_schema(self, changes: list) -> None:
        """A new schema id means the object's fields changed (docs/pubsub-cdc.md §5): add the
        columns now, even for fields no event has set yet, so the table always has every field Salesforce has."""
        new_schemas = {ch.schema_id for ch in changes if ch.schema_id} - self._schemas_seen
        if not new_schemas:
            return
        if self._schemas_seen:
            log.info("stream.schema_changed", object=self.name, schema_ids=sorted(new_schemas))
            await self.load_schema()
            self._schemas_described |= new_schemas
        self._schemas_seen |= new_schemas

    async def fold(self, changes: list) -> dict[str, RowOp]:
        """Fold the batch's changes per key. A field the table lacks means a field added in Salesforce, or one the
        configuration leaves out: describe again, once per schema id, then leave such fields out."""
        schemas = {ch.schema_id for ch in changes}
        self._diffs = any(ch.diff_fields for ch in changes)
        history = self.table.history is not None
        if schemas <= self._schemas_described:
            return fold(changes, self.cmap, strict=False, history=history)
        try:
            return fold(changes, self.cmap, history=history)
        except UnknownFieldError as exc:
            log.info("stream.schema_checked", object=self.name, fields=sorted(exc.fields), schema_ids=sorted(schemas))
            await self.load_schema()
            self._schemas_described |= schemas
            return fold(changes, self.cmap, strict=False, history=history)

    # ---- resolve diffs ----------------------------------------------------------------------------------
    async def resolve_diffs(self, ops: dict[str, RowOp]) -> None:
        """Fields sent as diffs (diffFields, salesforce/diffs.py) become values: each diff applies to the value
        Postgres holds and must reproduce the SHA-256 it names. One that does not (the row is missing, or holds
        another value than the one the diff was made from) turns the operation into a fetch of the record."""
        if not self._diffs:  # no change of the batch named diffFields: no value is a TextDiff (the usual batch)
            return
        pending = {k: [c for c, v in o.values.items() if isinstance(v, TextDiff)] for k, o in ops.items()}
        pending = {k: cols for k, cols in pending.items() if cols}
        if not pending:
            return
        stored = await self.sink.current_values(list(pending), sorted({c for cols in pending.values() for c in cols}))
        for key, cols in pending.items():
            op, row = ops[key], stored.get(key, {})
            values = dict(op.values)
            for col in cols:
                base = row.get(col)
                values[col] = apply_diffs(base, values[col]) if isinstance(base, str) else None
                if values[col] is None:
                    log.info("stream.diff_not_applicable", object=self.name, record_id=key, column=col,
                             action="fetch the record")
                    ops[key] = RowOp(key, "refetch", version=op.version, commit_ms=op.commit_ms, position=op.position,
                                     steps=op.steps)
                    break
            else:
                op.values = values
                if op.steps:  # history: the folded value stands for the diffs' steps (one version, the last)
                    op.steps = op.steps[-1:]

    # ---- reconcile --------------------------------------------------------------------------------------
    async def reconcile(self, ops: dict[str, RowOp], look_up: bool = True) -> None:
        """Gap events, and updates of rows we do not have (with `look_up`: else the commit finds them,
        `looks_up_first`): fetch the full records by id (≤2,000 a call)."""
        updates = [k for k, o in ops.items() if o.kind == "update"] if look_up else []
        if updates:
            have = await self.sink.existing_ids(updates)
            for k in updates:
                if k not in have:
                    ops[k] = RowOp(k, "refetch", version=ops[k].version, commit_ms=ops[k].commit_ms,
                                   position=ops[k].position, steps=ops[k].steps)
        await self._fetch(ops, [k for k, o in ops.items() if o.kind == "refetch"])

    async def stamp_deletes(self, ops: dict[str, RowOp]) -> None:
        """Soft deletes (the row stays, marked deleted): a DELETE event carries no LastModifiedDate, and its commit
        time is not the record's SystemModstamp (a transaction that commits in a later second than its save), so the
        deleted records' SystemModstamp is read by Id (queryAll, which returns records in the Recycle Bin; one call
        per IDS_PER_QUERY records) and the row takes it (a soft delete with values is one write at the delete's version,
        postgres/apply.py `_writes`). A record no longer deleted (undeleted since: its UNDELETE
        event follows) or gone for good keeps the commit time, the nearest the event tells."""
        if not (self.sink.soft and self.sink.has_modstamp):
            return
        wanted = [k for k, o in ops.items() if o.kind == "delete" and "systemmodstamp" not in o.values]
        if not wanted:
            return
        found = await records_by_id(self.client, self.name, ["SystemModstamp", "IsDeleted"], wanted,
                                    include_deleted=True)
        for key in wanted:
            record = found.get(key)
            if record and record.get("IsDeleted") and record.get("SystemModstamp"):
                ops[key].values["systemmodstamp"] = decode_rest_value(record["SystemModstamp"], "timestamptz")

    async def _fetch(self, ops: dict[str, RowOp], wanted: list[str]) -> None:
        """Replace the operations of these records (each must be in `ops`) by their current state, fetched by Id."""
        if not wanted:
            return
        records = await self.client.retrieve(self.name, wanted, self.spec.fields)
        self.stats.refetched += len(wanted)
        self.metrics.gaps_healed.labels(object=self.name).inc(len(wanted))
        gone = [key for key, record in zip(wanted, records, strict=True) if record is None]
        # Records sObject Collections no longer returns are deleted: queryAll by id still has them.
        deleted = await records_by_id(self.client, self.name, self.spec.fields, gone, include_deleted=True) if gone else {}
        for key, record in zip(wanted, records, strict=True):
            record = record or deleted.get(key)
            position = ops[key].position  # fetched after this event arrived: its state is at least that new
            steps = ops[key].steps
            if record is None:  # never visible to us: delete at the event's version
                ops[key] = RowOp(key, "delete", version=ops[key].version, commit_ms=ops[key].commit_ms,
                                 position=position)
            else:  # a deleted record keeps its last values (soft delete), like the org's recycle bin
                ops[key] = record_op(record, self.spec, ops[key].commit_ms)
                ops[key].position = position
            ops[key].steps = steps

    async def check_keys(self, ops: dict[str, RowOp]) -> None:
        """A table keyed by an external id: when two records claim one key (a record of the batch and another
        one's row, or two of the batch), Salesforce, where the key is unique, says one of them is stale here: the
        copy missed the change that took the key away. The newer claim wins (the sink's rule, apply.py); the
        loser is fetched again by Id now, so the batch commits its current state, and again in case that state
        collides with another stale row (`KEY_ROUNDS`). A record fetched once is not fetched again: what still
        collides is left to the sink, which removes the older row with a dead letter naming both Ids."""
        if self.spec.key == "id":
            return
        fetched: set[str] = set()
        for _ in range(KEY_ROUNDS):
            losers = [k for k in await self.sink.key_conflicts(list(ops.values())) if k not in fetched]
            if not losers:
                return
            log.info("stream.key_conflicts_fetched", object=self.name, records=losers,
                     action="fetch the records again by Id")
            latest = max((o.commit_ms for o in ops.values()), default=0)
            for key in losers:  # a row displaced without a change of its own in the batch is fetched too
                op = ops.get(key) or RowOp(key, "refetch", version=(latest, 0, 0), commit_ms=latest)
                ops[key] = RowOp(key, "refetch", version=op.version, commit_ms=op.commit_ms, position=op.position,
                                 steps=op.steps)
            fetched.update(losers)
            await self._fetch(ops, losers)

    # ---- commit -----------------------------------------------------------------------------------------
    def checkpoint_of(self, batch: list[StreamEvent]) -> Checkpoint:
        commits = [e.commit_timestamp for e in batch if e.commit_timestamp]
        return Checkpoint(self.topic, batch[-1].replay_id, max(commits) if commits else None)

    async def commit(self, ops: list[RowOp], dead: list[DeadLetter], checkpoint: Checkpoint | None,
                     delivered: int, must_find: bool = False) -> ApplyResult:
        """`must_find`: the rows of partial updates were not looked up (`looks_up_first`); when one is missing
        (UpdatesMissed: nothing committed) they are, and the batch is applied again."""
        try:
            return await self.sink.apply(ops, dead, checkpoint, delivered, must_find)
        except UpdatesMissed as exc:
            log.info("stream.rows_looked_up", object=self.name, reason=str(exc))
            return await self.commit(await self.look_up(ops), dead, checkpoint, delivered)
        except RejectedDataError as exc:
            if must_find:  # row by row below finds no missing row: look them up first
                ops = await self.look_up(ops)
            return await self._commit_isolating(ops, dead, checkpoint, delivered, str(exc))

    async def _commit_isolating(self, ops, dead, checkpoint, delivered, error: str) -> ApplyResult:
        """Postgres refused the batch: apply row by row, dead-letter the rows it refuses, then commit the
        checkpoint with the dead letters. The batch is no longer one transaction; nothing is lost."""
        log.warning("stream.batch_refused", object=self.name, error=error, rows=len(ops))
        total = ApplyResult()
        for op in ops:
            try:
                r = await self.sink.apply([op], [], None)
            except RejectedDataError as exc:
                dead.append(DeadLetter(self.name, f"postgres refused the change: {exc}", key=op.key,
                                       source="stream", payload={"kind": op.kind, "values": {
                                           k: str(v) for k, v in op.values.items()}}))
                continue
            total.merge(r)
        try:
            await self.sink.apply([], dead, checkpoint, delivered)
        except RejectedDataError as exc:
            # The dead letters themselves are refused: log them in full (nothing is dropped silently), keep each
            # as a letter without its payload, and move the checkpoint on so the object never gets stuck here.
            log.error("stream.dead_letters_refused", object=self.name, error=str(exc),
                      dead_letters=[{"key": d.key, "reason": d.reason, "payload": d.payload} for d in dead],
                      action="kept without their payloads; the payloads are in this log line")
            bare = [DeadLetter(d.object, d.reason, source=d.source, key=d.key,
                               payload={"payload": "refused by postgres; see the log line stream.dead_letters_refused"})
                    for d in dead]
            await self.sink.apply([], bare, checkpoint, delivered)
        return total

    # ---- observe ----------------------------------------------------------------------------------------
    def observe(self, batch: list[StreamEvent], found: Classified, rows: list[RowOp], result: ApplyResult,
                seconds: float, log_line: bool = True) -> None:
        """Stats, metrics and health after a committed batch, and its one canonical log line (at debug level
        without `log_line`: a channel logs one line for all the objects of its batch)."""
        s, m, name, h = self.stats, self.metrics, self.name, self.metrics.object(self.name)
        delivered, dead = found.delivered, found.dead
        s.events += delivered
        s.batches += 1
        s.upserts += result.upserts
        s.updates += result.updates
        s.deletes += result.deletes
        s.skipped += result.skipped
        s.dead_letters += len(dead) + result.dead_letters
        now = time.time()
        commits = [e.commit_timestamp for e in batch if e.commit_timestamp]
        if commits:
            s.last_commit_ms = max(commits)
            s.lags.extend((now * 1000 - c) / 1000 for c in commits)
        m.events_applied.labels(object=name).inc(delivered)
        m.batches.labels(object=name).inc()
        m.batch_duration.labels(object=name).observe(seconds)
        m.batch_size.labels(object=name).observe(len(batch))
        for op in ("upserts", "updates", "deletes", "skipped"):
            count = getattr(result, op)
            if count:
                m.rows_written.labels(object=name, op=op.rstrip("s")).inc(count)
        if dead or result.dead_letters:
            m.dead_letters.labels(object=name, source="stream").inc(len(dead) + result.dead_letters)
        if s.last_commit_ms is not None:
            h.last_commit = s.last_commit_ms / 1000
        last = batch[-1]
        # A keepalive's position is current as of its receipt; an event's is as old as its commit.
        h.position_time = now if last.keepalive or not last.commit_timestamp else last.commit_timestamp / 1000
        h.checkpoint_saved = now
        lag = (now * 1000 - s.last_commit_ms) / 1000 if commits else None
        (log.info if log_line and (delivered or dead) else log.debug)(
            "stream.batch", object=name, phase=Phase.STREAMING, batch_id=self._batch_id, events=len(batch),
            rows=len(rows), upserts=result.upserts, updates=result.updates, deletes=result.deletes,
            skipped=result.skipped, dead_letters=len(dead) + result.dead_letters, lag_s=None if lag is None else round(lag, 3),
            duration_s=round(seconds, 4), first_replay_id=batch[0].replay_id.hex(), last_replay_id=last.replay_id.hex())
