"""Batches are bounded by events and time and never split a Salesforce transaction."""

from __future__ import annotations

from replicator.model import Change, StreamEvent, Version
from replicator.pipeline.batcher import Batcher


def ev(txn: str, n: int = 0) -> StreamEvent:
    change = Change("Account", f"001{n}", "UPDATE", Version(n), txn)
    return StreamEvent("/data/AccountChangeEvent", bytes([n]), (change,), commit_timestamp=n)


def test_size_bound_cuts_only_at_a_transaction_boundary():
    b = Batcher(max_events=3, max_wait_s=10, hold_s=10)
    assert b.add(ev("a", 1), now=0) is None
    assert b.add(ev("a", 2), now=0) is None
    batch = b.add(ev("b", 3), now=0)  # size reached: "b" may continue, so only "a" is cut
    assert [e.changes[0].transaction_key for e in batch] == ["a", "a"]
    assert len(b.pending) == 1


def test_one_large_transaction_waits_for_its_end():
    b = Batcher(max_events=2, max_wait_s=10, hold_s=10)
    assert b.add(ev("a"), now=0) is None
    assert b.add(ev("a"), now=0) is None
    assert b.add(ev("a"), now=0) is None
    batch = b.add(ev("b"), now=0)
    assert len(batch) == 3 and b.pending[0].changes[0].transaction_key == "b"


def test_keepalive_closes_the_batch():
    b = Batcher(max_events=100, max_wait_s=10, hold_s=10)
    b.add(ev("a"), now=0)
    batch = b.add(StreamEvent("/t", b"k", keepalive=True), now=0)
    assert len(batch) == 2 and batch[-1].keepalive


def test_time_bound_and_hold():
    b = Batcher(max_events=100, max_wait_s=0.2, hold_s=0.5)
    b.add(ev("a"), now=0.0)
    b.add(ev("b"), now=0.1)
    assert b.due(now=0.15) is None  # under the time bound
    first = b.due(now=0.25)  # time bound: the complete transaction "a" goes, "b" is held
    assert [e.changes[0].transaction_key for e in first] == ["a"]
    assert b.due(now=0.3) is None
    assert b.next_deadline(now=0.3) > 0
    rest = b.due(now=0.7)  # "b" idle for hold_s: complete
    assert [e.changes[0].transaction_key for e in rest] == ["b"]
    assert b.next_deadline() is None
