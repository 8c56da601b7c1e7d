"""The operations of a transitions sequence (bench/transitions.py): what each does, how a seed draws them
(`generate`, from the state the operations so far leave: `World`), and `--ops` parsing.

Operations (`--kinds` picks some; each is `kind[:arg…]`):

    traffic:N            the simulator's generator makes N changes (creates, updates, deletes, undeletes) at 100/s on
                         all four objects, configured or not; the next operation starts when half are made
    late:OBJ:K:S         a long transaction: K records of OBJ updated, stamped now, visible S seconds later
    wait                 until every late commit so far is visible and the service has settled
    kill / term          SIGKILL / SIGTERM the first `replicator run`, a few changes while it is down, start it again
    resync:OBJ           `replicator resync OBJ` beside the running service
    resynckill:OBJ       the same, then SIGKILL of the process holding OBJ as soon as it is RESYNCING, a few
                         changes, a restart
    remove:OBJ / add:OBJ the object taken out of / put back into the configuration, then a restart (of both
                         processes when two run, as every configuration change)
    mode:OBJ:M           `mode = M` (auto, cdc, poll) for OBJ, then a restart
    channel:on|off       `stream.channel = "/data/ChangeEvents"` or none, then a restart
    cdc:OBJ:off|on       the entity deselected from / selected again for Change Data Capture (simulator admin)
    alloc:off|on         the event delivery allocation used up / given back (simulator limits admin)
    field:OBJ            a custom field added to OBJ in the org, then set on a few records
    pgrestart:fast|immediate  the Postgres server restarted, cleanly or as after a crash (only with
                         `--own-postgres`: never the shared one)
    replica:start        a second `replicator run` (same config file; its own service.port and service.replica_id);
                         it stands by (drawn only while none runs)
    replica:kill         SIGKILL the second, a few changes; the first takes over what it held
    replica:killfirst    SIGKILL the first while a second runs, a few changes, until the second took everything
                         over; then a new first in its place (without a second: as `kill`)
    replica:pause[:holder|standby]  traffic, then SIGSTOP the process holding the most units (or the other) until
                         the other took its units over and at least lease_s + 2 s passed, then SIGCONT: it must
                         commit nothing after (its replicator_fenced_commits_total is recorded)
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

OBJECTS = ("Account", "Contact", "Opportunity", "Invoice__c")
KEYS = {"Invoice__c": "External_Id__c"}
# A field each object lets a change set (a late commit changes it).
SETTABLE = {"Account": ("Phone", "str"), "Contact": ("Phone", "str"), "Opportunity": ("Amount", "num"),
            "Invoice__c": ("Amount__c", "num")}
KINDS = ("traffic", "late", "wait", "kill", "term", "resync", "resynckill", "remove", "add", "mode", "channel", "cdc", "alloc", "field",
         "pgrestart", "replica")
REPLICA = ("start", "kill", "killfirst", "pause")  # replica:ACTION
# How often each kind is drawn (those that cannot apply in the current state are skipped).
WEIGHTS = {"traffic": 3, "late": 2, "wait": 1, "kill": 2, "term": 1, "resync": 1.5, "resynckill": 1, "remove": 1.2, "add": 1.5, "mode": 1.5,
           "channel": 1, "cdc": 1.2, "alloc": 1, "field": 0.5, "pgrestart": 0.7, "replica": 2}
RECORDS = 300  # per object: a backfill or resync takes a second or two
SETTLE_S = 30  # longest wait for the service to settle after an operation before it is noted as stuck
VERIFY_S = 20  # how long refresh + verify is repeated at the end before the sequence counts as failed
RATE = 100  # changes/s of a traffic operation
# poll.lookback_s: a margin re-read before each poll position. In production it is 10 s against a topic check every
# 300 s; here topic checks run every 0.5 s, so any margin would cover a hole a production ratio leaves open. With no
# margin, a hole in a handoff (a position taken too late) shows as a difference.
LOOKBACK_S = 0
# poll.handoff_lookback_s: events -> poll starts this much before the object's own position, for a transaction that
# committed unread before the switch (production: 600 s, the longest a Salesforce transaction runs). Here it is the
# longest late commit a sequence draws (`late:OBJ:K:S`, S at most LATE_MAX_S), so a position taken later than that
# still shows as a difference.
LATE_MAX_S = 5


@dataclass
class World:
    """The harness's model of what the operations have done so far: what the configuration says and what the org
    was told. Generating against it keeps every operation meaningful (no `add` of a configured object, no `mode =
    cdc` for a deselected entity, which is a configuration error by design, docs/polling.md)."""

    configured: list[str] = field(default_factory=lambda: list(OBJECTS))
    modes: dict[str, str] = field(default_factory=lambda: dict.fromkeys(OBJECTS, "auto"))
    channel: bool = False
    deselected: set[str] = field(default_factory=set)
    exhausted: bool = False
    fields: int = 0
    second: bool = False  # a second `replicator run` runs

    def apply(self, op: str) -> None:
        kind, *args = op.split(":")
        if kind == "remove":
            self.configured.remove(args[0])
        elif kind == "add":
            self.configured.append(args[0])
        elif kind == "mode":
            self.modes[args[0]] = args[1]
        elif kind == "channel":
            self.channel = args[0] == "on"
        elif kind == "cdc":
            (self.deselected.add if args[1] == "off" else self.deselected.discard)(args[0])
        elif kind == "alloc":
            self.exhausted = args[0] == "off"
        elif kind == "field":
            self.fields += 1
        elif kind == "replica" and args[0] in ("start", "kill"):
            self.second = args[0] == "start"

    def expected_mode(self, obj: str) -> str | None:
        """The mode the service should store for `obj` now (None: no firm expectation)."""
        if self.modes[obj] == "poll" or (self.modes[obj] == "auto" and obj in self.deselected):
            return "poll"
        return None if self.exhausted else "cdc"


def _draw(rng: random.Random, world: World, kind: str) -> str | None:
    """One operation of `kind` that makes sense in `world`, or None."""
    configured, out = world.configured, [o for o in OBJECTS if o not in world.configured]
    if kind == "traffic":
        return f"traffic:{rng.choice([100, 200, 400])}"
    if kind == "late":
        return f"late:{rng.choice(OBJECTS)}:{rng.randint(1, 5)}:{rng.randint(2, LATE_MAX_S)}"
    if kind == "pgrestart":
        return f"pgrestart:{rng.choice(['fast', 'immediate'])}"
    if kind in ("kill", "term", "wait"):
        return kind
    if kind in ("resync", "resynckill"):
        return f"{kind}:{rng.choice(configured)}"
    if kind == "remove":
        return f"remove:{rng.choice(configured)}" if len(configured) > 1 else None
    if kind == "add":
        return f"add:{rng.choice(out)}" if out else None
    if kind == "mode":
        obj = rng.choice(OBJECTS)
        choices = [m for m in ("auto", "cdc", "poll") if m != world.modes[obj]
                   and not (m == "cdc" and obj in world.deselected)]
        return f"mode:{obj}:{rng.choice(choices)}"
    if kind == "channel":
        return f"channel:{'off' if world.channel else 'on'}"
    if kind == "cdc":
        if world.deselected and rng.random() < 0.6:
            return f"cdc:{rng.choice(sorted(world.deselected))}:on"
        can = [o for o in OBJECTS if o not in world.deselected and world.modes[o] != "cdc"]
        return f"cdc:{rng.choice(can)}:off" if can else None
    if kind == "alloc":
        return f"alloc:{'on' if world.exhausted else 'off'}"
    if kind == "field":
        return f"field:{rng.choice(OBJECTS)}"
    if kind == "replica":
        if not world.second:
            return "replica:start"
        action = rng.choices(["kill", "killfirst", "pause"], [1, 1, 1.5])[0]
        return "replica:pause:standby" if action == "pause" and rng.random() < 0.25 else f"replica:{action}"
    raise ValueError(kind)


def generate(seed: int, kinds: list[str], length: tuple[int, int] = (5, 15)) -> list[str]:
    """The operations of sequence `seed`: a pure function of the seed, the kinds and the length range."""
    rng = random.Random(seed)
    world = World()
    ops: list[str] = []
    weights = [WEIGHTS[k] for k in kinds]
    n = rng.randint(*length)
    for _ in range(n * 50):  # kinds that cannot apply now are drawn again; a bounded number of times
        if len(ops) == n:
            break
        op = _draw(rng, world, rng.choices(kinds, weights)[0])
        if op is not None:
            world.apply(op)
            ops.append(op)
    return ops


def parse_ops(text: str) -> list[str]:
    ops = [o.strip() for o in text.replace("\n", ";").split(";") if o.strip()]
    for op in ops:
        kind, *args = op.split(":")
        if kind not in KINDS:
            raise ValueError(f"unknown operation {op!r}: kinds are {', '.join(KINDS)}")
        if kind == "replica" and not (args[:1] and args[0] in REPLICA and (
                args[1:] == [] or (args[0] == "pause" and args[1:] in (["holder"], ["standby"])))):
            raise ValueError(f"unknown operation {op!r}: replica:{'|'.join(REPLICA)} or replica:pause:holder|standby")
    return ops



def _kind(op: str) -> str:
    """An operation's kind as counted: `replica:ACTION` apart, the kind."""
    kind, *args = op.split(":")
    return f"replica:{args[0]}" if kind == "replica" else kind
