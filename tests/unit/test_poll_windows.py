"""getDeleted windows that hold more deletes than one call answers (EXCEEDED_ID_LIMIT) are halved down to a minute
(pipeline/poll_deletes.py); a minute that still holds too many is a key reconciliation. Against a fake getDeleted
that truncates seconds and counts ids as Salesforce does ("sObject Get Deleted", REST API Developer Guide)."""

from __future__ import annotations

import datetime as dt
from types import SimpleNamespace

from replicator.model import TerminalError
from replicator.observe.metrics import Metrics
from replicator.pipeline.poll_deletes import MINUTE, PollDeletes, _middle
from replicator.position import Position

NOW = dt.datetime(2026, 12, 5, 12, 30, 20, tzinfo=dt.UTC)


class FakeOrg:
    def __init__(self, deleted: dict[str, dt.datetime], limit: int):
        self.deleted, self.limit, self.windows = deleted, limit, []

    async def get_deleted(self, name: str, start: dt.datetime, end: dt.datetime) -> dict:
        start, end = start.replace(second=0, microsecond=0), end.replace(second=0, microsecond=0)
        self.windows.append((start, end))
        covered = min(end, NOW)
        found = [(when, rid) for rid, when in self.deleted.items() if start <= when <= covered]
        if len(found) > self.limit:
            raise TerminalError("Too many ids", code="EXCEEDED_ID_LIMIT")
        return {"deletedRecords": [{"id": rid, "deletedDate": when.isoformat()} for when, rid in sorted(found)],
                "latestDateCovered": covered.isoformat()}


def _deletes(org: FakeOrg) -> tuple[PollDeletes, list]:
    committed: list = []

    async def commit(ops, checkpoint, records):
        committed.append(([op.key for op in ops], checkpoint.poll_deleted_through))

    settings = SimpleNamespace(poll=SimpleNamespace(lookback_s=0, reconcile_interval_s=0))
    deletes = PollDeletes(org, None, settings, "Task", "poll:Task", Metrics(), commit)
    deletes.reconciled = 0

    async def reconcile(rewind=None):
        deletes.reconciled += 1
        return 0

    deletes.reconcile = reconcile
    return deletes, committed


def _ms(when: dt.datetime) -> int:
    return int(when.timestamp() * 1000)


def _at(when: dt.datetime) -> Position:
    return Position(_ms(when))


def test_a_window_is_halved_on_whole_minutes():
    start = dt.datetime(2026, 12, 5, 12, 0, 40, tzinfo=dt.UTC)
    assert _middle(start, start.replace(minute=31, second=0)) == start.replace(minute=15, second=0)
    assert _middle(start, start.replace(minute=2, second=0)) == start.replace(minute=1, second=0)
    assert _middle(start, start.replace(minute=1, second=0)) is None  # one minute: nothing narrower


async def test_deletes_spread_over_the_window_are_read_in_halves(monkeypatch):
    monkeypatch.setattr("replicator.pipeline.poll_deletes._next_minute", lambda: NOW.replace(second=0) + MINUTE)
    early = {f"00T00000000000{k}AAA": NOW - dt.timedelta(minutes=20, seconds=k) for k in range(3)}
    late = {f"00T00000000001{k}AAA": NOW - dt.timedelta(minutes=4, seconds=k) for k in range(3)}
    org = FakeOrg({**early, **late}, limit=4)
    deletes, committed = _deletes(org)
    count, covered = await deletes.read(_at(NOW - dt.timedelta(minutes=30)))
    assert (count, deletes.reconciled, covered) == (6, 0, _at(NOW))
    assert sorted(k for keys, _ in committed for k in keys) == sorted([*early, *late])
    # each piece commits its own window end, in order; the last is Salesforce's now
    assert [c for _, c in committed] == sorted(c for _, c in committed) and committed[-1][1] == _ms(NOW)
    assert deletes.calls == len(org.windows) <= 8


async def test_a_minute_with_too_many_deletes_is_reconciled(monkeypatch):
    monkeypatch.setattr("replicator.pipeline.poll_deletes._next_minute", lambda: NOW.replace(second=0) + MINUTE)
    org = FakeOrg({f"00T00000000000{k}AAA": NOW - dt.timedelta(seconds=k) for k in range(5)}, limit=4)
    deletes, committed = _deletes(org)
    count, covered = await deletes.read(_at(NOW - dt.timedelta(days=15)))
    assert (count, deletes.reconciled, covered) == (0, 1, None)
    assert deletes.calls <= 2 * 15 + 2  # halving 15 days down to a minute: log2(21,600) levels, two calls each
