"""An object's life as data: its phases, the ways it is kept current, and every handoff between them with how the
position passes (README "Lifecycle"; docs/design.md, contract 5 "Handoff without a hole").

- `Phase`: where the object stands. Stored in `replicator.objects.phase` (the first six) and shown by the process's
  health (all of them). `STREAMING` means live: its changes arrive by events or by poll rounds (`Way` says which).
- `Way`: how a live object is kept current: change events on a subscription of its own (`TOPIC`), as a member of a
  channel (`CHANNEL`: one subscription for many objects), or poll rounds (`POLL`). `NONE`: not replicated yet,
  or left out of the configuration. Stored as `replicator.objects.mode` (cdc or poll) plus
  `replicator.objects.channel` (the channel whose checkpoint carries its position, NULL otherwise).
- `HANDOFFS`: for each change of way, how the position passes from the way it leaves to the way it enters. The
  one position every way can be brought to is a time position in Salesforce's clock: the poll position
  (SystemModstamp, Id) with getDeleted's window. A stream's position becomes one from the object's own newest
  applied change (never another object's events, a keepalive or this host's clock); a time position becomes a
  stream's by capturing the stream's position first, then one poll round, so that everything between the two is
  read twice at worst (the version guard makes the overlap harmless) and never missed.
- `PHASES`: the allowed phase changes. `step()` refuses any other, so a new path through the life has to be added
  here, with its reason, before code can take it.
"""

from __future__ import annotations

from enum import StrEnum


class Phase(StrEnum):
    NEW = "NEW"                  # registered (described), nothing extracted yet
    BACKFILLING = "BACKFILLING"  # the first extract runs (resumable page by page)
    BACKFILLED = "BACKFILLED"    # extracted; its way starts next
    STREAMING = "STREAMING"      # live: events or poll rounds keep it current (`Way`)
    RESYNCING = "RESYNCING"      # extracted again into the live table (an expired position, GAP_OVERFLOW, asked)
    FAILED = "FAILED"            # stopped on an error no retry fixes (shown with the error)
    # the process's view only (health, /readyz, metrics), never stored
    STARTING = "STARTING"        # the service is deciding its way
    RETRYING = "RETRYING"        # its work failed and waits for the next attempt
    STANDBY = "STANDBY"          # another process holds it (a lease), this one waits to take over

    @property
    def extracting(self) -> bool:
        return self in (Phase.BACKFILLING, Phase.RESYNCING)

    @property
    def extracted(self) -> bool:
        """The table holds a whole extract (its way may go on without another)."""
        return self in (Phase.BACKFILLED, Phase.STREAMING)


STORED = (Phase.NEW, Phase.BACKFILLING, Phase.BACKFILLED, Phase.STREAMING, Phase.RESYNCING, Phase.FAILED)

# Allowed phase changes, each with why it happens. FAILED and RETRYING are reachable from any phase (an error).
PHASES: dict[tuple[Phase, Phase], str] = {
    (Phase.NEW, Phase.BACKFILLING): "the first extract starts (its position captured before it)",
    (Phase.BACKFILLING, Phase.BACKFILLING): "a restart resumes the extract at its pages not yet committed",
    (Phase.BACKFILLING, Phase.BACKFILLED): "every page committed",
    (Phase.BACKFILLED, Phase.STREAMING): "its way starts from the position captured before the extract",
    (Phase.STREAMING, Phase.RESYNCING): "the position cannot continue: resync from a freshly captured one",
    (Phase.STREAMING, Phase.STREAMING): "a change of way (HANDOFFS)",
    (Phase.RESYNCING, Phase.BACKFILLING): "the resync's extract starts",
    (Phase.RESYNCING, Phase.RESYNCING): "a restart repeats the resync",
    (Phase.BACKFILLED, Phase.RESYNCING): "extracted, but without a position its way can continue from",
    (Phase.NEW, Phase.RESYNCING): "a way without a position asks for an extract before any was made",
    (Phase.FAILED, Phase.BACKFILLING): "the operator fixed the cause; the extract starts again",
}


class Way(StrEnum):
    NONE = "none"        # not replicated (new, or out of the configuration)
    TOPIC = "topic"      # change events on the object's own subscription
    CHANNEL = "channel"  # change events as a member of a channel's subscription
    POLL = "poll"        # poll rounds (pipeline/poll.py)

    @property
    def mode(self) -> str | None:
        """The stored `mode` column: cdc for both event ways, poll, or None."""
        return {Way.TOPIC: "cdc", Way.CHANNEL: "cdc", Way.POLL: "poll"}.get(self)


def stored_way(mode: str | None, channel: str | None) -> Way:
    """The way the stored state says the object was kept current."""
    if mode == "poll":
        return Way.POLL
    if mode == "cdc":
        return Way.CHANNEL if channel else Way.TOPIC
    return Way.NONE


# How the position passes at each change of way (source, target). A change between two event ways (a topic and
# a channel, or two channels) goes through POLL: leave to a time position, then enter from it.
HANDOFFS: dict[tuple[Way, Way], str] = {
    (Way.NONE, Way.TOPIC): "capture the topic's position, extract, stream from the captured position",
    (Way.NONE, Way.CHANNEL): "the channel's position captured first (at its first start), extract, then the channel "
                             "streams from its checkpoint",
    (Way.NONE, Way.POLL): "capture a poll position, extract, poll from it",
    (Way.TOPIC, Way.POLL): "poll from the object's newest applied change (its rows' stream versions; else its "
                           "stream checkpoint's newest commit), less poll.lookback_s; its rows forget their stream "
                           "positions in the same transaction",
    (Way.CHANNEL, Way.POLL): "poll from the object's own newest applied change (its rows' stream versions, never the "
                             "channel's newest commit, which other objects move), less poll.lookback_s",
    (Way.POLL, Way.TOPIC): "capture the topic's position, one poll round past it, stream from the captured position",
    (Way.POLL, Way.CHANNEL): "the channel's position exists (captured first at its first start), one poll round "
                             "past it, then the object joins the channel at the channel's checkpoint",
    (Way.TOPIC, Way.CHANNEL): "through POLL: leave the topic to a time position, then join the channel from it",
    (Way.CHANNEL, Way.TOPIC): "through POLL: leave the channel to a time position, then the topic from it",
    (Way.CHANNEL, Way.NONE): "out of the configuration: its position leaves the channel as a time position (stored "
                             "as its poll position), so adding it back later continues from there",
}


def route(source: Way, target: Way) -> list[tuple[Way, Way]]:
    """The handoffs that take an object from `source` to `target`, in order (empty when they are the same)."""
    if source == target:
        return []
    if (source, target) in HANDOFFS:
        if source in (Way.TOPIC, Way.CHANNEL) and target in (Way.TOPIC, Way.CHANNEL):
            return [(source, Way.POLL), (Way.POLL, target)]
        return [(source, target)]
    if target == Way.NONE:  # out of the configuration: an object's own topic keeps its checkpoint, a poll its
        return []           # position; only a channel's must be turned into the object's own
    raise ValueError(f"no handoff from {source} to {target}")


def step(current: Phase | str | None, target: Phase) -> Phase:
    """`target`, when the lifecycle allows moving there from `current`; a ValueError names the change otherwise."""
    now = Phase(current) if current is not None else Phase.NEW
    if now == target or target in (Phase.FAILED, Phase.RETRYING) or (now, target) in PHASES:
        return target
    raise ValueError(f"lifecycle: no transition {now} -> {target}")
