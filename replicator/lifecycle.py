"""An object's life as data: its phases, the ways it is kept current, and every handoff between them with how the
position passes (docs/lifecycle.md; docs/design.md, contract 5 "Handoff without a hole").

- `Phase`: where the object stands. Stored in `replicator.objects.phase` (the first six) and shown by the process's
  health (all of them). `STREAMING` means live: its changes arrive by events or by poll rounds (`Way` says which).
- `Way`: how a live object is kept current: change events on a subscription of its own (`TOPIC`), as a member of a
  channel (`CHANNEL`: one subscription for many objects), or poll rounds (`POLL`). `NONE`: not replicated yet,
  or left out of the configuration. Stored as `replicator.objects.mode` (cdc or poll) plus
  `replicator.objects.channel` (the channel whose checkpoint carries its position, NULL otherwise).
- `HANDOFFS`: for each change of way, how the position passes from the way it leaves to the way it enters. The
  one position every way can be brought to is a time position in Salesforce's clock, replicator/position.py
  `Position` (epoch ms, then the Id of the poll keyset (SystemModstamp, Id)), stored as the poll position with
  getDeleted's window. A stream's position (`StreamPosition`) becomes one from the object's own newest applied
  change (never another object's events, a keepalive or this host's clock), no later than Salesforce's held-back
  now, less a lookback, in whole seconds; a time position becomes a stream's by capturing the stream's position
  first, then one poll round, so that everything between the two is read twice at worst (the version guard makes
  the overlap harmless) and never missed.
- `PHASES`: the allowed phase changes, each with why it happens. The diagram and handoff table of docs/lifecycle.md
  are generated from these tables (`python -m replicator.docs`; a test fails when they differ).
"""

from __future__ import annotations

from dataclasses import dataclass
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
    def extracted(self) -> bool:
        """The table holds a whole extract (its way may go on without another)."""
        return self in (Phase.BACKFILLED, Phase.STREAMING)


# Allowed phase changes of the stored phase, each with why it happens. FAILED is reachable from any phase (an error
# no retry fixes); STARTING, RETRYING and STANDBY are the process's view of any phase.
PHASES: dict[tuple[Phase, Phase], str] = {
    (Phase.NEW, Phase.BACKFILLING): "position captured, the extract starts",
    (Phase.BACKFILLING, Phase.BACKFILLING): "a restart resumes the extract at its pages not committed",
    (Phase.BACKFILLING, Phase.BACKFILLED): "every page committed",
    (Phase.BACKFILLED, Phase.STREAMING): "its way starts at the captured position",
    (Phase.STREAMING, Phase.STREAMING): "a change of way (HANDOFFS)",
    (Phase.STREAMING, Phase.RESYNCING): "position expired or refused, GAP_OVERFLOW, replicator resync, a field added",
    (Phase.RESYNCING, Phase.RESYNCING): "a restart repeats the resync",
    (Phase.RESYNCING, Phase.BACKFILLING): "position captured again, a new extract into the live table",
    (Phase.STREAMING, Phase.BACKFILLING): "a polled object without SystemModstamp: every round is an extract; "
                                          "replicator backfill run again",
    (Phase.BACKFILLED, Phase.BACKFILLING): "replicator backfill run again: a new extract",
    (Phase.BACKFILLED, Phase.RESYNCING): "polled without a stored poll position",
    (Phase.FAILED, Phase.BACKFILLING): "the cause fixed, the extract starts again",
}


def allowed(old: str | None, new: str) -> bool:
    """Whether the stored phase may go from `old` to `new` (`PHASES`; the same phase again, after a crash, and FAILED
    from anywhere too; None: no row yet)."""
    return old is None or old == new or new == Phase.FAILED or (old, new) in PHASES


# Phase changes written that `PHASES` does not allow, as (object, old, new): logged at error level where they are
# written (postgres/state.py `change_phase`) and kept here, so that the tests, which run services in-process, fail
# on any (tests/conftest.py).
UNEXPECTED: list[tuple[str, str, str]] = []


