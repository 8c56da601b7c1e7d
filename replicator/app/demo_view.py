"""The demo's view of a running service: a live table per object on a terminal, plain lines otherwise."""

from __future__ import annotations

import asyncio
import contextlib
import statistics
import time

from rich.console import Console
from rich.live import Live
from rich.table import Table

from ..lifecycle import Phase
from ..postgres.store import Store
from .service import Service

_PLAIN_EVERY_S = 5.0


class DemoView:
    def __init__(self, svc: Service, schema: str, console: Console, live: bool):
        self.svc, self.schema, self.console, self.live = svc, schema, console, live
        self._last: dict[str, tuple[float, float]] = {}  # object → (time, events applied) of the last sample
        self._rates: dict[str, float] = {}

    async def run_until(self, task: asyncio.Task, duration: float) -> None:
        """Show the service until it has streamed for `duration` seconds, counted from when every object is
        STREAMING (the backfill before is shown too, however long it takes), or until it ends. Plain lines come
        every few seconds and once more at the end."""
        started, next_plain = time.monotonic(), 0.0
        deadline: float | None = None
        live = Live(console=self.console, refresh_per_second=4, transient=False) if self.live else None
        with live if live is not None else contextlib.nullcontext():
            while (deadline is None or time.monotonic() < deadline) and not task.done():
                await asyncio.wait([task], timeout=1.0)
                rows = await self._rows()
                self._sample()
                now = time.monotonic()
                if deadline is None and self._all_streaming():
                    deadline = now + duration
                elapsed = now - started
                left = duration if deadline is None else deadline - now
                if live is not None:
                    live.update(self._table(rows, elapsed, left))
                elif elapsed >= next_plain or left <= 0 or task.done():
                    next_plain = elapsed + _PLAIN_EVERY_S
                    for line in self._lines(rows, elapsed):
                        print(line, flush=True)

    def _all_streaming(self) -> bool:
        objects = self.svc.metrics.objects
        return bool(objects) and all(h.phase == Phase.STREAMING for h in objects.values())

    async def _rows(self) -> dict[str, int]:
        """Rows per table, through the running service's store (none yet: 0)."""
        store = self.svc.metrics.store
        out = {}
        for name in self.svc.metrics.objects:
            out[name] = (await store.table_rows(self.schema, name.lower()) or 0) if store is not None else 0
        return out

    def _applied(self, name: str) -> float:
        value = self.svc.metrics.registry.get_sample_value("replicator_events_applied_total", {"object": name})
        return value or 0.0

    def _sample(self) -> None:
        now = time.monotonic()
        for name in self.svc.metrics.objects:
            applied = self._applied(name)
            then, before = self._last.get(name, (now, applied))
            if now > then:
                self._rates[name] = (applied - before) / (now - then)
            self._last[name] = (now, applied)

    def _lag(self, name: str) -> str:
        lag = self.svc.metrics.objects[name].lag(time.time())
        return "-" if lag is None else f"{lag:.2f} s"

    def _phase(self, name: str) -> str:
        h = self.svc.metrics.objects[name]
        if h.phase in (Phase.BACKFILLING, Phase.RESYNCING) and h.rows_expected:
            return f"{h.phase} {h.rows_done / h.rows_expected:.0%}"
        return h.phase

    def _table(self, rows: dict[str, int], elapsed: float, left: float) -> Table:
        table = Table("object", "phase", "rows in Postgres", "events applied", "events/s", "lag",
                      title=f"replicator demo: {elapsed:.0f} s, {max(left, 0):.0f} s left (Ctrl-C stops early)")
        for name in self.svc.metrics.objects:
            table.add_row(name, self._phase(name), f"{rows.get(name, 0):,}", f"{self._applied(name):,.0f}",
                          f"{self._rates.get(name, 0):,.0f}", self._lag(name))
        return table

    def _lines(self, rows: dict[str, int], elapsed: float) -> list[str]:
        return [f"t={elapsed:.0f}s {name} phase={self._phase(name)} rows={rows.get(name, 0)} "
                f"events_applied={self._applied(name):.0f} events_per_s={self._rates.get(name, 0):.0f} "
                f"lag={self._lag(name)}" for name in self.svc.metrics.objects]


async def summary_table(store: Store, schema: str, svc: Service, counts: dict, diffs: dict) -> Table:
    table = Table("object", "rows in org", "rows in Postgres", "events applied", "lag p50", "lag p99",
                  "vs org", title="summary",
                  caption="lag: commit in Salesforce → applied in Postgres, including events that waited for the "
                          "backfill; vs org: a fresh Bulk extract compared row by row")
    for name, diff in diffs.items():
        pg_rows = await store.table_rows(schema, name.lower()) or 0
        stream = svc.streams.get(name)
        lags = sorted(stream.stats.lags) if stream is not None else []
        p50 = f"{statistics.median(lags):.3f} s" if lags else "-"
        p99 = f"{lags[min(len(lags) - 1, int(len(lags) * 0.99))]:.3f} s" if lags else "-"
        applied = svc.metrics.registry.get_sample_value("replicator_events_applied_total", {"object": name})
        verdict = "equal" if diff.equal else (f"[red]missing {diff.missing}, extra {diff.extra}, "
                                              f"different {diff.different}[/]")
        table.add_row(name, f"{counts[name]['total']:,}", f"{pg_rows:,}", f"{applied or 0:,.0f}", p50, p99,
                      verdict)
    return table
