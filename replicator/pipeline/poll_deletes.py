"""A polled object's deletes and where its positions come from (docs/polling.md; pipeline/poll.py runs the rounds).

- Positions (replicator/position.py) are Salesforce's time, never this host's clock (docs/design.md, contract 5):
  `salesforce_position` asks getDeleted for `latestDateCovered`, which Salesforce holds back to the start of a
  transaction still in flight ("for safety, you must use this value for the startDate of your next call", SOAP
  API Developer Guide, "GetDeletedResult",
  https://developer.salesforce.com/docs/atlas.en-us.api.meta/api/sforce_api_calls_getdeleted_getdeletedresult.htm).
  A record stamped before such a position is committed; one committed later is stamped at or after it.
- Records removed for good are only in getDeleted ("sObject Get Deleted", REST API Developer Guide,
  https://developer.salesforce.com/docs/atlas.en-us.api_rest.meta/api_rest/resources_getdeleted.htm;
  docs/bulk-rest-oauth.md §3.5): `read` applies them as deletes at their deletedDate, from the window's start up to
  `latestDateCovered`, which commits with them as the next window's start.
- What getDeleted cannot serve (older than its 15 days: INVALID_REPLICATION_DATE, or purged early) a key
  reconciliation finds (`reconcile`): an Id-only extract compared with the table, also every
  `poll.reconcile_interval_s`. A row is deleted only when the org lacks its record: absent from the extract and
  stamped before the position captured before it, or absent from a lookup by Id (docs/design.md, contract 5: "a
  row is gone only when an extract lacks it, never because of when it was written").
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from collections.abc import Awaitable, Callable

import structlog

from ..config import Settings
from ..model import Checkpoint, RowOp, TerminalError, TransientError
from ..observe.metrics import Metrics
from ..position import Position
from ..salesforce.bulk import BulkClient
from ..salesforce.records import soql_string
from ..salesforce.values import decode_rest_value, encode_epoch_ms

log = structlog.get_logger(__name__)

# The window `salesforce_position` asks about ends at the next minute of this host's clock (Salesforce truncates the
# seconds of start and end, docs/bulk-rest-oauth.md §3.5) and starts this far back: a host clock up to that far ahead
# of Salesforce's still asks a window Salesforce has reached, so the answer is Salesforce's own.
POSITION_WINDOW = dt.timedelta(minutes=10)
MINUTE = dt.timedelta(minutes=1)
# Ids per lookup of rows the reconciliation's extract lacks (`SELECT Id … WHERE Id IN (…)` in the URL): 200 quoted
# 18-character Ids, URL-encoded, make about 5.5 kB, well inside the 16,384 bytes a request URI may have
# (docs/bulk-rest-oauth.md §2.1: 414 beyond).
LOOKUP_BATCH = 200


def stamp_ms(value: object) -> int | None:
    """A REST datetime value as epoch milliseconds (None when it is not one)."""
    when = decode_rest_value(value, "timestamptz")
    return encode_epoch_ms(when) if isinstance(when, dt.datetime) else None


def _next_minute() -> dt.datetime:
    """The end of a getDeleted window that covers what is committed now: Salesforce truncates the seconds of `end`
    (docs/bulk-rest-oauth.md §3.5), so an end of now would cover only up to the current minute. What the window
    actually covered is its `latestDateCovered`."""
    return (dt.datetime.now(dt.UTC) + MINUTE).replace(second=0, microsecond=0)


def _middle(start: dt.datetime, end: dt.datetime) -> dt.datetime | None:
    """A whole minute strictly inside (start, end) halving it, or None for a window of a minute or less (seconds
    are truncated: nothing narrower can be asked)."""
    first = start.replace(second=0, microsecond=0)
    minutes = int((end - first) / MINUTE)
    return first + MINUTE * (minutes // 2) if minutes >= 2 else None


def latest_date_covered(body: dict) -> Position | None:
    """getDeleted's (or getUpdated's) `latestDateCovered` as a position: Salesforce's time, held back to the start of
    a transaction still in flight. None when the answer holds none."""
    ms = stamp_ms(body.get("latestDateCovered"))
    return Position(ms) if ms is not None else None


async def salesforce_position(client, name: str) -> Position:
    """Salesforce's time now for `name`'s records, held back to the start of the oldest transaction still in flight
    (a `Position` without an Id): getDeleted's `latestDateCovered` for a window ending at the next minute. One call.

    Contract: every record whose SystemModstamp (or deletedDate) is before the returned time is committed when this
    returns, and a transaction that commits later is stamped at or after it. So reads that start at it (less a
    lookback, for what Salesforce does not hold back) miss nothing committed later, however late. This host's clock
    only chooses the window. When the window holds more deletes than getDeleted answers (EXCEEDED_ID_LIMIT, a mass
    delete) getUpdated is asked instead, whose `latestDateCovered` is held back the same way (SOAP API Developer
    Guide, "GetUpdatedResult"); when both refuse, TransientError: the caller retries later."""
    end = _next_minute()
    for read in (client.get_deleted, client.get_updated):
        try:
            body = await read(name, end - POSITION_WINDOW, end)
        except TerminalError as exc:
            if exc.code != "EXCEEDED_ID_LIMIT":
                raise
            continue
        if (covered := latest_date_covered(body)) is None:
            raise TerminalError(f"{name}: getDeleted answered without latestDateCovered", code="BAD_JSON")
        return covered
    raise TransientError(f"{name}: getDeleted and getUpdated hold too many ids for the last {POSITION_WINDOW}"
                         " (EXCEEDED_ID_LIMIT): the position is asked for again later", code="EXCEEDED_ID_LIMIT")


Commit = Callable[[list[RowOp], Checkpoint, int], Awaitable[None]]


def rewound(checkpoint: Checkpoint, rewind: Position | None) -> Checkpoint:
    """`checkpoint`, which moves getDeleted's window end, with the change keyset's position set back to `rewind`
    (where the next changes read must start, `ObjectPoller.start_key` of the window end before this one) in the
    same transaction. The next round's keyset starts no later than the window end stored here, which is asked
    before its changes are read (docs/polling.md); until a read of the changes follows it, the stored position
    must not claim the changes up to it were read: a round halted or failed between the two (a switch to events,
    a stop, an error), or a key reconciliation after a round, would otherwise leave behind the records committed
    since the last read and stamped before its newest record (a late commit, or the same second with a lower Id).
    A read again from there is harmless (the version guard); the first page read moves the position on."""
    if rewind is None:
        return checkpoint
    return dataclasses.replace(checkpoint, poll_modstamp=rewind.ms, poll_id=rewind.id)


class PollDeletes:
    """The deletes of one polled object: `read` each round, `reconcile` (or `reconcile_if_due`) for what getDeleted
    cannot serve. `sink` (a DeltaSink) is set once the poller has its table. `calls`: API calls made."""

    def __init__(self, client, bulk: BulkClient, settings: Settings, name: str, topic: str, metrics: Metrics,
                 commit: Commit):
        self.client, self.bulk, self.settings, self.name, self.topic = client, bulk, settings, name, topic
        self.metrics, self.commit = metrics, commit
        self.lookback_s = settings.poll.lookback_s
        self.sink = None
        self.calls = 0
        self.reconciliations = self.reconciled_ids = 0

    async def read(self, through: Position, rewind: Position | None = None) -> tuple[int, Position | None]:
        """Records deleted since the last window (less the lookback: a delete can commit late too), applied as
        deletes at their deletedDate; the window's end (`latestDateCovered`, Salesforce's, held back) commits with
        them as the next window's start, and with it the change keyset's position `rewind` (`rewound`). Returns
        (records deleted, the stored window end, or None after a key reconciliation, which moves the
        window's start to its own position). When getDeleted cannot serve:
        - INVALID_REPLICATION_DATE: the window begins before getDeleted's 15 days: a key reconciliation;
        - EXCEEDED_ID_LIMIT (more than 600,000 deletes; "You can correct the error by choosing start and end dates
          that are closer together", REST API Developer Guide, "sObject Get Deleted"): the window is halved, the
          earlier half first, each half committed on its own, down to one minute (Salesforce truncates seconds);
          a minute that still holds too many is reconciled. A 15-day window costs at most about 30 calls so."""
        start, end = through.earlier(self.lookback_s).when, _next_minute()
        windows, deleted = [(start, end)], 0
        while windows:
            w_start, w_end = windows.pop(0)
            try:
                body = await self._get_deleted(w_start, w_end)
            except TerminalError as exc:
                if exc.code == "EXCEEDED_ID_LIMIT" and (middle := _middle(w_start, w_end)) is not None:
                    windows[:0] = [(w_start, middle), (middle, w_end)]
                    continue
                if exc.code not in ("INVALID_REPLICATION_DATE", "EXCEEDED_ID_LIMIT"):
                    raise
                log.warning("poll.deletes_window_refused", object=self.name, start=w_start.isoformat(),
                            end=w_end.isoformat(), error=str(exc), action="reconciling keys with an Id-only extract")
                return deleted + await self.reconcile(rewind), None
            ops: dict[str, RowOp] = {}
            for rec in body.get("deletedRecords") or ():
                ms = stamp_ms(rec.get("deletedDate"))
                if rec.get("id") and ms is not None:
                    ops[str(rec["id"])] = RowOp(str(rec["id"]), "delete", version=(ms, 0, 0), commit_ms=ms)
            # Stored as Salesforce answers it, even when earlier than the previous window's end: a transaction in
            # flight holds it back, and the next window (and the next round's keyset, poll.py `start_key`) must
            # start there to read that transaction once it commits.
            covered = latest_date_covered(body) or through
            await self.commit(list(ops.values()), rewound(covered.window_checkpoint(self.topic), rewind), 0)
            deleted += len(ops)
            if covered < Position.of(w_end):  # held back (or now): the windows after it wait for a later round
                return deleted, covered
        return deleted, covered

    async def _get_deleted(self, start: dt.datetime, end: dt.datetime) -> dict:
        self.calls += 1
        return await self.client.get_deleted(self.name, start, end)

    async def reconcile_if_due(self, rewind: Callable[[], Awaitable[Position | None]] | None = None) -> None:
        """The scheduled key reconciliation: `poll.reconcile_interval_s` after the last one (or after the backfill,
        whose extract removed what the org lacked then)."""
        every = self.settings.poll.reconcile_interval_s
        if not every:
            return
        last = await self.sink.reconciled_at(self.topic)
        if last is None or (dt.datetime.now(dt.UTC) - last).total_seconds() >= every:
            await self.reconcile(await rewind() if rewind is not None else None)

    async def reconcile(self, rewind: Position | None = None) -> int:
        """Deletes getDeleted cannot serve (purged past its 15 days, or its log emptied early): an Id-only Bulk
        queryAll extract compared with the table in one transaction (`DeltaSink.reconcile_keys`), after Salesforce's
        position is captured (`salesforce_position`). A row the extract lacks is deleted when stamped before that
        position less the lookback (its record was committed before the extract began: the extract would hold it);
        a row stamped since is looked up by Id (`present`) and deleted only when the org lacks it too. getDeleted's
        window then starts at the position. Returns the rows deleted."""
        position = await salesforce_position(self.client, self.name)
        self.calls += 1
        job = await self.bulk.create_query_job(f"SELECT Id FROM {self.name}", all_rows=True)
        job = await self.bulk.wait_for_job(job.id)
        pages = [p async for p in self.bulk.result_pages(job.id, max_records=self.settings.backfill.page_size)]
        self.calls += 3 + len(pages)

        async def chunks():
            for page in pages:
                async with self.bulk.open_page(page) as stream:
                    yield stream.chunks()

        checkpoint = rewound(position.window_checkpoint(self.topic), rewind)
        seen, removed = await self.sink.reconcile_keys(chunks(), position.earlier(self.lookback_s).when, checkpoint,
                                                       self.present, reconciled_at=position.when)
        self.reconciliations, self.reconciled_ids = self.reconciliations + 1, seen
        if removed:
            self.metrics.rows_written.labels(object=self.name, op="delete").inc(removed)
        (log.warning if removed else log.info)(
            "poll.reconciled", object=self.name, job_id=job.id, ids=seen, removed=removed,
            position=position.when.isoformat(), reason="records the org no longer has: purged or hard-deleted")
        return removed

    async def present(self, ids: list[str]) -> set[str]:
        """Which of `ids` the org still has (the Recycle Bin included): REST queryAll by Id, LOOKUP_BATCH a call."""
        found: set[str] = set()
        for i in range(0, len(ids), LOOKUP_BATCH):
            listed = ", ".join(soql_string(x) for x in ids[i:i + LOOKUP_BATCH])
            found |= {str(r["Id"]) async for r in self.client.query(
                f"SELECT Id FROM {self.name} WHERE Id IN ({listed})", all_rows=True)}
            self.calls += 1
        return found
