"""The event bus: every published event in replay order, retention, topic filtering and subscriber wake-ups.

Replay ids (docs/pubsub-cdc.md §3): ONE counter for the org's entity, `/data/ChangeEvents` and platform event
topics. A change event of Account is on `/data/AccountChangeEvent` and on `/data/ChangeEvents` with the same id;
a platform event only on its `/event/…` topic. Custom channels (`/data/<Name>__chn`) are buses of their own with
their own counters (channels.py: replay ids are per channel), fed through `followers`. Seen from one topic the ids are therefore
increasing but not contiguous, which Salesforce allows
("consecutive IDs are not contiguous", docs/pubsub-cdc.md §3). Wire form: 10 bytes, the counter as a
big-endian uint64 then two zero bytes, as observed on the wire (docs/pubsub-cdc.md §3). A CUSTOM
replay id may also be the bare 8-byte big-endian long, which is how the Java example and other clients build
one from an integer (same section).

Retention (72 h, docs/pubsub-cdc.md §3): events older than `retention_seconds` are expired;
`purge_now()` expires every stored event. At most `retention_events` events are kept (a memory bound for long
high-rate runs; the oldest go first). Expiry is logical (a floor counter), the list is compacted in large steps
so purging stays O(1) amortised per event. With `keepalive_ahead` the log also holds positions of no topic
(pass_foreign): they count as retained, and no subscription receives them.
"""

from __future__ import annotations

import asyncio
import time
from bisect import bisect_left
from collections.abc import Callable
from dataclasses import dataclass

ALL_CHANGE_EVENTS = "/data/ChangeEvents"
REPLAY_ID_BYTES = 10
LONG_REPLAY_ID_BYTES = 8
SCAN_LIMIT = 20_000  # events examined per take(): keeps one call short when a topic is sparse in the log


class ReplayIdError(Exception):
    """A CUSTOM replay id that is malformed, unknown or outside the retention window
    (docs/pubsub-cdc.md §4)."""


def encode_replay_id(counter: int) -> bytes:
    return counter.to_bytes(8, "big") + b"\x00\x00"


def decode_replay_id(value: bytes) -> int:
    """The counter of a replay id in either accepted form: the 10 bytes this simulator sends, or the bare
    8-byte big-endian long that the Java example's `getReplayIdFromLong` builds and Salesforce accepts."""
    if len(value) == LONG_REPLAY_ID_BYTES:
        return int.from_bytes(value, "big")
    if len(value) != REPLAY_ID_BYTES or value[8:] != b"\x00\x00":
        raise ReplayIdError("malformed replay id")
    return int.from_bytes(value[:8], "big")


@dataclass(slots=True)
class Event:
    counter: int
    topic: str  # the object's own topic (/data/AccountChangeEvent) or the platform event topic
    change: bool  # a change event: also on /data/ChangeEvents
    schema_id: str
    payload: bytes
    time: float  # wall-clock seconds when published (retention)
    # ProducerEvent.id: set on platform events only, "not on change events" (docs/pubsub-cdc.md §3)
    event_id: str = ""

    @property
    def replay_id(self) -> bytes:
        return encode_replay_id(self.counter)


