"""Several simulated orgs: each org's Ids carry a pod of its own (ids.org_pod), so two orgs never share an Id;
org_options derives org k's options; SimulatorThread(orgs=N) runs N orgs in-process."""

from __future__ import annotations

import pytest

from replicator.sim.ids import MAX_ORGS, POD, checksum_suffix, make_id, org_pod, parse_counter, with_pod
from replicator.sim.server import DEMO_CLIENT_ID, DEMO_CLIENT_SECRET, SimulatorThread, org_options
from replicator.sim.store import OrgStore


def test_org_pods_are_distinct_and_org_one_keeps_todays():
    assert org_pod(1) is POD and POD == "5g"
    assert (org_pod(2), org_pod(3)) == ("5h", "5i")
    pods = [org_pod(k) for k in range(1, MAX_ORGS + 1)]
    assert len(set(pods)) == MAX_ORGS and pods[-1] == "zz"
    for bad in (0, MAX_ORGS + 1):
        with pytest.raises(ValueError):
            org_pod(bad)


def test_make_id_with_a_pod():
    for k in (1, 2, 40):
        pod = org_pod(k)
        for n in (1, 61, 3844, 10**6):
            value = make_id("001", n, pod)
            assert value[3:5] == pod and value == value[:15] + checksum_suffix(value[:15])
            assert parse_counter(value, "001", pod) == n and parse_counter(value[:15], "001", pod) == n
            assert with_pod(make_id("001", n), pod) == value
            if k != 1:
                assert parse_counter(value, "001") is None  # not org 1's
                assert value != make_id("001", n)
    assert make_id("001", 7, "5g") == make_id("001", 7)  # a pod equal to POD, not the same object


def test_org_stores_of_two_orgs_share_no_id_and_refer_to_their_own_records():
    one, two = OrgStore(300, seed=3), OrgStore(300, seed=3, pod=org_pod(2))
    for name in ("Account", "Contact", "Task", "AccountShare"):
        ids_one = {row[0] for row in one.stores[name].rows()}
        ids_two = {row[0] for row in two.stores[name].rows()}
        assert len(ids_two) == 300 and not ids_one & ids_two
        assert all(two.stores[name].position(i) is not None for i in ids_two)
        assert all(two.stores[name].position(i) is None for i in ids_one)
    accounts = {row[0] for row in two.stores["Account"].rows()}
    contact = two.stores["Contact"]
    refs = {row[contact.names.index("AccountId")] for row in contact.rows()} - {None}
    assert refs and refs <= accounts
    assert two.stores["Account"].record_id(4) == make_id("001", 5, org_pod(2))
    # org 1's rows are today's: the pod changes nothing else
    assert one.stores["Contact"].row(7) == OrgStore(300, seed=3).stores["Contact"].row(7)


def test_org_options():
    base = {"seed": 9, "port": 8443, "state_dir": "/tmp/s", "client_id": "cid", "client_secret": "sec",
            "traffic": {"rate": 5.0}}
    assert org_options(base, 1, 1) == base
    one, two = org_options(base, 1, 2), org_options(base, 2, 2)
    assert (one["client_id"], one["client_secret"], one["seed"], one["port"]) == ("cid", "sec", 9, 8443)
    assert (one["org"], one["org_name"], one["state_dir"]) == (1, "org1", "/tmp/s/org1")
    assert (two["client_id"], two["client_secret"], two["seed"], two["port"]) == ("cid-org2", "sec-org2", 10, 8444)
    assert (two["org"], two["org_name"], two["state_dir"]) == (2, "org2", "/tmp/s/org2")
    assert two["traffic"] == base["traffic"] and two["traffic"] is not base["traffic"]
    defaults = org_options({}, 3, 3)
    assert (defaults["client_id"], defaults["client_secret"]) == (DEMO_CLIENT_ID + "-org3", DEMO_CLIENT_SECRET + "-org3")
    assert "port" not in defaults and "state_dir" not in defaults
    with pytest.raises(ValueError):
        org_options({}, 1, 0)


def test_simulator_thread_runs_several_orgs():
    with SimulatorThread(orgs=3, records=5, tls=False) as running:
        infos = running.infos
        assert running.info is infos[0] and len(running.simulators) == 3
    assert [i["org"] for i in infos] == ["org1", "org2", "org3"]
    assert len({i["org_id"] for i in infos}) == len({i["instance_url"] for i in infos}) == 3
    assert len({i["pubsub_endpoint"] for i in infos}) == 3
    with SimulatorThread(records=5, tls=False) as running:  # one org: today's ready info, no `org` field
        assert running.infos == [running.info] and "org" not in running.info
