"""bench/fleet.py's pure parts: the nearest-rank percentiles, the takeover of a lost unit followed through polls
(the first higher fence, then the first checkpoint commit of its topic at or after that lease's acquisition), the
balance samples and the double holders of one scrape round."""

from __future__ import annotations

from bench.fleet_report import (
    Balance,
    Lease,
    Snapshot,
    Takeovers,
    double_holders,
    goal_s,
    percentile,
    summary,
    unit_topic,
)


def test_percentile_is_nearest_rank_and_never_below_a_value_seen():
    assert percentile([], 50) is None
    assert percentile([3.0], 99) == 3.0
    values = [float(v) for v in range(1, 11)]  # 1..10
    assert percentile(values, 50) == 5.0
    assert percentile(values, 99) == 10.0  # fewer than 100 values: p99 is the maximum
    assert percentile(list(reversed(values)), 90) == 9.0
    assert summary([2.0, 1.0, 4.0]) == {"n": 3, "p50_s": 2.0, "p99_s": 4.0, "max_s": 4.0}
    assert summary([])["max_s"] is None


def test_goals():
    assert goal_s("sigkill", 6) == goal_s("sigstop", 6) == 11
    assert goal_s("sigterm", 6) == 5


def test_unit_topic():
    assert unit_topic("object:Account") == "/data/AccountChangeEvent"
    assert unit_topic("object:Invoice__c") == "/data/Invoice__ChangeEvent"
    assert unit_topic("channel:/data/ChangeEvents") is None


def _snap(now: float, leases: dict, checkpoints: dict) -> Snapshot:
    return Snapshot(now, {"o1": {u: Lease(*v) for u, v in leases.items()}}, {"o1": checkpoints})


def test_takeover_is_signal_to_the_new_owners_first_commit():
    t = Takeovers()
    before = _snap(100.0, {"object:Account": ("r1", 3, 90.0, 104.0), "object:Contact": ("r2", 1, 80.0, 104.0)},
                   {"/data/AccountChangeEvent": 99.9})
    assert before.held_by("r1") == [("o1", "object:Account", 3)]
    assert before.held_by("r2") == [("o1", "object:Contact", 1)]
    t.lost(1, "sigkill", "r1", 100.0, before.held_by("r1"))
    # the old owner's last commit (before the loss) and its expired lease: nothing yet
    t.observe(_snap(105.0, {"object:Account": ("r1", 3, 90.0, 104.0)}, {"/data/AccountChangeEvent": 99.9}))
    assert t.pending()[0].acquired is None
    # taken over at 106.5 (fence 4), no commit of it yet: a checkpoint older than the acquisition does not count
    t.observe(_snap(106.6, {"object:Account": ("r3", 4, 106.5, 112.5)}, {"/data/AccountChangeEvent": 99.9}))
    (p,) = t.pending()
    assert (p.owner, p.new_fence, p.held_s, p.takeover_s) == ("r3", 4, 6.5, None)
    # its first commit, seen at the next poll
    t.observe(_snap(107.0, {"object:Account": ("r3", 4, 106.5, 112.5)}, {"/data/AccountChangeEvent": 106.8}))
    assert t.pending() == []
    assert t.items[0].takeover_s == 6.8
    # a later commit never moves the figure
    t.observe(_snap(108.0, {"object:Account": ("r3", 4, 106.5, 112.5)}, {"/data/AccountChangeEvent": 107.9}))
    assert t.items[0].takeover_s == 6.8
    by = t.by_kind()
    assert by["sigkill"] == {"n": 1, "p50_s": 6.8, "p99_s": 6.8, "max_s": 6.8, "held_p50_s": 6.5,
                             "not_taken_over": 0, "unfinished": 0}
    assert by["sigterm"]["n"] == 0 and by["sigterm"]["p99_s"] is None


def test_takeover_not_finished_without_a_higher_fence():
    t = Takeovers()
    t.lost(1, "sigstop", "r1", 100.0, [("o1", "object:Account", 3)])
    # the same fence renewed (the paused replica woke up before anyone took it): not a takeover
    t.observe(_snap(101.0, {"object:Account": ("r1", 3, 90.0, 110.0)}, {"/data/AccountChangeEvent": 100.5}))
    assert t.by_kind()["sigstop"]["unfinished"] == 1
    # resumed before anybody took it: its own still, never taken over (not a takeover time, not pending)
    assert [k.unit for k in t.resumed(1)] == ["object:Account"]
    assert t.pending() == []
    t.observe(_snap(130.0, {"object:Account": ("r2", 4, 129.0, 135.0)}, {"/data/AccountChangeEvent": 129.5}))
    assert t.items[0].takeover_s is None
    assert t.by_kind()["sigstop"] | {} == {"n": 0, "p50_s": None, "p99_s": None, "max_s": None, "held_p50_s": None,
                                           "not_taken_over": 1, "unfinished": 0}


def test_balance_min_max_per_org_and_replica():
    b = Balance()
    leases = {"object:A": ("r1", 1, 0.0, 20.0), "object:B": ("r1", 1, 0.0, 20.0), "object:C": ("r2", 1, 0.0, 20.0),
              "object:D": ("r3", 1, 0.0, 20.0)}
    b.sample(_snap(10.0, leases, {}), ["r1", "r2", "r3"], 4)
    # r3's lease expired (it died): not held by anybody; r4 (its replacement) holds nothing yet
    leases["object:D"] = ("r3", 1, 0.0, 9.0)
    b.sample(_snap(10.0, leases, {}), ["r1", "r2", "r4"], 4)
    assert b.per_replica["o1"] == {"r1": [2, 2], "r2": [1, 1], "r3": [1, 1], "r4": [0, 0]}
    assert b.per_org() == {"o1": {"min": 0, "max": 2, "all_held": 0.5, "over_share": 0}}
    b.sample(_snap(10.0, {u: ("r1", 1, 0.0, 20.0) for u in leases}, {}), ["r1", "r2"], 4)  # 4 > share 2
    assert b.per_org()["o1"]["over_share"] == 1


def test_double_holders():
    assert double_holders({"r1": [("o1", "object:A")], "r2": [("o1", "object:B")]}) == []
    assert double_holders({"r1": [("o1", "object:A")], "r2": [("o1", "object:A"), ("o2", "object:A")]}) == [
        ("o1", "object:A", ["r1", "r2"])]