class EventBus:
    def __init__(self, retention_seconds: Callable[[], float], retention_events: Callable[[], int]) -> None:
        self._retention_seconds = retention_seconds
        self._retention_events = retention_events
        self._log: list[Event] = []
        self._first = 1  # counter of self._log[0]
        self.last_counter = 0  # the newest counter handed out (0: none yet)
        self.floor = 0  # every counter <= floor is expired
        self._waiters: set[asyncio.Event] = set()
        self.published = 0
        self.keepalive_positions: set[int] = set()  # positions handed out in keepalives (bounded below)
        # Channels fed from this bus (channels.Channels): told of every event, notify and purge.
        self.followers: list = []

    # -- publishing -------------------------------------------------------------------------------------------
    def publish(self, topic: str, change: bool, schema_id: str, payload: bytes, event_id: str = "") -> Event:
        """Append one event; call notify() once the whole transaction is in."""
        self.last_counter += 1
        event = Event(self.last_counter, topic, change, schema_id, payload, time.time(), event_id)
        self._log.append(event)
        self.published += 1
        for follower in self.followers:
            follower.published(event)
        return event

    def pass_foreign(self, n: int) -> int:
        """Let `n` positions go by that hold no event of this org (on Salesforce's shared bus, other orgs'
        events advance the replay id too); returns the newest position. Each takes a slot in the log, on no
        topic, so positions stay contiguous there; no subscription ever receives one."""
        now = time.time()
        for _ in range(n):
            self.last_counter += 1
            self._log.append(Event(self.last_counter, "", False, "", b"", now))
        return self.last_counter

    def notify(self) -> None:
        self.expire()
        for waiter in self._waiters:
            waiter.set()
        for follower in self.followers:
            follower.notified()

    def register(self, waiter: asyncio.Event) -> None:
        self._waiters.add(waiter)

    def unregister(self, waiter: asyncio.Event) -> None:
        self._waiters.discard(waiter)

    # -- retention --------------------------------------------------------------------------------------------
    def expire(self, now: float | None = None) -> None:
        """Move the floor past events older than the retention window or beyond the count bound."""
        if not self._log:
            return
        start = max(0, self.floor + 1 - self._first)
        limit = self._retention_events()
        if len(self._log) - start > limit:
            start = len(self._log) - limit
        cutoff = (time.time() if now is None else now) - self._retention_seconds()
        if start < len(self._log) and self._log[start].time < cutoff:
            start = bisect_left(self._log, cutoff, lo=start, key=lambda e: e.time)
        self.floor = max(self.floor, self._first + start - 1)
        if start > 4096 and start > len(self._log) // 4:  # compact in big steps: O(1) amortised per event
            del self._log[:start]
            self._first += start

    def purge_now(self) -> int:
        """Expire every stored event (admin: makes any stored replay id invalid)."""
        expired = self.last_counter - self.floor
        self.floor = self.last_counter
        self._first = self.last_counter + 1
        self._log = []
        for follower in self.followers:
            follower.purged()
        return expired

    def keepalive_position(self, counter: int) -> int:
        """Remember a position sent in a keepalive (the newest 10,000) so a subscriber may resume there."""
        if len(self.keepalive_positions) >= 10_000:
            self.keepalive_positions = {c for c in self.keepalive_positions if c >= self.floor}
            if len(self.keepalive_positions) >= 10_000:
                self.keepalive_positions.clear()
        self.keepalive_positions.add(counter)
        return counter

    def retained(self) -> int:
        return self.last_counter - self.floor

    # -- subscribing ------------------------------------------------------------------------------------------
    def start_latest(self) -> int:
        return self.last_counter

    def start_earliest(self) -> int:
        self.expire()
        return self.floor

    def start_after(self, replay_id: bytes) -> int:
        """The cursor for CUSTOM: start AFTER this id, which must name a retained event
        (docs/pubsub-cdc.md §3, §4)."""
        self.expire()
        counter = decode_replay_id(replay_id)
        # Before the first event, a keepalive's latest_replay_id is position 0: resuming there is valid while
        # nothing has expired (it cannot skip an event).
        at_start = counter == 0 and self.floor == 0
        # A keepalive's latest_replay_id is a position, not an event: valid until the window passes it, even
        # when no event follows it yet (on Salesforce's shared bus it is ahead of this org's last event:
        # replay tightening, docs/pubsub-cdc.md §3).
        position = counter in self.keepalive_positions and self.floor <= counter <= self.last_counter
        if not (self.floor < counter <= self.last_counter or at_start or position):
            raise ReplayIdError("replay id unknown or outside the retention window")
        return counter

    def take(self, topic: str, cursor: int, limit: int, max_bytes: int) -> tuple[list[Event], int]:
        """Up to `limit` events of `topic` after `cursor` (and about `max_bytes` of payload, at least one
        event); returns them and the new cursor (the last counter examined)."""
        index = max(cursor, self.floor) + 1 - self._first
        log = self._log
        end = min(len(log), index + SCAN_LIMIT)
        out: list[Event] = []
        size = 0
        everything = topic == ALL_CHANGE_EVENTS
        while index < end and len(out) < limit:
            event = log[index]
            if event.topic == topic or (everything and event.change):
                if out and size + len(event.payload) > max_bytes:
                    break
                out.append(event)
                size += len(event.payload)
            index += 1
        return out, index - 1 + self._first
