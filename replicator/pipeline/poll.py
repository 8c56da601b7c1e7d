"""Poll one object that publishes no change events (README "Polling"; issue 12 §1): after the backfill, every
`objects.X.poll_interval_s` a round reads what changed with REST queryAll and what was deleted with getDeleted.

- Changes: a keyset on (SystemModstamp, Id), never `>` on the timestamp alone: datetimes have whole seconds and
  many records share one (docs/salesforce-coverage.md §1, "Time and visibility"). Each round starts
  `poll.lookback_s` seconds before the stored position, because a transaction commits after its SystemModstamp:
  a record can become visible behind a position already read (same section). Re-reads are harmless: rows are
  full-record upserts (`changes.record_op`) through the stream's version guard.
- queryAll returns deleted records still in the recycle bin (`IsDeleted` true): they land soft-deleted (removed
  with `deletes = "hard"`). Records removed for good are only in getDeleted ("sObject Get Deleted", REST API
  Developer Guide, https://developer.salesforce.com/docs/atlas.en-us.api_rest.meta/api_rest/resources_getdeleted.htm;
  docs/bulk-rest-oauth.md §3.5): applied as deletes at their deletedDate, from the window's start up to
  `latestDateCovered`, which Salesforce holds back while a transaction is in flight.
- Each page commits with the position (topic `poll:<Object>` in replicator.checkpoints) in one transaction
  (docs/design.md, contract 4), so a crash repeats at most one page.

A round is not started while the org's API budget is spent (`budget.allows()` false: app/limits.py,
`salesforce.api_reserve`); the position stays, so the next allowed round reads everything since.

Cost per round: one queryAll call per page of `poll.page_size` records (at least one), plus one getDeleted call.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import time

import structlog

from ..config import ObjectSettings, Settings
from ..model import Checkpoint, ConfigError, RowOp, TerminalError
from ..observe.metrics import Metrics
from ..postgres.store import Store
from ..salesforce.records import soql_datetime, soql_string
from ..salesforce.values import EPOCH, decode_rest_value, encode_epoch_ms
from .applier import BatchApplier, StreamStats
from .changes import record_op

log = structlog.get_logger(__name__)


def poll_topic(object_name: str) -> str:
    """The checkpoint row of a polled object's position."""
    return f"poll:{object_name}"


def _at(ms: int) -> dt.datetime:
    return EPOCH + dt.timedelta(milliseconds=ms)


def _stamp_ms(value: object) -> int | None:
    when = decode_rest_value(value, "timestamptz")
    return encode_epoch_ms(when) if isinstance(when, dt.datetime) else None


