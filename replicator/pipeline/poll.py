"""Poll one object that publishes no change events (docs/polling.md; issue 12 §1): after the backfill, every
`objects.X.poll_interval_s` a round reads what was deleted with getDeleted, then what changed with REST queryAll, or
with one Bulk API 2.0 job when the delta is large.

- Changes: a keyset on (SystemModstamp, Id), never `>` on the timestamp alone: datetimes have whole seconds and
  many records share one (docs/salesforce-coverage.md §1, "Time and visibility"). Keyset positions and window ends
  are `position.Position`s, ordered as the keyset reads. An object without SystemModstamp
  reads by LastModifiedDate (share objects); without either, each round extracts it whole (field history objects).
- Where a round starts (`start_key`): no later than the previous round's getDeleted `latestDateCovered`, less
  `poll.lookback_s`. Salesforce holds that value back to the start of a transaction still in flight ("for safety,
  you must use this value for the startDate of your next call", SOAP API Developer Guide, "GetDeletedResult",
  https://developer.salesforce.com/docs/atlas.en-us.api.meta/api/sforce_api_calls_getdeleted_getdeletedresult.htm),
  so a record that commits after its stamp is read once it is visible. Re-reads are harmless: rows are full-record
  upserts (`changes.record_op`) through the stream's version guard.
- queryAll returns deleted records still in the recycle bin (`IsDeleted` true): they land soft-deleted (removed
  with `deletes = "hard"`). Records removed for good, and the key reconciliation for what getDeleted cannot serve:
  pipeline/poll_deletes.py, which also captures positions (`salesforce_position`): Salesforce's time with its
  hold-back, never this host's clock.
- Large deltas (`poll.bulk_threshold`, asked with `SELECT COUNT()` when a first page comes back full): one Bulk
  queryAll job, each result page staged with COPY and upserted through the version guard (`DeltaSink`).
- Each page commits with the position (topic `poll:<Object>` in replicator.checkpoints) in one transaction
  (docs/design.md, contract 4), so a crash repeats at most one page (a Bulk delta: the job).

A round is not started while the org's API budget is spent (`budget.allows()` false: app/limits.py,
`salesforce.api_reserve`); the position stays, so the next allowed round reads everything since.

Cost per round (docs/polling.md, `python -m bench.poll_calls`): one getDeleted call and one queryAll call per page
of `poll.page_size` records (at least one); a large delta one COUNT() and a Bulk job (about a dozen calls).
"""

from __future__ import annotations

import asyncio
import time
from typing import NamedTuple

import structlog

from ..config import ObjectSettings, Settings
from ..lifecycle import Phase
from ..model import Checkpoint, RejectedDataError, ReplicatorError, RowOp, TerminalError
from ..observe.metrics import Metrics
from ..position import Position
from ..postgres.store import Store
from ..retry import retry_transient, stop_ends_waits, wait_event
from ..salesforce.bulk import BulkClient
from ..salesforce.records import soql_datetime, soql_string
from .applier import BatchApplier, StreamStats
from .backfill import Backfill
from .changes import record_op
from .poll_deletes import PollDeletes, salesforce_position
from .poll_deletes import stamp_ms as _stamp_ms
from .schema import history_names, object_table
from .stopping import until_stopped

log = structlog.get_logger(__name__)


class FieldsChecked(NamedTuple):
    columns: set[str]  # the table's columns as the org describes the object now
    added: list[str]  # fields (API names) whose column the existing table lacks


def poll_topic(object_name: str) -> str:
    """The checkpoint row of a polled object's position."""
    return f"poll:{object_name}"


