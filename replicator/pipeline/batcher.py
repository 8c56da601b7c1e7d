"""Cutting the event stream into batches, bounded by events and by time, never inside a transaction.

A Salesforce transaction (all changes sharing a `transactionKey`) must be applied in one database
transaction (docs/pubsub-cdc.md §7). Events of one transaction arrive back to back, in commit order, so a
transaction is known complete when an event of another transaction or a keepalive follows it. The
trailing transaction is held back until then, or until it has been idle for `hold_s` (its events were
published together at commit, so a pause means it is over), so a quiet stream is not delayed forever.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import structlog

from ..model import StreamEvent

log = structlog.get_logger(__name__)

# How long the trailing transaction may stay idle before it is taken as complete. A transaction's events are
# published together at its commit and arrive back to back (the gap between two FetchResponses of one burst is
# milliseconds), so half a second of silence means it is over; it adds at most that much lag to the last
# transaction of a quiet stream. The batch bounds themselves are settings (sections.py, `[stream]`).
HOLD_S = 0.5


def _txn(event: StreamEvent) -> str | None:
    return event.changes[0].transaction_key if event.changes else None


@dataclass(slots=True)
class Batcher:
    max_events: int
    max_wait_s: float
    hold_s: float = HOLD_S
    # A transaction longer than this is split across commits (memory bound; `stream.max_transaction_events`).
    max_transaction_events: int | None = None
    pending: list[StreamEvent] = field(default_factory=list)
    first_at: float | None = None
    last_at: float = 0.0
    # The trailing run of one transaction: where it starts in `pending` and its key (None: the last event
    # closes a transaction, e.g. a keepalive). Kept as events arrive, so finding the complete prefix is O(1)
    # (scanning back through a 100,000-event transaction on every event was quadratic).
    _tail_start: int = field(default=0, init=False)
    _tail_txn: str | None = field(default=None, init=False)

    def add(self, event: StreamEvent, now: float | None = None) -> list[StreamEvent] | None:
        """Add an event; return a batch when one is ready."""
        now = time.monotonic() if now is None else now
        if not self.pending:
            self.first_at = now
        txn = _txn(event)
        if txn is None or txn != self._tail_txn:
            self._tail_start, self._tail_txn = len(self.pending), txn
        self.pending.append(event)
        self.last_at = now
        if event.keepalive:
            return self._cut(len(self.pending))
        if len(self.pending) >= self.max_events:
            if self.max_transaction_events is not None and len(self.pending) >= self.max_transaction_events:
                # bound memory: split, loudly
                log.warning("stream.transaction_split", transaction_key=self._tail_txn, events=len(self.pending),
                            max_transaction_events=self.max_transaction_events,
                            consequence="this transaction is applied in more than one commit")
                return self._cut(len(self.pending))
            return self._cut(self._complete_prefix())
        return None

    def due(self, now: float | None = None) -> list[StreamEvent] | None:
        """Called when no event arrived for a while: return a batch if the time bound has passed."""
        now = time.monotonic() if now is None else now
        if not self.pending or self.first_at is None:
            return None
        if now - self.first_at < self.max_wait_s:
            return None
        if now - self.last_at >= self.hold_s:
            return self._cut(len(self.pending))
        return self._cut(self._complete_prefix())

    def complete(self) -> list[StreamEvent] | None:
        """The events that end on a known transaction boundary, now: the stream takes them when nothing more is
        ready to read, so a quiet or steady stream commits at once and a busy one gathers its next batch while
        the last commits (group commit); `max_wait_s` stays the bound while events keep arriving."""
        return self._cut(self._complete_prefix())

    def drain(self) -> list[StreamEvent] | None:
        """Stopping: the events that end on a known transaction boundary. The trailing transaction, which may
        go on, is not committed alone: the checkpoint stays before it and a restart receives it whole."""
        return self._cut(self._complete_prefix())

    def next_deadline(self, now: float | None = None) -> float | None:
        """Seconds until `due` could return a batch (None: nothing pending)."""
        now = time.monotonic() if now is None else now
        if not self.pending or self.first_at is None:
            return None
        wait_until = self.first_at + self.max_wait_s
        if now < wait_until:
            return wait_until - now
        if self._complete_prefix() > 0:
            return 0.0  # a complete part is due now
        return max(0.001, self.last_at + self.hold_s - now)

    def _complete_prefix(self) -> int:
        """Number of leading events that end on a transaction boundary known to be complete."""
        return len(self.pending) if self._tail_txn is None else self._tail_start

    def _cut(self, n: int) -> list[StreamEvent] | None:
        if n <= 0:
            return None
        batch, self.pending = self.pending[:n], self.pending[n:]
        self.first_at = self.last_at if self.pending else None
        self._tail_start = max(0, self._tail_start - n)  # a cut inside the tail leaves only tail events
        if not self.pending:
            self._tail_txn = None
        return batch