class ObjectPoller:
    """One polled object: `capture_position()` before its backfill, then `run()` until stopped; a failed round
    propagates to the service's supervisor, which retries the object."""

    def __init__(self, client, store: Store, settings: Settings, name: str, obj: ObjectSettings,
                 metrics: Metrics | None = None, budget=None):
        self.client, self.store, self.settings, self.name, self.obj = client, store, settings, name, obj
        self.budget = budget  # .allows(): False while the org's API budget is spent (app/limits.py); None: always
        self.topic = poll_topic(name)
        self.stats = StreamStats()
        self.metrics = metrics or Metrics()
        self.health = self.metrics.object(name)
        self.applier = BatchApplier(client, store, settings, name, obj, self.topic, self.metrics, self.stats)
        self.lookback_ms = int(settings.poll.lookback_s * 1000)
        self.rounds = 0

    async def capture_position(self) -> None:
        """Before a backfill: the first round reads from here. This process's clock, less the lookback (which
        also absorbs a small skew from Salesforce's clock); what the extract holds too is re-read harmlessly."""
        start = (int(time.time() * 1000) - self.lookback_ms) // 1000 * 1000
        await self.store.save_checkpoint(Checkpoint(self.topic, None, poll_modstamp=start, poll_id="",
                                                    poll_deleted_through=start))
        log.info("poll.position_captured", object=self.name, topic=self.topic, systemmodstamp=_at(start).isoformat())

    async def run(self, stop: asyncio.Event) -> None:
        await self.applier.load_schema()
        if self.applier.spec.column("systemmodstamp") is None:
            raise ConfigError(f"objects.{self.name}: polling needs SystemModstamp, which this object lacks "
                              f"(or objects.{self.name}.fields leaves out)")
        h = self.health
        h.phase, h.mode = "STREAMING", "poll"
        while not stop.is_set():
            started = time.time()
            if self.budget is None or self.budget.allows():  # else skipped: salesforce.api_reserve
                await self.round(stop)
                h.connected, h.idle, h.caught_up_at = True, False, started
            try:
                await asyncio.wait_for(stop.wait(), self.obj.poll_interval_s)
            except TimeoutError:
                pass

    async def round(self, stop: asyncio.Event | None = None) -> None:
        """Read what changed since the position (less the lookback), page by page, then what was deleted."""
        started = time.monotonic()
        pos = await self.store.load_poll_position(self.topic)
        if pos is None or pos.poll_modstamp is None:
            # the service captures it before the backfill: without it, a retry goes through that again
            raise TerminalError(f"{self.name}: no poll position stored (topic {self.topic})", code="NO_POLL_POSITION")
        newest = (pos.poll_modstamp, pos.poll_id or "")
        # Whole seconds: SOQL compares datetimes without milliseconds (docs/salesforce-coverage.md §1).
        key = ((pos.poll_modstamp - self.lookback_ms) // 1000 * 1000, "") if self.lookback_ms else newest
        rows = pages = 0
        page_size = self.settings.poll.page_size
        while stop is None or not stop.is_set():
            records = [r async for r in self.client.query(self._soql(key, page_size), all_rows=True)]
            pages += 1
            ops: dict[str, RowOp] = {}
            for record in records:
                op = record_op(record, self.applier.spec, 0)
                ops[op.key] = op
            if records:
                last = records[-1]
                key = (_stamp_ms(last.get("SystemModstamp")) or key[0], str(last["Id"]))
                if key[0] > newest[0] or (key[0] == newest[0] and key[1] > newest[1]):
                    newest = key
            await self.applier.check_keys(ops)
            await self._commit(list(ops.values()), Checkpoint(self.topic, None, poll_modstamp=newest[0],
                                                              poll_id=newest[1]), len(records))
            rows += len(records)
            if len(records) < page_size:
                break
        deleted = await self._deletes(pos.poll_deleted_through if pos.poll_deleted_through is not None else newest[0])
        self.rounds += 1
        self.health.poll_position = newest[0] / 1000
        self.health.checkpoint_saved = time.time()
        (log.info if rows or deleted else log.debug)(
            "poll.round", object=self.name, rows=rows, pages=pages, deleted=deleted,
            position=f"{_at(newest[0]).isoformat()} {newest[1]}", duration_s=round(time.monotonic() - started, 3))

    def _soql(self, key: tuple[int, str], limit: int) -> str:
        """The next page after `key` in (SystemModstamp, Id) order; without an Id (the start of a second), from
        that second on: Salesforce refuses an Id compared with a value that is not a record id. Field and object
        names are API names from describe; values are literals (soql_datetime, soql_string)."""
        select = ", ".join(self.applier.spec.fields)
        t = soql_datetime(_at(key[0]))
        where = (f"SystemModstamp > {t} OR (SystemModstamp = {t} AND Id > {soql_string(key[1])})" if key[1]
                 else f"SystemModstamp >= {t}")
        return f"SELECT {select} FROM {self.name} WHERE {where} ORDER BY SystemModstamp, Id LIMIT {limit}"

    async def _deletes(self, through_ms: int) -> int:
        """Records deleted since the last window (less the lookback: a delete can commit late too), applied as
        deletes at their deletedDate; the window's end (`latestDateCovered`) commits with them."""
        start = _at(through_ms - self.lookback_ms)
        # Salesforce truncates the seconds of `end` (docs/bulk-rest-oauth.md §3.5): an end of now would
        # cover only up to the current minute. The next minute's start covers what is committed now; the window
        # actually covered is `latestDateCovered`, which is what is stored.
        end = (dt.datetime.now(dt.UTC) + dt.timedelta(minutes=1)).replace(second=0, microsecond=0)
        body = await self.client.get_deleted(self.name, start, end)
        ops: dict[str, RowOp] = {}
        for rec in body.get("deletedRecords") or ():
            ms = _stamp_ms(rec.get("deletedDate"))
            if rec.get("id") and ms is not None:
                ops[str(rec["id"])] = RowOp(str(rec["id"]), "delete", version=(ms, 0, 0), commit_ms=ms)
        covered = max(_stamp_ms(body.get("latestDateCovered")) or through_ms, through_ms)
        await self._commit(list(ops.values()), Checkpoint(self.topic, None, poll_deleted_through=covered), 0)
        return len(ops)

    async def _commit(self, ops: list[RowOp], checkpoint: Checkpoint, records: int) -> None:
        result = await self.applier.commit(ops, [], checkpoint, records)
        m, name = self.metrics, self.name
        for op in ("upserts", "updates", "deletes", "skipped"):
            count = getattr(result, op)
            if count:
                m.rows_written.labels(object=name, op=op.rstrip("s")).inc(count)
