"""Chaos: `replicator run` SIGKILLed at random moments of the backfill and of the stream, with every fault on.

Faults, all at once, from the start: 5% HTTP 503, 1% HTTP 500, 1% 403 REQUEST_LIMIT_EXCEEDED, access tokens that
expire after 30 s unused, 1% duplicate deliveries, Subscribe streams ended with UNAVAILABLE every 10 s, whole-second
timestamps (the simulator's default), diffs of long text when the simulator sends them (`diff_fields`); and in the
traffic: transactions of up to 4 events, events naming up to 3 records, creates/updates/deletes/undeletes, events
over 64 KB as GAP events, a field added mid-way, and at the end one transaction large enough for GAP_OVERFLOW (a
resync). `backfill_kills` kills land while the backfill is loading pages (after a page more committed), `kills`
while the traffic runs (after that many changes). Afterwards `replicator verify` must find every object equal to
the org; the run raises otherwise.

With `history` (`python -m bench --only chaos --history`) every object keeps history (`[history] default = true`,
docs/history.md), and the run also raises unless `replicator verify --history` finds every object's history whole
(current versions equal to the rows, no overlap, no hole) and every published event was applied exactly once
(`events_applied` = `events_published`).

`python -m bench --only chaos` (three runs, 20 kills); `--quick` runs a small one in CI.
"""

from __future__ import annotations

import random
import tempfile
import time
from pathlib import Path

from replicator.postgres.server import fresh_database
from replicator.sim.admin_client import sim_admin

from .e2e import _Replicator, changes_then_overflow, config, counts, verdict, verify
from .harness import start_sim, stop_sim
from .stream import q, until

FAULTS = {"error_503_rate": 0.05, "error_500_rate": 0.01, "limit_exceeded_rate": 0.01, "token_idle_seconds": 30,
          "duplicate_rate": 0.01, "stream_close_seconds": 10, "gap_event_bytes": 65536,
          "overflow_threshold": 100_000}


def faults_of(limit_errors: bool = True) -> dict:
    """FAULTS; without `limit_errors`, no 403 REQUEST_LIMIT_EXCEEDED (the quick run: each one is waited out for 15 to
    30 s, `retry.backoff_delay` on the limit scale, so 1% of requests made its time anything from 50 s to 2 min)."""
    return FAULTS if limit_errors else {**FAULTS, "limit_exceeded_rate": 0.0}


async def _faults(sim: dict, limit_errors: bool) -> dict:
    """Every fault on; diffs of long text too when this simulator sends them."""
    known = (await sim_admin(sim, "GET", "/__sim/faults")).json()
    faults = dict(faults_of(limit_errors), **({"diff_fields": "on"} if "diff_fields" in known else {}))
    await sim_admin(sim, "PUT", "/__sim/faults", faults)
    return faults


async def _kill_during_backfill(url: str, replicator: _Replicator, kills: int) -> int:
    """Kill after each further committed page while objects are still backfilling; the kills that landed."""
    done = 0
    for _ in range(kills):
        pages = int(await q(url, "SELECT count(*) FROM replicator.backfill_pages") or 0)

        async def progressed(p=pages):
            left = await q(url, "SELECT count(*) FROM replicator.objects WHERE phase <> 'STREAMING'")
            return left == 0 or int(await q(url, "SELECT count(*) FROM replicator.backfill_pages") or 0) > p
        await until(progressed, timeout=600, interval=0.05)
        if await q(url, "SELECT count(*) = 4 FROM replicator.objects WHERE phase = 'STREAMING'"):
            break  # the backfill finished first: the remaining kills land in the stream
        replicator.restart()
        done += 1
    return done


async def run(server_url: str, database: str, records: int, changes: int, rate: int, kills: int,
              backfill_kills: int, seed: int = 11, history: bool = False, limit_errors: bool = True) -> dict:
    """One chaos run on a new org and database; its figures. Raises unless `replicator verify` ends equal (and,
    with `history`, `verify --history` too and every event applied once)."""
    proc, sim = start_sim(records)
    url = await fresh_database(server_url, database)
    cfg = Path(tempfile.mkstemp(suffix=".toml")[1])
    # Eight pages an object, so the backfill's kills land between committed pages.
    text = config(sim, url).replace("poll_max_s = 1.0", f"poll_max_s = 1.0\npage_size = {max(records // 8, 100)}")
    cfg.write_text(text + ("[history]\ndefault = true\n" if history else ""))
    log = tempfile.NamedTemporaryFile("w", suffix=".log", prefix="bench-chaos-", delete=False)
    figures: dict = {"kills": 0}
    try:
        faults = await _faults(sim, limit_errors)
        figures["diffs"] = int("diff_fields" in faults)
        replicator = _Replicator(cfg, sim, log)
        try:
            t0 = time.monotonic()
            figures["kills"] += await _kill_during_backfill(url, replicator, backfill_kills)
            await until(lambda: q(url, "SELECT count(*) = 4 FROM replicator.objects WHERE phase = 'STREAMING'"),
                        timeout=3600, interval=0.5)
            figures["backfill_s"] = time.monotonic() - t0
            stream_kills = kills + backfill_kills - figures["kills"]
            rng = random.Random(seed)
            kill_at = sorted(rng.sample(range(changes // 10, changes - changes // 10), stream_kills))
            await changes_then_overflow(sim, url, changes, rate, kill_at, replicator.restart, threshold=300, records=400)
            figures["kills"] += len(kill_at)
            figures["stream_s"] = time.monotonic() - t0 - figures["backfill_s"]
            figures.update(await counts(sim, url))
        finally:
            stopping = time.monotonic()
            figures["run_exit"] = replicator.stop()
            figures["stop_s"] = time.monotonic() - stopping
        verifying = time.monotonic()
        verified = verify(cfg, replicator.env, history)
        figures["verify_s"] = time.monotonic() - verifying
    finally:
        stop_sim(proc)
        log.close()
        cfg.unlink()
    figures.update(verdict(verified, history))
    exact = not history or figures["events_applied"] == figures["events_published"]
    if verified.returncode != 0 or figures["run_exit"] != 0 or not exact:
        raise RuntimeError(f"chaos run did not end equal: {figures}; verify: {verified.stdout[-2000:]} "
                           f"{verified.stderr[-1000:]}; replicator's log: {log.name}")
    Path(log.name).unlink()
    return figures
