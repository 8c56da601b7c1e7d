"""The handoffs of an object's life (replicator/lifecycle.py `HANDOFFS`): each function carries the position from
the way the object leaves to the way it enters, and stores the new way only once the handoff is stored, so a crash
in the middle repeats it (docs/lifecycle.md).

- Why an object polls: configured (`mode = "poll"`); no change-event topic (`auto`: GetTopic answers NOT_FOUND for
  an entity not selected for Change Data Capture, docs/pubsub-cdc.md §4); or the org's event delivery allocation
  is used up (any mode but `poll`: a stream ended with `subscription.limit.exceeded`, app/limits.py).
- Positions are replicator/position.py's: leaving events, the object's stream position becomes a time position
  (`Position`), stored as its poll checkpoint; entering events, the stream's position is captured first and a
  poll round reads past it.
- Events → poll (`leave_events`): the poll position starts at the object's own position (postgres/state.py
  `own_position`: its newest change applied from events, its last poll position, its last extract's start; never
  another object's events or a keepalive), less `poll.handoff_lookback_s` (10 minutes: a transaction that committed
  after the last event applied, and whose events are never read, is stamped up to its duration before its commit,
  and Salesforce ends every transaction within 10 minutes); getDeleted starts there too. Every change the
  events did not bring has a SystemModstamp at or after it, so the first round reads it; records read twice are
  harmless (the version guard). The rows it reads again forget their stream position in the same transaction: a
  polled record stamped in the same second as the last streamed change is newer than it (read later), and must win
  the guard's tie (postgres/state.py `poll_from_stream`).
- Poll → events (`enter_events`): the stream's position first (a topic's captured now; a channel's checkpoint,
  captured at its first start), then one more poll round, which reads everything up to at least that position;
  the stream then starts from it. Changes in between arrive twice, harmlessly.
"""

from __future__ import annotations

import asyncio

import structlog

from ..config import PollSettings
from ..lifecycle import Way
from ..model import ConfigError, ReplicatorError, TerminalError, TransientError
from ..pipeline.poll import ObjectPoller, poll_topic, salesforce_position
from ..pipeline.stopping import until_stopped
from ..pipeline.stream import ObjectStream
from ..position import Position
from ..postgres.store import Store
from ..salesforce.topics import topic_for

log = structlog.get_logger(__name__)

TOPIC, ALLOCATION, CONFIGURED = "topic", "allocation", "configured"  # why the object runs in its mode


ALLOCATION_REASON = ("the org's event delivery allocation (DailyDeliveredPlatformEvents) is used up: polling until "
                     "/limits shows room")


def no_topic_reason(name: str) -> str:
    return f"no change-event topic {topic_for(name)} (the entity is not selected for Change Data Capture)"


async def choose_mode(pubsub, name: str, configured: str, limits=None) -> tuple[str, str, str]:
    """(mode, why, cause) of an object now: `poll` when configured; `poll` while the event delivery allocation is
    used up (`limits.events_available()` false); else `cdc` when its change-event topic exists, `poll` for `auto`
    without one, and a configuration error for `cdc` without one."""
    if configured == "poll":
        return "poll", 'configured (mode = "poll")', CONFIGURED
    if limits is not None and not limits.events_available():
        return "poll", ALLOCATION_REASON, ALLOCATION
    topic = topic_for(name)
    if not await topic_exists(pubsub, topic):
        if configured == "cdc":
            raise ConfigError(f'objects.{name}: mode = "cdc" but {name} has no change-event topic ({topic}): select '
                              'it for Change Data Capture in the org, or set mode = "auto" or "poll"')
        return "poll", no_topic_reason(name), TOPIC
    why = ('configured (mode = "cdc"), ' if configured == "cdc" else "") + f"change-event topic {topic} exists"
    return "cdc", why, TOPIC


async def topic_exists(pubsub, topic: str) -> bool:
    """Pub/Sub GetTopic: False on NOT_FOUND (docs/pubsub-cdc.md §4, "Topic unknown, or CDC not enabled for the
    entity"); any other error propagates."""
    try:
        await pubsub.get_topic(topic)
    except TerminalError as exc:
        if exc.code != "TOPIC_NOT_FOUND":
            raise
        return False
    return True