class Way(StrEnum):
    NONE = "none"        # not replicated (new, or out of the configuration)
    TOPIC = "topic"      # change events on the object's own subscription
    CHANNEL = "channel"  # change events as a member of a channel's subscription
    POLL = "poll"        # poll rounds (pipeline/poll.py)


@dataclass(frozen=True, slots=True)
class Handoff:
    label: str    # the diagram's arrow
    carries: str  # how the position passes, in full


# How the position passes at each change of way (source, target). A change between two event ways (a topic and
# a channel, or two channels) goes through POLL: leave to a time position, then enter from it.
HANDOFFS: dict[tuple[Way, Way], Handoff] = {
    (Way.NONE, Way.TOPIC): Handoff("capture, extract, stream", "capture the topic's position, extract, stream from "
                                   "the captured position"),
    (Way.NONE, Way.CHANNEL): Handoff("first start: capture, extract", "the channel's position captured first (at its "
                                     "first start), extract, then the channel streams from its checkpoint"),
    (Way.NONE, Way.POLL): Handoff("capture, extract, poll", "capture a poll position (Salesforce's time, held back), "
                                  "extract, poll from it"),
    (Way.TOPIC, Way.POLL): Handoff("own position", "poll from the object's own position (its newest change applied "
                                   "from events, its last poll position, its last extract's start), no later than "
                                   "Salesforce's held-back position, less poll.handoff_lookback_s (a transaction "
                                   "whose events were never read lasts at most 10 minutes); its rows forget their "
                                   "stream positions in the same transaction"),
    (Way.CHANNEL, Way.POLL): Handoff("own position", "the same own position, never the channel's newest commit "
                                     "(other objects move it) nor a keepalive's save time; when the event allocation "
                                     "ran out, no earlier than the channel's newest commit"),
    (Way.POLL, Way.TOPIC): Handoff("capture, poll round, stream", "capture the topic's position, one poll round past "
                                   "it, stream from the captured position"),
    (Way.POLL, Way.CHANNEL): Handoff("poll round, join", "the channel's position exists (captured first at its first "
                                     "start), one poll round past it, then the object joins the channel at its "
                                     "checkpoint"),
    (Way.TOPIC, Way.CHANNEL): Handoff("through POLL", "leave the topic to a time position, then join the channel "
                                      "from it"),
    (Way.CHANNEL, Way.TOPIC): Handoff("through POLL", "leave the channel to a time position, then the topic from it"),
    (Way.CHANNEL, Way.NONE): Handoff("removed: own position kept", "out of the configuration: its position leaves "
                                     "the channel as its own, stored as its poll position, so adding it back later "
                                     "joins from there (POLL -> CHANNEL)"),
    (Way.TOPIC, Way.NONE): Handoff("removed: own position kept", "out of the configuration: its own position (as "
                                   "TOPIC -> POLL) stored as its poll position, so adding it back later polls past "
                                   "it before streaming (POLL -> TOPIC): what changed meanwhile without an event (the "
                                   "entity out of Change Data Capture for a while) is read too, which the topic's "
                                   "checkpoint alone could not replay"),
}


def diagram() -> str:
    """The lifecycle as a Mermaid state diagram, from `PHASES` and `HANDOFFS` (docs/lifecycle.md shows it)."""
    lines = ["```mermaid", "stateDiagram-v2", "    [*] --> NEW: configured (described)"]
    def label(text: str) -> str:
        return text.replace(":", ",")  # a colon would end Mermaid's label

    lines += [f"    {a} --> {b}: {label(why)}" for (a, b), why in PHASES.items() if a != b]
    lines.append("    state STREAMING {")
    lines += [f"        {a.name} --> {b.name}: {label(h.label)}" for (a, b), h in HANDOFFS.items()]
    lines += ["    }", "```"]
    return "\n".join(lines)


def handoff_table() -> str:
    """Every handoff and how it carries the position (docs/lifecycle.md shows it under the diagram)."""
    lines = ["| from | to | how the position passes |", "|---|---|---|"]
    lines += [f"| {a.name} | {b.name} | {h.carries} |" for (a, b), h in HANDOFFS.items()]
    return "\n".join(lines)


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
