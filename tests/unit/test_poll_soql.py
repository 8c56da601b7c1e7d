"""The poll query: a keyset on (SystemModstamp, Id) or (LastModifiedDate, Id), literals quoted, and where a round
starts (pipeline/poll.py)."""

from __future__ import annotations

import datetime as dt
from types import SimpleNamespace

import pytest

from replicator.pipeline.poll import ObjectPoller
from replicator.position import Position as P
from replicator.salesforce.records import soql_datetime


def _poller(key_field: str = "SystemModstamp", lookback_s: float = 10) -> ObjectPoller:
    poller = ObjectPoller.__new__(ObjectPoller)
    poller.name, poller.key_field, poller.lookback_s = "Task", key_field, lookback_s
    poller.applier = SimpleNamespace(spec=SimpleNamespace(fields=["Id", "Subject", "SystemModstamp"]))
    return poller


def test_the_keyset_never_compares_the_timestamp_alone():
    ms = int(dt.datetime(2026, 11, 30, 15, 39, 1, tzinfo=dt.UTC).timestamp() * 1000)
    soql = _poller()._soql(P(ms, "00T5g0000000001EAA"), 60)
    assert soql == ("SELECT Id, Subject, SystemModstamp FROM Task WHERE SystemModstamp > 2026-11-30T15:39:01Z OR "
                    "(SystemModstamp = 2026-11-30T15:39:01Z AND Id > '00T5g0000000001EAA') "
                    "ORDER BY SystemModstamp, Id LIMIT 60")


def test_the_start_of_a_second_reads_the_whole_second():
    ms = int(dt.datetime(2026, 11, 30, 15, 39, 1, tzinfo=dt.UTC).timestamp() * 1000)
    assert "WHERE SystemModstamp >= 2026-11-30T15:39:01Z ORDER BY" in _poller()._soql(P(ms, ""), 10)


def test_an_id_is_a_quoted_literal():
    assert "Id > 'x\\' OR Name = \\'y'" in _poller()._soql(P(0, "x' OR Name = 'y"), 10)


def test_soql_datetime_is_utc_whole_seconds():
    tz = dt.timezone(dt.timedelta(hours=2))
    assert soql_datetime(dt.datetime(2026, 1, 2, 5, 4, 5, 999_000, tzinfo=tz)) == "2026-01-02T03:04:05Z"
    with pytest.raises(ValueError):
        soql_datetime(dt.datetime(2026, 1, 2))


def test_an_object_without_systemmodstamp_keys_on_lastmodifieddate():
    soql = _poller("LastModifiedDate")._soql(P(0, "00r5g0000000001AAA"), 5)
    assert soql.endswith("WHERE LastModifiedDate > 1970-01-01T00:00:00Z OR (LastModifiedDate = 1970-01-01T00:00:00Z"
                         " AND Id > '00r5g0000000001AAA') ORDER BY LastModifiedDate, Id LIMIT 5")


def test_a_round_starts_no_later_than_the_previous_delete_window_less_the_lookback():
    poller, position = _poller(lookback_s=10), P(1_000_000, "00T5g0000000009AAA")
    # the window ended long after the position (an idle object): after the position, nothing read again
    assert poller.start_key(position, P(2_000_000)) == position
    # the window held back to a transaction in flight: from its start less the lookback, whole seconds
    assert poller.start_key(position, P(1_005_500)) == P(995_000, "")
    # no window yet: the position less the lookback
    assert poller.start_key(position, None) == P(990_000, "")
    assert _poller(lookback_s=0).start_key(position, P(1_000_000)) == P(1_000_000, "")
