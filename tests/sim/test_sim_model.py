"""Ids, generator and store: Salesforce-shaped ids, determinism, laziness, data hazards."""

from __future__ import annotations

import time

import pytest

from replicator.sim.ids import checksum_suffix, make_id, parse_counter, to_id18
from replicator.sim.schema import HOSTILE_FIELD, build_objects
from replicator.sim.store import OrgStore


def test_checksum_suffix_matches_documented_id():
    # the example id 005R0000000UyrWIAS of docs/bulk-rest-oauth.md §1.5
    assert checksum_suffix("005R0000000UyrW") == "IAS"
    assert to_id18("005R0000000UyrW") == "005R0000000UyrWIAS"


def test_ids_sort_in_counter_order_and_round_trip():
    ids = [make_id("001", n) for n in (1, 9, 10, 61, 62, 3843, 3844, 10**6, 62**5)]
    assert ids == sorted(ids)
    assert all(len(i) == 18 and i.startswith("001") for i in ids)
    assert [parse_counter(i, "001") for i in ids] == [1, 9, 10, 61, 62, 3843, 3844, 10**6, 62**5]
    assert parse_counter(ids[0][:15], "001") == 1
    assert parse_counter(ids[0], "003") is None


def test_every_field_type_is_present():
    types = {f.type for spec in build_objects().values() for f in spec.fields}
    assert {"id", "string", "textarea", "picklist", "multipicklist", "boolean", "int", "double", "currency",
            "percent", "date", "datetime", "time", "reference", "email", "phone", "url", "address"} <= types
    long = [f for s in build_objects().values() for f in s.fields if f.length == 131072]
    assert long and all(f.extra_type_info == "plaintextarea" and f.type == "textarea" for f in long)
    street = build_objects()["Account"].field("BillingStreet")
    assert street.compound_field_name == "BillingAddress"
    ext = build_objects()["Invoice__c"].field("External_Id__c")
    assert ext.external_id and ext.unique


def test_million_record_org_is_lazy_and_deterministic():
    started = time.perf_counter()
    org = OrgStore(1_000_000, seed=3)
    assert time.perf_counter() - started < 1.0
    account = org.stores["Account"]
    assert account.count() == 1_000_000
    assert account.row(999_999) == OrgStore(1_000_000, seed=3).stores["Account"].row(999_999)
    assert account.row(5) != OrgStore(1_000_000, seed=4).stores["Account"].row(5)
    last = account.as_dict(account.row(999_999))
    assert account.get(last["Id"])[0] == last["Id"]


def test_generated_records_carry_the_hazards_and_invariants():
    org = OrgStore(3000, seed=11)
    text = []
    deleted = rows = 0
    for name, store in org.stores.items():
        for row in store.rows():
            rows += 1
            rec = store.as_dict(row)
            # the audit datetimes an object has (a share or history object has one: sim/schema.FEWER_AUDIT_FIELDS)
            stamps = [rec[f] for f in ("CreatedDate", "LastModifiedDate", "SystemModstamp") if f in rec]
            assert stamps and stamps == sorted(stamps)
            assert 2024 <= stamps[0].year and stamps[-1].year <= 2026
            deleted += rec["IsDeleted"]
            text.extend(v for v in rec.values() if isinstance(v, str))
            if name == "Contact" and rec["AccountId"]:
                assert org.stores["Account"].get(rec["AccountId"]) is not None
    blob = "\x00".join(text)
    for needle in (",", '"', "\n", "\r\n", "é", "日本語", "🚀"):
        assert needle in blob
    assert 0.01 < deleted / rows < 0.03
    assert any(len(t) > 10000 for t in text)
    assert sum(len(t) for t in text) / rows < 2000


def test_deleted_count_matches_rows():
    store = OrgStore(2000, seed=5).stores["Opportunity"]
    assert store.deleted_count() == sum(1 for r in store.rows() if r[store.deleted_pos])


def test_hostile_field_is_opt_in():
    assert build_objects()["Account"].field(HOSTILE_FIELD) is None
    org = OrgStore(10, seed=1, hostile_field=True)
    store = org.stores["Account"]
    assert store.as_dict(store.row(0))[HOSTILE_FIELD] == "hostile 0"


@pytest.mark.parametrize("prefix", ["001", "003", "006", "a0X"])
def test_key_prefixes(prefix):
    org = OrgStore(3, seed=1)
    assert any(s.row(0)[0].startswith(prefix) for s in org.stores.values())