async def stored_way(store: Store, name: str) -> tuple[Way, str | None]:
    """The way the stored state says the object was kept current, and its channel."""
    st = await store.get_object(name)
    if st is None or st.mode is None:
        return Way.NONE, None
    if st.mode == "poll":
        return Way.POLL, None
    return (Way.CHANNEL, st.channel) if st.channel else (Way.TOPIC, None)


async def leave_events(store: Store, client, name: str, poll: PollSettings, reason: str,
                       floor: Position | None = None) -> bool:
    """Events → poll, as time positions (replicator/position.py): store the poll position from the object's own
    position (`Store.own_position`), or from `floor` when later (the time of a channel's stream position when its
    event allocation ran out: every member's events up to it are applied), but no later than Salesforce's position
    now (`salesforce_position`: held back to the start of a transaction still in flight, which commits with an older
    stamp: `min`, so the hold-back is kept), less `poll.handoff_lookback_s` (at least
    `poll.lookback_s`): Salesforce holds back only what is still in flight, and a transaction that committed after
    the last event applied (its events never read: the allocation refused them, or the service was down and polls
    now) is stamped up to its duration earlier, at most 10 minutes (Apex Developer Guide, "Execution Governors and
    Limits", https://developer.salesforce.com/docs/atlas.en-us.apexcode.meta/apexcode/apex_gov_limits.htm: maximum
    execution time for each Apex transaction), in whole seconds; then the mode `poll`.
    False when the object has no position at all (it was never extracted: the poll path extracts it)."""
    own = await store.own_position(name)
    since = max((p for p in (own, floor) if p is not None), default=None)
    if since is None:
        return False
    held = await salesforce_position(client, name)
    start = min(since, held).earlier(max(poll.lookback_s, poll.handoff_lookback_s)).whole_seconds()
    forgotten = await store.poll_from_stream(name, start.to_poll_checkpoint(poll_topic(name)))
    await store.set_mode(name, "poll", reason)
    log.info("handoff.to_poll", object=name, own_position_ms=own and own.ms, floor_ms=floor and floor.ms,
             held_ms=held.ms, poll_from_ms=start.ms, stream_positions_forgotten=forgotten)
    return True


async def enter_events(poller: ObjectPoller, stop: asyncio.Event, stream: ObjectStream | None = None) -> bool:
    """Poll → events, from a time position to a stream position: the stream's position first (`stream` given: capture
    its topic's now; else the caller's channel already has its checkpoint), then one poll round past it, which reads
    everything up to at least the stream's position. False without a poll position (the object was never polled:
    the event path extracts it as usual). `poller` is prepared (`ObjectPoller.prepare`); the caller stores the new
    way afterwards."""
    if Position.poll_keyset(await poller.store.load_poll_position(poller.topic)) is None:
        return False
    if stream is not None:
        await until_stopped(stop, stream.capture_position())
    await poller.round(stop)
    log.info("handoff.polled_past_position", object=poller.name, rounds=poller.rounds)
    return True


async def leave_unconfigured(store: Store, client, settings, channel: str | None, names: list[str]) -> None:
    """Objects out of the configuration whose position is `channel`'s checkpoint, or (`channel` None) their own
    topic's, keep their own position as a time position (a `Position` stored as their poll position; lifecycle
    HANDOFFS CHANNEL -> NONE and TOPIC -> NONE: `leave_events`), so that adding one back later polls past it before
    it streams again: a channel skipped its events meanwhile, and a topic never had the events of changes made while
    the entity was out of Change Data Capture. Run under the channel's lease, or the object's own. An object the org
    no longer answers for is logged and left."""
    source = f"channel {channel}" if channel else "its own topic"
    for name in names:
        try:
            left = await leave_events(store, client, name, settings.poll,
                                      f"out of the configuration: its position left {source}")
        except TransientError:
            raise
        except ReplicatorError as exc:  # the org may have lost the object too: it is not replicated any more
            log.error("handoff.left_without_position", object=name, channel=channel, error=str(exc),
                      action="if it is configured again it streams from its stored position: resync it then")
            continue
        if left:
            log.info("handoff.object_left", object=name, channel=channel)
