"""An object's mode (cdc: change events; poll: pipeline/poll.py) and the switch between the two, both ways,
without a hole and without a new extract (issue 12 §1, §4; README "Polling").

- Why an object polls: configured (`mode = "poll"`); no change-event topic (`auto`: GetTopic answers NOT_FOUND for
  an entity not selected for Change Data Capture, docs/pubsub-cdc.md §4); or the org's event delivery allocation
  is used up (any mode but `poll`: a stream ended with `subscription.limit.exceeded`, app/limits.py).
- cdc → poll (`to_poll`): the poll position starts at the commit time of the last change the stream applied (the
  stream checkpoint's commitTimestamp; when no event was applied since the position was captured, the time that
  position was saved), less `poll.lookback_s` (a round reads from that much earlier again); getDeleted starts there
  too. Every change after the last applied event has a SystemModstamp at or after its commit, so the first round
  reads it; records read twice are harmless (the version guard). The rows it reads again forget their stream
  position in the same transaction: a polled record stamped in the same second as the last streamed change is
  newer than it (read later), and must win the guard's tie (postgres/state.py `poll_from_stream`).
- poll → cdc (`to_cdc`): capture the stream's position first (as before a backfill), then one more poll round, which
  reads everything up to at least the capture; the stream then starts from the captured position. Changes in
  between arrive twice, harmlessly.
A crash in the middle repeats the switch: the stored mode changes only after the handoff is stored.
"""

from __future__ import annotations

import asyncio

import structlog

from ..model import Checkpoint, ConfigError, TerminalError
from ..pipeline.poll import ObjectPoller, poll_topic
from ..pipeline.stopping import until_stopped
from ..pipeline.stream import ObjectStream
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


async def to_poll(store: Store, name: str, lookback_s: float, stream_topic: str | None = None) -> bool:
    """cdc → poll: store the poll position from the stream checkpoint (the object's topic's, or `stream_topic`'s:
    the channel it streamed on). False without a stream checkpoint (nothing to continue from: the poll path
    extracts the object again)."""
    times = await store.checkpoint_times(stream_topic or topic_for(name))
    if times is None:
        return False
    commit, _basis, saved = times
    since = commit if commit is not None else saved
    start = (int(since * 1000) - int(lookback_s * 1000)) // 1000 * 1000  # whole seconds, as SOQL compares
    forgotten = await store.poll_from_stream(name, Checkpoint(poll_topic(name), None, poll_modstamp=start, poll_id="",
                                                              poll_deleted_through=start))
    log.info("mode.poll_position_from_stream", object=name, last_commit=commit, position_saved=saved,
             poll_from_ms=start, stream_positions_forgotten=forgotten)
    return True


async def to_cdc(stream: ObjectStream, poller: ObjectPoller, stop: asyncio.Event) -> bool:
    """poll → cdc: capture the stream position, then one poll round past it. False without a poll position (the
    object was never polled: the stream path backfills it as usual)."""
    if await stream.store.load_poll_position(poller.topic) is None:
        return False
    await until_stopped(stop, stream.capture_position())
    await poller.applier.load_schema()
    await poller.round(stop)
    log.info("mode.handoff_polled", object=stream.name, rounds=poller.rounds)
    return True
