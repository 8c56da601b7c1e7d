"""The poll query: a keyset on (SystemModstamp, Id), literals quoted (pipeline/poll.py)."""

from __future__ import annotations

import datetime as dt
from types import SimpleNamespace

import pytest

from replicator.pipeline.poll import ObjectPoller
from replicator.salesforce.records import soql_datetime


def _poller() -> ObjectPoller:
    poller = ObjectPoller.__new__(ObjectPoller)
    poller.name = "Task"
    poller.applier = SimpleNamespace(spec=SimpleNamespace(fields=["Id", "Subject", "SystemModstamp"]))
    return poller


def test_the_keyset_never_compares_the_timestamp_alone():
    ms = int(dt.datetime(2026, 11, 30, 15, 39, 1, tzinfo=dt.UTC).timestamp() * 1000)
    soql = _poller()._soql((ms, "00T5g0000000001EAA"), 60)
    assert soql == ("SELECT Id, Subject, SystemModstamp FROM Task WHERE SystemModstamp > 2026-11-30T15:39:01Z OR "
                    "(SystemModstamp = 2026-11-30T15:39:01Z AND Id > '00T5g0000000001EAA') "
                    "ORDER BY SystemModstamp, Id LIMIT 60")


def test_the_start_of_a_second_reads_the_whole_second():
    ms = int(dt.datetime(2026, 11, 30, 15, 39, 1, tzinfo=dt.UTC).timestamp() * 1000)
    assert "WHERE SystemModstamp >= 2026-11-30T15:39:01Z ORDER BY" in _poller()._soql((ms, ""), 10)


def test_an_id_is_a_quoted_literal():
    assert "Id > 'x\\' OR Name = \\'y'" in _poller()._soql((0, "x' OR Name = 'y"), 10)


def test_soql_datetime_is_utc_whole_seconds():
    tz = dt.timezone(dt.timedelta(hours=2))
    assert soql_datetime(dt.datetime(2026, 1, 2, 5, 4, 5, 999_000, tzinfo=tz)) == "2026-01-02T03:04:05Z"
    with pytest.raises(ValueError):
        soql_datetime(dt.datetime(2026, 1, 2))
