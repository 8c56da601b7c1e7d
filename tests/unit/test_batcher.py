"""Batches are bounded by events and time and never split a Salesforce transaction."""

from __future__ import annotations

from replicator.config import StreamSettings
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


class ScanningBatcher(Batcher):
    """The reference: finds the complete prefix by scanning back from the end (what Batcher did before it kept
    the trailing transaction as events arrive)."""

    __slots__ = ()

    def _complete_prefix(self) -> int:
        last = self.pending[-1].changes[0].transaction_key if self.pending[-1].changes else None
        if last is None:
            return len(self.pending)
        i = len(self.pending)
        while i > 0 and self.pending[i - 1].changes and self.pending[i - 1].changes[0].transaction_key == last:
            i -= 1
        return i


def test_batches_equal_those_of_a_full_scan_on_random_streams():
    import random

    for seed in range(200):
        rng = random.Random(seed)
        ours, ref = Batcher(max_events=5, max_wait_s=0.2, hold_s=0.5), ScanningBatcher(5, 0.2, 0.5)
        now, out_ours, out_ref = 0.0, [], []
        for n in range(rng.randint(1, 120)):
            now += rng.choice([0.0, 0.0, 0.05, 0.3, 0.6])
            roll = rng.random()
            if roll < 0.05:
                event = StreamEvent("/t", bytes([n % 256]), keepalive=True)
            elif roll < 0.08:
                event = StreamEvent("/t", bytes([n % 256]), error="undecodable")  # no changes: no transaction
            else:
                event = ev(rng.choice("aab"), n % 256)
            poll = rng.random() < 0.3  # the stream loop polls the time bound between events
            for b, out in ((ours, out_ours), (ref, out_ref)):
                if poll:
                    out.append(b.due(now))
                    out.append(b.next_deadline(now))
                out.append(b.add(event, now))
        assert out_ours == out_ref, seed
        assert ours.pending == ref.pending, seed
    assert StreamSettings().max_transaction_events > 100_000  # Salesforce's largest transaction stays whole by default


def test_a_transaction_longer_than_the_memory_bound_is_split_loudly():
    from structlog.testing import capture_logs

    b = Batcher(max_events=2, max_wait_s=10, hold_s=10, max_transaction_events=7)
    with capture_logs() as logs:
        cuts = [b.add(ev("a", n), now=0) for n in range(7)]
    assert cuts[:6] == [None] * 6 and len(cuts[6]) == 7 and not b.pending
    assert [e["event"] for e in logs] == ["stream.transaction_split"] and logs[0]["events"] == 7
    assert b.add(ev("a", 8), now=0) is None  # the rest of the transaction starts a new run
    assert len(b.add(ev("b", 9), now=0)) == 1


def test_stopping_commits_only_complete_transactions():
    # A stop right after a transaction's first events must not commit them alone (readers would see half a
    # Salesforce transaction); the checkpoint stays before it and the restart receives it whole.
    b = Batcher(max_events=100, max_wait_s=10, hold_s=10)
    b.add(ev("a", 1), now=0)
    b.add(ev("a", 2), now=0)
    b.add(ev("b", 3), now=0)  # "a" is complete (another transaction follows), "b" may go on
    rest = b.drain()
    assert [e.changes[0].transaction_key for e in rest] == ["a", "a"]
    assert [e.changes[0].transaction_key for e in b.pending] == ["b"]
    assert b.drain() is None  # nothing known complete is left



def test_complete_takes_the_finished_transactions_now_and_holds_the_trailing_one():
    """What the stream commits when nothing more is ready to read (group commit): every transaction known to be
    complete, before any time bound, and never the trailing one, which may go on."""
    b = Batcher(max_events=100, max_wait_s=10, hold_s=10)
    assert b.complete() is None
    b.add(ev("a", 1), now=0)
    assert b.complete() is None  # "a" may go on
    b.add(ev("a", 2), now=0)
    b.add(ev("b", 3), now=0)
    batch = b.complete()
    assert [e.replay_id for e in batch] == [bytes([1]), bytes([2])]
    assert [e.changes[0].transaction_key for e in b.pending] == ["b"] and b.complete() is None
    b.add(StreamEvent("/t", b"k", keepalive=True), now=0)  # a keepalive cuts on its own
    assert b.pending == []
