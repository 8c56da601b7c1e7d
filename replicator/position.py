"""Positions: where an object's copy stands, as one type every way of keeping it current can compare
(docs/lifecycle.md; docs/design.md, contract 5 "Handoff without a hole").

- `Position`: a time in Salesforce's clock (epoch milliseconds), with the record Id that breaks ties in the poll
  keyset (SystemModstamp, Id) where it has one; without one ("") it is the start of that millisecond, before every
  record stamped in it. Ordered by (time, Id), as the keyset reads, so `min` and `max` combine positions. The ways
  that produce one, each in Salesforce's clock:
  - poll rounds: the keyset of the newest record read, and the end of the window getDeleted covered (`poll_keyset`
    and `window_end` of a stored poll `Checkpoint`; pipeline/poll.py);
  - Salesforce's "now", held back: getDeleted's `latestDateCovered` (pipeline/poll_deletes.py
    `latest_date_covered`, `salesforce_position`). Salesforce holds it back to the start of the oldest transaction
    still in flight ("for safety, you must use this value for the startDate of your next call", SOAP API Developer
    Guide, "GetDeletedResult",
    https://developer.salesforce.com/docs/atlas.en-us.api.meta/api/sforce_api_calls_getdeleted_getdeletedresult.htm),
    so a record stamped before it is committed, and one committed later is stamped at or after it. That hold-back
    is why two held positions combine with `min` (the earlier start reads the late commit), never `max`;
  - events: the commit time of the newest change applied (`StreamPosition.time`; the rows' `_sf_stream_version`),
    `commitTimestamp` in epoch milliseconds ("ChangeEventHeader Fields", Change Data Capture Developer Guide,
    https://developer.salesforce.com/docs/atlas.en-us.change_data_capture.meta/change_data_capture/cdc_event_fields_header.htm);
  - an extract: its Bulk API 2.0 job's `createdDate` ("Get Information About a Query Job", Bulk API 2.0 Developer
    Guide, https://developer.salesforce.com/docs/atlas.en-us.api_asynch.meta/api_asynch/query_get_one_job.htm):
    every record the extract lacks was changed after it.
  This host's clock never is one: it may run ahead of Salesforce's, and a transaction in flight commits with a stamp
  older than its commit, so a position taken from it would step over both (contract 5). It only chooses which
  window getDeleted is asked about.
- `StreamPosition`: a replay id and the commit time of the event at it. Replay ids order one topic's (or one
  channel's) events only, so ways compare through the time position, `time()`.

Events → poll reads: stream position → time position (`min` with Salesforce's held-back now, `earlier` by a
lookback, `whole_seconds`) → poll checkpoint (`to_poll_checkpoint`; app/handoffs.py `leave_events`). Poll →
events the other way round: the stream's position is captured first, then one poll round reads past it.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from .model import Checkpoint

EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)


@dataclass(frozen=True, order=True, slots=True)
class Position:
    """A time in Salesforce's clock, in epoch milliseconds, then the record Id of the poll keyset ("" for none)."""

    ms: int
    id: str = ""

    @classmethod
    def of(cls, when: dt.datetime, id: str = "") -> Position:
        """An aware datetime (a stamp Salesforce answered, or one stored from it), truncated to the millisecond as
        salesforce/values.py `encode_epoch_ms` does (this module needs only `model`: postgres/ returns positions)."""
        return cls(int((when - EPOCH).total_seconds() * 1000), id)

    @classmethod
    def poll_keyset(cls, checkpoint: Checkpoint | None) -> Position | None:
        """The keyset of a stored poll position: (SystemModstamp, Id) of the newest record read. None without one."""
        if checkpoint is None or checkpoint.poll_modstamp is None:
            return None
        return cls(checkpoint.poll_modstamp, checkpoint.poll_id or "")

    @classmethod
    def window_end(cls, checkpoint: Checkpoint | None) -> Position | None:
        """Where a stored poll position's getDeleted window ended (its `latestDateCovered`). None without one."""
        if checkpoint is None or checkpoint.poll_deleted_through is None:
            return None
        return cls(checkpoint.poll_deleted_through)

    @property
    def when(self) -> dt.datetime:
        """As a UTC datetime."""
        return EPOCH + dt.timedelta(milliseconds=self.ms)

    def earlier(self, seconds: float) -> Position:
        """`seconds` earlier (a lookback: what Salesforce does not hold back, a transaction that committed late),
        without an Id: the start of that millisecond."""
        return Position(self.ms - int(seconds * 1000))

    def whole_seconds(self) -> Position:
        """The start of its second, without an Id: SOQL and getDeleted compare datetimes in whole seconds
        (docs/salesforce-coverage.md §1), so a read from here takes every record stamped in that second."""
        return Position(self.ms // 1000 * 1000)

    def to_poll_checkpoint(self, topic: str) -> Checkpoint:
        """A poll that starts here: the change keyset and getDeleted's window both (a capture, a handoff)."""
        return Checkpoint(topic, None, poll_modstamp=self.ms, poll_id=self.id, poll_deleted_through=self.ms)

    def keyset_checkpoint(self, topic: str) -> Checkpoint:
        """The change keyset moved here (records read up to it); the stored window end stays."""
        return Checkpoint(topic, None, poll_modstamp=self.ms, poll_id=self.id)

    def window_checkpoint(self, topic: str) -> Checkpoint:
        """getDeleted's window end moved here; the stored keyset stays (unless set back in the same transaction:
        pipeline/poll_deletes.py `rewound`)."""
        return Checkpoint(topic, None, poll_deleted_through=self.ms)

    def __str__(self) -> str:
        return f"{self.when.isoformat()} {self.id}"


@dataclass(frozen=True, slots=True)
class StreamPosition:
    """Where a stream stands: the replay id of the last event applied (None: not known yet) and that event's commit
    time in epoch milliseconds (None until one was applied: a captured position, a keepalive)."""

    replay_id: bytes | None
    commit_ms: int | None = None

    def time(self) -> Position | None:
        """Its time position (the commit time of the event at it), None before any event was applied. Only the
        object's own events make it the object's position: a channel's is moved by its other members' events too."""
        return Position(self.commit_ms) if self.commit_ms is not None else None
