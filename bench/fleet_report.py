"""bench/fleet.py's pure parts, apart so they are tested without processes (tests/unit/test_bench_fleet.py): the
nearest-rank percentiles, the takeover of a lost unit followed through polls (the first higher fence, then the
first checkpoint commit of its topic at or after that lease's acquisition), the balance samples and the double
holders of one scrape round."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from replicator.salesforce.topics import topic_for

KINDS = ("sigkill", "sigstop", "sigterm")
POLL_S = 0.2
SCRAPE_S = 2.0
SIGTERM_GOAL_S = 5.0
# A replica SIGCONTed this recently still reports the units it held before its pause (replicator_unit_held) until its
# next renewal finds them taken (lease.lost), its commits meanwhile refused by the fence: such a double holder is
# counted apart from any other.
RESUMED_S = 3.0


# ---------------------------------------------------------------------------------------------------- pure logic


def percentile(values: list[float], p: float) -> float | None:
    """The nearest-rank percentile (the smallest value with at least p% of the values at or below it); None of
    nothing. With fewer than 100 values p99 is the maximum: it never interpolates below a value seen."""
    if not values:
        return None
    ordered = sorted(values)
    return ordered[max(math.ceil(p / 100 * len(ordered)), 1) - 1]


def summary(values: list[float]) -> dict:
    return {"n": len(values), "p50_s": percentile(values, 50), "p99_s": percentile(values, 99),
            "max_s": max(values) if values else None}


def goal_s(kind: str, lease_s: float) -> float:
    """The bound a takeover of this kind must meet: lease_s + 5 s after a death or a pause, 5 s after SIGTERM."""
    return SIGTERM_GOAL_S if kind == "sigterm" else lease_s + 5


@dataclass
class Lease:
    owner: str
    fence: int
    acquired: float  # epoch seconds (database clock)
    expires: float


@dataclass
class Snapshot:
    """One poll of every org: {org: {unit: Lease}}, {org: {topic: updated_at epoch}}, the database's now."""
    now: float
    leases: dict[str, dict[str, Lease]]
    checkpoints: dict[str, dict[str, float]]

    def held_by(self, replica: str) -> list[tuple[str, str, int]]:
        """(org, unit, fence) of every live lease `replica` holds."""
        return sorted((org, unit, lease.fence) for org, units in self.leases.items() for unit, lease in units.items()
                      if lease.owner == replica and lease.expires > self.now)


def unit_topic(unit: str) -> str | None:
    """The checkpoint topic an `object:NAME` unit commits under (None for other units)."""
    return topic_for(unit.removeprefix("object:")) if unit.startswith("object:") else None


@dataclass
class Takeover:
    fault: int
    kind: str
    org: str
    unit: str
    victim: str
    fence: int
    signalled: float
    owner: str | None = None
    new_fence: int | None = None
    acquired: float | None = None
    committed: float | None = None
    kept: bool = False  # a paused victim resumed before anybody took the unit over, and went on with it

    @property
    def held_s(self) -> float | None:
        return None if self.acquired is None else round(self.acquired - self.signalled, 3)

    @property
    def takeover_s(self) -> float | None:
        return None if self.committed is None else round(self.committed - self.signalled, 3)


@dataclass
class Takeovers:
    """The units lost at each fault, followed through the polls until their new owner's first commit."""
    items: list[Takeover] = field(default_factory=list)

    def lost(self, fault: int, kind: str, victim: str, signalled: float, held: list[tuple[str, str, int]]) -> None:
        self.items += [Takeover(fault, kind, org, unit, victim, fence, signalled) for org, unit, fence in held]

    def pending(self) -> list[Takeover]:
        return [t for t in self.items if t.committed is None and not t.kept]

    def resumed(self, fault: int) -> list[Takeover]:
        """The paused victim of `fault` runs again: the units nobody had taken over by then are its own still (its
        fence unchanged, its renewal extends even an expired lease): never taken over, not a takeover time."""
        kept = [t for t in self.items if t.fault == fault and t.acquired is None]
        for t in kept:
            t.kept = True
        return kept

    def observe(self, snap: Snapshot) -> None:
        for t in self.pending():
            lease = snap.leases.get(t.org, {}).get(t.unit)
            if t.acquired is None and lease is not None and lease.fence > t.fence:
                # the first acquisition after the loss (a later poll may already show a second one: then the unit
                # moved twice, and the first commit seen is still after the loss)
                t.owner, t.new_fence, t.acquired = lease.owner, lease.fence, lease.acquired
            topic = unit_topic(t.unit)
            if t.acquired is not None and topic is not None:
                updated = snap.checkpoints.get(t.org, {}).get(topic)
                if updated is not None and updated >= t.acquired:
                    t.committed = updated

    def by_kind(self) -> dict[str, dict]:
        out = {}
        for kind in KINDS:
            mine = [t for t in self.items if t.kind == kind]
            done = [t.takeover_s for t in mine if t.takeover_s is not None]
            kept = sum(t.kept for t in mine)
            out[kind] = {**summary(done), "held_p50_s": percentile([t.held_s for t in mine if t.held_s is not None], 50),
                         "not_taken_over": kept, "unfinished": len(mine) - len(done) - kept}
        return out


@dataclass
class Balance:
    """Units held of each org by each running replica, sampled at every poll."""
    per_replica: dict[str, dict[str, list[int]]] = field(default_factory=dict)  # org -> replica -> [min, max]
    samples: int = 0
    all_held: dict[str, int] = field(default_factory=dict)  # org -> samples with every unit held by a live lease
    over_share: dict[str, int] = field(default_factory=dict)  # org -> samples with a replica above its fair share

    def sample(self, snap: Snapshot, running: list[str], units: int) -> None:
        self.samples += 1
        share = -(-units // max(len(running), 1))
        for org, leases in snap.leases.items():
            live = {u: lease.owner for u, lease in leases.items() if lease.expires > snap.now}
            self.all_held[org] = self.all_held.get(org, 0) + (len(live) == units)
            counts = {r: sum(1 for o in live.values() if o == r) for r in running}
            self.over_share[org] = self.over_share.get(org, 0) + any(c > share for c in counts.values())
            for r, c in counts.items():
                low_high = self.per_replica.setdefault(org, {}).setdefault(r, [c, c])
                low_high[0], low_high[1] = min(low_high[0], c), max(low_high[1], c)

    def per_org(self) -> dict[str, dict]:
        return {org: {"min": min(lo for lo, _ in reps.values()), "max": max(hi for _, hi in reps.values()),
                      "all_held": round(self.all_held[org] / max(self.samples, 1), 3),
                      "over_share": self.over_share[org]}
                for org, reps in sorted(self.per_replica.items())}


def double_holders(scrapes: dict[str, list[tuple[str, str]]]) -> list[tuple[str, str, list[str]]]:
    """From one scrape round ({replica: [(org, unit) it reports held]}), the units two replicas report held."""
    holders: dict[tuple[str, str], list[str]] = {}
    for replica, held in scrapes.items():
        for key in held:
            holders.setdefault(key, []).append(replica)
    return [(org, unit, sorted(rs)) for (org, unit), rs in sorted(holders.items()) if len(rs) > 1]
