"""The position type every way compares (replicator/position.py): a time in Salesforce's clock, then the poll
keyset's Id; a stream position becomes one through its commit time, and one becomes a poll checkpoint."""

from __future__ import annotations

import dataclasses
import datetime as dt

import pytest

from replicator.model import Checkpoint
from replicator.pipeline.poll_deletes import latest_date_covered
from replicator.position import Position, StreamPosition

T = dt.datetime(2026, 12, 5, 12, 30, 20, tzinfo=dt.UTC)
T_MS = int(T.timestamp() * 1000)
ID = "00T5g0000000009AAA"


def test_positions_order_by_time_then_id_as_the_keyset_reads():
    start_of_ms, record, next_ms = Position(T_MS), Position(T_MS, ID), Position(T_MS + 1)
    assert start_of_ms < record < next_ms
    assert Position(T_MS, "00T5g0000000001AAA") < record
    assert sorted([next_ms, record, start_of_ms]) == [start_of_ms, record, next_ms]
    assert min(record, next_ms) == record and max(record, start_of_ms) == record
    assert Position(T_MS, ID) == record and hash(Position(T_MS, ID)) == hash(record)


def test_a_position_is_a_value():
    with pytest.raises(dataclasses.FrozenInstanceError):
        Position(T_MS).ms = 0  # type: ignore[misc]


def test_whole_seconds_is_the_start_of_its_second_before_every_record_in_it():
    assert Position(T_MS + 999, ID).whole_seconds() == Position(T_MS)
    assert Position(T_MS, ID).whole_seconds() == Position(T_MS) < Position(T_MS, ID)  # the Id goes too
    assert Position(T_MS).whole_seconds() == Position(T_MS)
    assert Position(1_999).whole_seconds() == Position(1_000)


def test_earlier_goes_back_a_lookback_without_an_id():
    assert Position(T_MS, ID).earlier(10) == Position(T_MS - 10_000)
    assert Position(T_MS + 500).earlier(0.5) == Position(T_MS)
    assert Position(T_MS, ID).earlier(0) == Position(T_MS)
    # a handoff: ten minutes back, whole seconds
    assert Position(T_MS + 250, ID).earlier(600).whole_seconds() == Position(T_MS - 600_000)


def test_when_and_of_round_trip_a_datetime():
    assert Position(T_MS).when == T
    assert Position.of(T) == Position(T_MS)
    assert Position.of(T + dt.timedelta(milliseconds=123), ID) == Position(T_MS + 123, ID)
    assert str(Position(T_MS, ID)) == f"2026-12-05T12:30:20+00:00 {ID}"


def test_latest_date_covered_as_salesforce_answers_it():
    assert latest_date_covered({"latestDateCovered": "2026-12-05T12:30:20.000+0000"}) == Position(T_MS)
    assert latest_date_covered({"latestDateCovered": "2026-12-05T12:30:20Z"}) == Position(T_MS)
    assert latest_date_covered({"latestDateCovered": None}) is None and latest_date_covered({}) is None


def test_poll_checkpoints_round_trip():
    start = Position(T_MS)
    cp = start.to_poll_checkpoint("poll:Task")
    assert cp == Checkpoint("poll:Task", None, poll_modstamp=T_MS, poll_id="", poll_deleted_through=T_MS)
    assert Position.poll_keyset(cp) == start and Position.window_end(cp) == start

    read = Position(T_MS + 2_000, ID)
    keyset = read.keyset_checkpoint("poll:Task")
    assert (keyset.poll_modstamp, keyset.poll_id, keyset.poll_deleted_through) == (T_MS + 2_000, ID, None)
    assert Position.poll_keyset(keyset) == read and Position.window_end(keyset) is None

    window = Position(T_MS + 5_000).window_checkpoint("poll:Task")
    assert (window.poll_modstamp, window.poll_deleted_through) == (None, T_MS + 5_000)
    assert Position.poll_keyset(window) is None and Position.window_end(window) == Position(T_MS + 5_000)

    assert Position.poll_keyset(None) is None and Position.window_end(None) is None
    # stored before Ids were: the keyset reads from the start of that millisecond
    assert Position.poll_keyset(Checkpoint("poll:Task", None, poll_modstamp=T_MS, poll_id=None)) == start


def test_a_stream_position_becomes_a_time_position_through_its_commit_time():
    assert StreamPosition(b"\x00\x01", T_MS).time() == Position(T_MS)
    assert StreamPosition(b"\x00\x01").time() is None  # captured, no event applied yet
    assert StreamPosition(None, None).time() is None


def test_a_late_commit_held_back_by_salesforce_is_kept_by_min_not_max():
    # The object's newest event committed at T; a transaction still in flight began 4 minutes earlier, so
    # Salesforce's held-back now is there, and that transaction's records will be stamped at or after it.
    own = StreamPosition(b"\x00\x07", T_MS).time()
    held = Position(T_MS - 240_000)
    late_stamp = Position(T_MS - 240_000 + 1_500, ID)

    start = min(own, held).earlier(0).whole_seconds()
    assert start <= late_stamp  # a poll from here reads the late commit
    assert max(own, held).whole_seconds() > late_stamp  # defect 7: max would step over it

    # stream position → time position → poll checkpoint, as app/handoffs.py `leave_events` does
    cp = min(own, held).earlier(600).whole_seconds().to_poll_checkpoint("poll:Task")
    assert cp.poll_modstamp == cp.poll_deleted_through == T_MS - 240_000 - 600_000 and cp.poll_id == ""
