"""A replica's decisions among several (app/fleet.py `plan`): at most its fair share of the free units, the extras
it holds handed back only to a replica that runs them and has room, and no unit left unowned for long."""

from __future__ import annotations

from replicator.app.fleet import cooling, fair_share, plan, shares

UNITS = [f"object:{n}" for n in ("Account", "Contact", "Invoice__c", "Opportunity")]


def _plan(share, active=(), draining=0, free=(), free_for=None, cooling=(), wanted=(), alone=False, grace=15.0):
    return plan(share, list(active), draining, list(free), free_for or {}, set(cooling), set(wanted), alone, grace)


def test_fair_share_is_units_over_replicas_rounded_up():
    assert [fair_share(4, n) for n in (1, 2, 3, 4, 5)] == [4, 2, 2, 1, 1]
    assert fair_share(0, 3) == 0 and fair_share(4, 0) == 4


def test_shares_add_up_to_the_units_and_none_is_above_the_rounded_up_share():
    for units in range(0, 13):
        for count in range(1, 6):
            replicas = [f"r{i}" for i in range(count)]
            for salt in range(4):
                got = shares(units, replicas, salt)
                assert sum(got.values()) == units and max(got.values()) <= fair_share(units, count)
                assert max(got.values()) - min(got.values()) <= 1
    assert shares(4, ["b", "a"]) == {"a": 2, "b": 2}
    assert shares(4, ["r3", "r1", "r2"]) == {"r1": 2, "r2": 1, "r3": 1}  # every replica computes the same


def test_several_orgs_give_their_extra_units_to_different_replicas():
    """3 orgs of 4 units on 3 replicas: each org's extra unit on another replica, 4 + 4 + 4 in all (the org's place
    among the deployment's orgs is the salt: config.py org_index)."""
    replicas = ["r1", "r2", "r3"]
    per_org = [shares(4, replicas, salt) for salt in range(3)]
    assert {r: sum(s[r] for s in per_org) for r in replicas} == {"r1": 4, "r2": 4, "r3": 4}


def test_alone_it_takes_every_free_unit():
    assert _plan(4, free=UNITS, alone=True) == (UNITS, [])


def test_it_takes_free_units_only_up_to_its_share():
    assert _plan(2, active=UNITS[:1], free=UNITS[1:]) == (UNITS[1:2], [])
    assert _plan(2, active=UNITS[:2], free=UNITS[2:]) == ([], [])
    assert _plan(2, active=UNITS[:1], draining=1, free=UNITS[2:]) == ([], []), "a unit handed back still counts"


def test_a_unit_nobody_took_for_the_grace_is_taken_beyond_the_share():
    assert _plan(2, active=UNITS[:2], free=UNITS[2:], free_for={UNITS[2]: 15.0, UNITS[3]: 3.0}) == ([UNITS[2]], [])


def test_a_unit_it_handed_back_is_not_taken_again_soon_unless_alone():
    assert _plan(2, free=UNITS[:1], cooling=UNITS[:1]) == ([], [])
    assert _plan(4, free=UNITS[:1], cooling=UNITS[:1], alone=True) == (UNITS[:1], [])


def test_a_unit_handed_back_cools_only_until_another_replica_took_it():
    """Handed back at fence 3 for `lease_s` (its deadline 10.0): while the lease still carries fence 3 nobody took it
    yet, and this replica leaves it to the one it was handed to. Once another took it (fence 4), it is like any
    other unit again: should that replica stop at once and release it, this one takes it at its next read rather
    than after the rest of `lease_s` (test_orgs_fleet: a SIGTERM right after a rebalance moved a unit in 6 s)."""
    handed = {UNITS[0]: (10.0, 3), UNITS[1]: (10.0, 3), UNITS[2]: (10.0, 3)}
    seen = {UNITS[0]: {"fence": 3, "live": False}, UNITS[1]: {"fence": 4, "live": False}}
    assert cooling(handed, seen, now=5.0) == {UNITS[0]: (10.0, 3), UNITS[2]: (10.0, 3)}
    assert cooling(handed, seen, now=10.0) == {}, "cooled for lease_s at most"


def test_extras_go_back_newest_first_only_to_a_replica_with_room_that_runs_them():
    # the first replica took all four alone; a second that runs them all joins with none
    assert _plan(2, active=UNITS, wanted=UNITS) == ([], UNITS[:1:-1])
    # nobody with room runs them: kept (handing them back would leave them unowned)
    assert _plan(2, active=UNITS, wanted=()) == ([], [])
    assert _plan(2, active=UNITS, wanted=UNITS[:1]) == ([], UNITS[:1])
    # units already being handed back are not counted again
    assert _plan(2, active=UNITS[:3], draining=1, wanted=UNITS) == ([], UNITS[2:3])