# The field a round's keyset reads by, in order of preference: SystemModstamp changes with every change (system ones
# included); LastModifiedDate only with a user's, and is what objects without SystemModstamp have (share objects,
# "AccountShare", Object Reference). Without either a round extracts the whole object again.
KEY_FIELDS = ("SystemModstamp", "LastModifiedDate")


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
        self.lookback_s = settings.poll.lookback_s
        self.rounds = 0
        self.key_field: str | None = "SystemModstamp"
        self.bulk = BulkClient(client, poll_max=settings.backfill.poll_max_s)
        self.calls = 0  # REST and Bulk calls made by rounds, but for deletes (`api_calls`)
        self.bulk_rounds = 0
        self.describe_at = 0.0  # when the object is described again (`poll.describe_interval_s`)
        self.deletes = PollDeletes(client, self.bulk, settings, name, self.topic, self.metrics, self._commit)

    @property
    def api_calls(self) -> int:
        """REST and Bulk calls made by rounds (docs/polling.md: calls per round)."""
        return self.calls + self.deletes.calls

    @property
    def reconciliations(self) -> int:
        return self.deletes.reconciliations

    async def reconcile(self) -> int:
        return await self.deletes.reconcile(await self._rewind())

    async def reconcile_if_due(self) -> None:
        await self.deletes.reconcile_if_due(self._rewind)

    async def _rewind(self) -> Position | None:
        """Where the next round's keyset would start now (`start_key` of the stored position): a key reconciliation
        moves getDeleted's window end to a time after the last changes read, so it sets the keyset back to this in
        the same transaction (poll_deletes.py `rewound`)."""
        pos = await self.store.load_poll_position(self.topic)
        newest = Position.poll_keyset(pos)
        return self.start_key(newest, Position.window_end(pos)) if newest is not None else None

    async def capture_position(self) -> None:
        """Before a backfill: the first round reads from here. Salesforce's time, held back to the start of a
        transaction still in flight (`salesforce_position`, one API call), never this host's clock: a late commit
        the extract cannot see yet is stamped at or after it, so the first rounds read it once it commits. The
        keyset starts a lookback earlier (`start_key`); what the extract holds too is re-read harmlessly."""
        position = (await salesforce_position(self.client, self.name)).whole_seconds()
        await self.store.save_checkpoint(position.to_poll_checkpoint(self.topic))
        log.info("poll.position_captured", object=self.name, topic=self.topic, systemmodstamp=position.when.isoformat())

    @stop_ends_waits
    async def prepare(self, stop: asyncio.Event | None = None) -> None:
        """Describe the object, bring its table up to date, choose the field rounds read by (logged, and noted in
        `status`'s mode reason). A field the existing table lacks was added in Salesforce since: its values set
        before were never read (rounds select the fields they know, and read only records changed since), so the
        object is resynced first (`fields_added`)."""
        checked = await self.fields_added()
        if checked.added:
            await self.resync(f"fields added in Salesforce: {', '.join(checked.added)}", stop)
            return  # the resync prepared the table and describes again
        await self.applier.load_schema()
        if unchecked := [c.field for c in self.applier.spec.columns if c.name not in checked.columns]:
            # added between the two describes: the column exists now, so no later check would see it
            await self.resync(f"fields added in Salesforce: {', '.join(unchecked)}", stop)
            return
        self.describe_at = time.monotonic() + self.settings.poll.describe_interval_s
        self.key_field = self._choose_key()
        self.sink = self.deletes.sink = self.store.delta_sink(self.applier.table)
        how = f"({self.key_field}, Id)" if self.key_field else "nothing: a full extract every poll_interval_s"
        log.info("poll.key", object=self.name, key=how)
        await self.sink.note_poll_key(self.name, how)

    @stop_ends_waits
    async def run(self, stop: asyncio.Event) -> None:
        await self.prepare(stop)
        h = self.health
        h.phase, h.mode = Phase.STREAMING, "poll"
        while not stop.is_set():
            if await self.store.resync_requested(self.name):
                await self.resync("requested by an operator (replicator resync)", stop)
            elif time.monotonic() >= self.describe_at:  # poll.describe_interval_s: one describe
                added = (await self.fields_added()).added
                if added:
                    await self.resync(f"fields added in Salesforce: {', '.join(added)}", stop)
                else:
                    self.describe_at = time.monotonic() + self.settings.poll.describe_interval_s
            started = time.time()
            if self.budget is None or self.budget.allows():  # else skipped: salesforce.api_reserve
                if self.key_field is None:
                    await self.extract_round(stop)
                else:
                    await self.round(stop)
                    await self.reconcile_if_due()
                h.connected, h.idle, h.caught_up_at = True, False, started
            await self._wait(stop)

    async def _wait(self, stop: asyncio.Event) -> None:
        """Until the next round (`objects.X.poll_interval_s`), or sooner for an operator's resync request, looked
        for every `service.control_poll_s` (one small query, as a stream does)."""
        deadline = time.monotonic() + self.obj.poll_interval_s
        while not stop.is_set() and (left := deadline - time.monotonic()) > 0:
            if not await wait_event(stop, min(left, self.settings.service.control_poll_s)):
                if await self.store.resync_requested(self.name):
                    return

    async def resync(self, reason: str, stop: asyncio.Event | None = None) -> None:
        """Extract the object again into the live table (keyed upsert through the version guard; rows the extract
        lacks are removed or marked deleted), then rounds go on. Marked RESYNCING first, which clears an operator's
        request: a crash before the extract's job is recorded captures and extracts again after the restart
        (app/service.py); after, it resumes the job, its position stored. The position is captured before the
        extract (`capture_position`: Salesforce's time), so the rounds after it read what changed meanwhile."""
        self.stats.resyncs += 1
        self.metrics.resyncs.labels(object=self.name).inc()
        log.warning("poll.resync", object=self.name, reason=reason, resyncs=self.stats.resyncs)
        await self.store.begin_resync(self.name, reason)
        self.health.phase = Phase.RESYNCING
        await self.capture_position()
        extract = Backfill(self.client, self.store, self.settings, self.name, self.obj,
                           self.metrics.backfill_progress).run()
        await (until_stopped(stop, extract) if stop is not None else extract)  # resumable: a stop does not wait
        await self.store.set_phase(self.name, Phase.STREAMING)
        self.health.phase = Phase.STREAMING
        await self.prepare()  # the extract described the object again: a field it added is read from now on

    async def fields_added(self) -> FieldsChecked:
        """Describe the object (one call) and compare with its table before the table is altered: the fields whose
        column it lacks. The resync that follows is marked (RESYNCING) before its extract adds the columns, so a
        crash in between cannot hide them: the restart extracts again."""
        describe = await self.client.describe(self.name)
        self.calls += 1
        info = object_table(describe, self.settings.postgres.schema_, self.obj, history_names(self.settings, self.obj))
        added = await self.store.delta_sink(info).missing_columns()
        return FieldsChecked({c.name for c in info.spec.columns}, added or [])

    def _choose_key(self) -> str | None:
        for field in KEY_FIELDS:
            if self.applier.spec.column(field.lower()) is not None:
                return field
        log.warning("poll.no_key", object=self.name, fields=list(KEY_FIELDS),
                    action=f"objects.{self.name} has neither field (or objects.{self.name}.fields leaves them out): "
                    "every round extracts the whole object again with Bulk API 2.0")
        return None

    async def extract_round(self, stop: asyncio.Event | None = None) -> None:
        """An object without SystemModstamp or LastModifiedDate: the backfill again (a Bulk queryAll job loaded
        through the version guard; rows the extract lacks are removed or marked deleted, `remove_unseen`)."""
        started = time.monotonic()
        extract = Backfill(self.client, self.store, self.settings, self.name, self.obj).run()
        # resumable (page by page): a stop does not wait for it
        progress = await (until_stopped(stop, extract) if stop is not None else extract)
        await self.store.set_phase(self.name, Phase.STREAMING)
        self.rounds += 1
        self.calls += 4  # create, at least one status poll, resultPages, one page
        self.health.checkpoint_saved = time.time()
        log.info("poll.round", object=self.name, key=None, rows=progress.rows_done, extract=progress.job_id,
                 duration_s=round(time.monotonic() - started, 3))

    async def round(self, stop: asyncio.Event | None = None) -> None:
        """Read what changed since the position (less the lookback): page by page over REST, or with one Bulk job
        when the delta is large (`poll.bulk_threshold`); then what was deleted."""
        started = time.monotonic()
        pos = await self.store.load_poll_position(self.topic)
        if (newest := Position.poll_keyset(pos)) is None:
            # the service captures it before the backfill: without it, a retry goes through that again
            raise TerminalError(f"{self.name}: no poll position stored (topic {self.topic})", code="NO_POLL_POSITION")
        window = Position.window_end(pos)
        key = self.start_key(newest, window)
        through = window if window is not None else Position(newest.ms)
        failed: ReplicatorError | None = None
        try:
            # the window end commits with the keyset set back to where this round starts (`rewound`): halted or
            # failed before its changes are read, the next round starts there, not past what was never read
            deleted, covered = await self.deletes.read(through, key)
        except ReplicatorError as exc:
            # Never let deletes block the changes: read them all the same, then fail the round (the supervisor
            # retries it). The window's start stays, so the next round's keyset starts no later than before.
            failed, deleted, covered = exc, 0, None
            log.error("poll.deletes_failed", object=self.name, error=f"{type(exc).__name__}: {exc}",
                      action="reading the changes all the same; the round fails after them and is retried")
        rows, pages, newest, bulk = await self._changes(key, newest, stop, covered)
        self.rounds += 1
        self.health.poll_position = newest.ms / 1000
        self.health.checkpoint_saved = time.time()
        (log.info if rows or deleted else log.debug)(
            "poll.round", object=self.name, key=self.key_field, rows=rows, pages=pages, bulk_job=bulk,
            deleted=deleted, position=str(newest),
            duration_s=round(time.monotonic() - started, 3))
        if failed is not None:
            raise failed

    def start_key(self, newest: Position, covered: Position | None) -> Position:
        """Where a round's keyset starts: after the newest record read, but no later than where the previous
        round's getDeleted window ended (`latestDateCovered`, asked before that round read its changes, and held
        back by Salesforce to the start of a transaction still in flight), less `poll.lookback_s`. A record that
        committed after the previous read, stamped before it, is read again; an idle object re-reads nothing, as
        that window's end passes its position. Whole seconds: SOQL compares datetimes without milliseconds
        (docs/salesforce-coverage.md §1). `min`, never `max`: a window end held back is kept (issue 18, defect 7)."""
        held = (covered if covered is not None else newest).earlier(self.lookback_s).whole_seconds()
        return min(newest, held)

    async def _changes(self, key: Position, newest: Position, stop: asyncio.Event | None,
                       covered: Position | None = None) -> tuple[int, int, Position, str | None]:
        """REST pages from `key`, each committed with the position; a first page that comes back full and a
        count at or above `poll.bulk_threshold` send the delta to `_bulk_delta` instead (the page is not
        committed: the job reads it again; `covered`, this round's getDeleted `latestDateCovered`, caps its
        position). Returns (rows, pages, newest position, Bulk job id or None)."""
        rows = pages = 0
        page_size = self.settings.poll.page_size
        while stop is None or not stop.is_set():
            records = [r async for r in self.client.query(self._soql(key, page_size), all_rows=True)]
            self.calls += 1
            if pages == 0 and len(records) == page_size and await self._large(key):
                try:
                    job_id, rows, newest = await self._bulk_delta(key, newest, covered)
                    return rows, 0, newest, job_id
                except RejectedDataError as exc:  # a row Postgres refuses: REST pages dead-letter it alone
                    log.warning("poll.bulk_rejected", object=self.name, error=str(exc), action="read over REST")
            pages += 1
            ops: dict[str, RowOp] = {}
            for record in records:
                # versioned by SystemModstamp; an object without it by the key field (its table's version too)
                op = record_op(record, self.applier.spec, _stamp_ms(record.get(self.key_field)) or 0)
                op.source = "poll"
                ops[op.key] = op
            if records:
                last = records[-1]
                key = Position(_stamp_ms(last.get(self.key_field)) or key.ms, str(last["Id"]))
                newest = max(newest, key)
            await self.applier.check_keys(ops)
            await self._commit(list(ops.values()), newest.keyset_checkpoint(self.topic), len(records))
            rows += len(records)
            if len(records) < page_size:
                break
        return rows, pages, newest, None

    def _where(self, key: Position) -> str:
        """After `key` in (stamp, Id) order; without an Id (the start of a second), from that second on: Salesforce
        refuses an Id compared with a value that is not a record id. Values are literals (soql_datetime,
        soql_string); the field is an API name."""
        f, t = self.key_field, soql_datetime(key.when)
        return f"{f} > {t} OR ({f} = {t} AND Id > {soql_string(key.id)})" if key.id else f"{f} >= {t}"

    def _soql(self, key: Position, limit: int) -> str:
        """The next page after `key` in (stamp, Id) order. Field and object names are API names from describe."""
        select = ", ".join(self.applier.spec.fields)
        return (f"SELECT {select} FROM {self.name} WHERE {self._where(key)} "
                f"ORDER BY {self.key_field}, Id LIMIT {limit}")

    async def _large(self, key: Position) -> bool:
        """Whether the delta from `key` holds `poll.bulk_threshold` records or more: one `SELECT COUNT()` call
        (SOQL and SOSL Reference, "COUNT() and COUNT(fieldName)")."""
        threshold = self.settings.poll.bulk_threshold
        if not threshold:
            return False
        count = await self.client.count(f"SELECT COUNT() FROM {self.name} WHERE {self._where(key)}", all_rows=True)
        self.calls += 1
        log.info("poll.delta_counted", object=self.name, records=count, bulk=count >= threshold)
        return count >= threshold

    async def _bulk_delta(self, key: Position, newest: Position, covered: Position | None,
                          ) -> tuple[str, int, Position]:
        """A large delta with one Bulk API 2.0 queryAll job (no ORDER BY: docs/bulk-rest-oauth.md §1.9), its pages
        one after another, each staged with COPY and upserted through the version guard in its transaction. The
        position commits with the last page: the newest (stamp, Id) of the job, but no later than Salesforce's time
        before the job (`covered`: this round's getDeleted window end; pages hold no order: a record changed while
        the job ran may be missing behind a newer one; the next round reads again from there). A crash in the
        middle repeats the job, which rewrites what it wrote."""
        # After a reconciliation the round has no window end of its own: Salesforce's time, asked now
        cap = (covered if covered is not None else await self._position()).whole_seconds()
        soql = f"SELECT {', '.join(self.applier.spec.fields)} FROM {self.name} WHERE {self._where(key)}"
        job = await self.bulk.create_query_job(soql, all_rows=True)
        job = await self.bulk.wait_for_job(job.id)
        pages = [p async for p in self.bulk.result_pages(job.id, max_records=self.settings.backfill.page_size)]
        self.calls += 3 + len(pages)  # create, status (at least once), resultPages, one call a page
        seen: list[Position] = [newest]

        def final(page_newest: tuple | None) -> Checkpoint:
            if page_newest is not None:
                seen.append(Position.of(page_newest[0], str(page_newest[1])))
            return max(min(max(seen), cap), newest).keyset_checkpoint(self.topic)

        rows = 0
        column = self.key_field.lower()
        last_index = len(pages) - 1
        for i, page in enumerate(pages):
            async def load(page=page, last=i == last_index) -> tuple[int, tuple | None]:
                async with self.bulk.open_page(page) as stream:
                    return await self.sink.load_delta_page(stream.chunks(), column, final if last else None)

            count, page_newest = await retry_transient(load, what=f"{self.name} delta page {page.locator or 'first'}")
            if page_newest is not None and i < len(pages) - 1:
                seen.append(Position.of(page_newest[0], str(page_newest[1])))
            rows += count
        self.bulk_rounds += 1
        self.metrics.rows_written.labels(object=self.name, op="upsert").inc(rows)
        pos = Position.poll_keyset(final(None))
        log.info("poll.bulk_delta", object=self.name, job_id=job.id, rows=rows, pages=len(pages), position=str(pos))
        return job.id, rows, pos

    async def _position(self) -> Position:
        self.calls += 1
        return await salesforce_position(self.client, self.name)

    async def _commit(self, ops: list[RowOp], checkpoint: Checkpoint, records: int) -> None:
        result = await self.applier.commit(ops, [], checkpoint, records)
        m, name = self.metrics, self.name
        for op in ("upserts", "updates", "deletes", "skipped"):
            count = getattr(result, op)
            if count:
                m.rows_written.labels(object=name, op=op.rstrip("s")).inc(count)
