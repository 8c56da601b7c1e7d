"""The named scenarios of `python -m bench`: ceilings, backfill sweeps, stream sweeps, size limits, peers, the
whole path.

Each takes a `Plan` (sizes for quick or full mode) and returns figures and sweeps (harness.sweep). The
simulator runs in its own process; replicator's backfill runs as its own process (`replicator backfill`), the
stream service in this one (its apply loop is what is measured). Every ratio to COPY divides by
`harness.copy_ceiling`, measured in the same run.
"""

from __future__ import annotations

import asyncio
import json
import sys
import tempfile
from pathlib import Path

import asyncpg

from replicator.postgres.server import fresh_database

from . import ceilings, chaos, e2e, fleet, limits, objects500, peers, transactions, transitions
from .backfill import run_backfill, write_config
from .harness import ROOT, copy_ceiling, median_of, start_sim, stop_sim, sweep
from .plan import Plan
from .stream import (
    account_streaming,
    drain_rate,
    lag_at,
    make_changes,
    peak_rss_mb,
    settings,
    start_service,
    until,
)


async def _fields(url: str, table: str = "account") -> list[str]:
    return list(await peers.column_types(url, table))


async def _backfill_once(sim: dict, plan: Plan, page_size: int, parallel: int, obj: str = "Account") -> dict:
    """One `replicator backfill` into a new database: rows/s from job completion to the last committed page
    (download + load, what replicator controls), end-to-end rows/s (the process's wall time: start-up, describe and
    the org's processing of the query job as well), its peak RSS."""
    url = await fresh_database(plan.server_url, plan.db(""))
    cfg = write_config(sim, url, parallel, page_size, obj)
    try:
        result = run_backfill(cfg, sim, obj)
    finally:
        cfg.unlink()
    done = next(e for e in result["events"] if e.get("event") == "backfill.done")
    return {"rows": done["rows"], "rows_per_s": done["rows"] / done["load_s"],
            "end_to_end_rows_per_s": done["rows"] / result["wall_s"], "peak_rss_mb": result["peak_rss_mb"],
            "url": url}


async def _copy_ceiling(sim: dict, plan: Plan) -> tuple[float, float]:
    """COPY rows/s of the same rows into the same table shape (median of the plan's repeats), and CSV bytes a row."""
    first = await _backfill_once(sim, plan, plan.page_sizes[-1], 1)
    fields = await _fields(first["url"])

    async def once() -> dict:
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "account.csv"
            down = await ceilings.bulk_download(sim, fields, path)
            return {"copy_rows_per_s": await copy_ceiling(first["url"], path),
                    "bytes_per_row": down["bytes"] / max(down["rows"], 1)}
    m = await median_of(plan.repeat, once)
    return m["copy_rows_per_s"], m["bytes_per_row"]


async def backfill(plan: Plan) -> dict:
    """Rows/s, ratio to COPY and peak RSS against page size, parallel pages and record count."""
    sweeps, figures = [], {}
    proc, sim = start_sim(plan.records)
    try:
        copy, row_bytes = await _copy_ceiling(sim, plan)
        figures["copy_rows_per_s"] = copy
        figures["csv_bytes_per_row"] = row_bytes

        async def row(page_size: int, parallel: int, x) -> dict:
            m = await median_of(plan.repeat, lambda: _strip(_backfill_once(sim, plan, page_size, parallel)))
            return {"x": x, "rows": m["rows"], "page_mb": min(page_size, plan.records) * row_bytes / 1e6,
                    "rows_per_s": m["rows_per_s"], "ratio_to_copy": m["rows_per_s"] / copy,
                    "peak_rss_mb": m["peak_rss_mb"]}
        default_page = plan.page_sizes[min(2, len(plan.page_sizes) - 1)]
        sweeps.append(sweep("page size", "maxRecords", [await row(p, 3, p) for p in plan.page_sizes],
                            ["rows_per_s", "peak_rss_mb"], f"{plan.records:,} rows, 3 parallel pages"))
        sweeps.append(sweep("parallel pages", "parallel_pages", [await row(default_page, n, n) for n in plan.parallel],
                            ["rows_per_s", "peak_rss_mb"], f"{plan.records:,} rows, pages of {default_page:,}"))
    finally:
        stop_sim(proc)
    rows = []
    for count in plan.record_counts:
        proc, sim = start_sim(count)
        try:
            copy, _ = await _copy_ceiling(sim, plan)
            m = await median_of(plan.repeat, lambda s=sim: _strip(_backfill_once(s, plan, plan.page_sizes[-1], 3)))
            rows.append({"x": count, "rows_per_s": m["rows_per_s"], "ratio_to_copy": m["rows_per_s"] / copy,
                         "seconds": m["rows"] / m["rows_per_s"], "peak_rss_mb": m["peak_rss_mb"],
                         "copy_rows_per_s": copy, "end_to_end_rows_per_s": m["end_to_end_rows_per_s"]})
        finally:
            stop_sim(proc)
    sweeps.append(sweep("record count", "records", rows, ["seconds", "peak_rss_mb"],
                        "cost should grow linearly and memory stay flat"))
    sweeps.append(await _widths(plan))
    return {"figures": figures, "sweeps": sweeps}


async def _widths(plan: Plan) -> dict:
    """Rows/s and ratio to COPY against row width: the simulator's objects from 14 fields to Wide__c's 200
    (about 4 KB a row), and Invoice__c, whose long text reaches 131,072 characters on 1% of rows."""
    proc, sim = start_sim(plan.width_records, "--wide-object")
    rows = []
    try:
        for obj in ("Opportunity", "Account", "Invoice__c", "Wide__c"):
            first = await _backfill_once(sim, plan, plan.page_sizes[-1], 3, obj)
            table = obj.lower()
            fields = await _fields(first["url"], table)

            async def once(o=obj, t=table, f=fields, url=first["url"]) -> dict:
                with tempfile.TemporaryDirectory() as tmp:
                    path = Path(tmp) / "rows.csv"
                    down = await ceilings.bulk_download(sim, f, path, o)
                    copy = await copy_ceiling(url, path, t)
                ours = await _strip(_backfill_once(sim, plan, plan.page_sizes[-1], 3, o))
                return {"bytes_per_row": down["bytes"] / max(down["rows"], 1), "fields": len(f),
                        "rows_per_s": ours["rows_per_s"], "copy_rows_per_s": copy,
                        "ratio_to_copy": ours["rows_per_s"] / copy, "peak_rss_mb": ours["peak_rss_mb"]}
            m = await median_of(plan.repeat, once)
            rows.append({"x": round(m["bytes_per_row"]), "object": obj, "fields": m["fields"],
                         "page_mb": m["bytes_per_row"] * min(plan.page_sizes[-1], plan.width_records) / 1e6,
                         "rows_per_s": m["rows_per_s"], "mb_per_s": m["rows_per_s"] * m["bytes_per_row"] / 1e6,
                         "ratio_to_copy": m["ratio_to_copy"], "copy_rows_per_s": m["copy_rows_per_s"],
                         "peak_rss_mb": m["peak_rss_mb"]})
    finally:
        stop_sim(proc)
    rows.sort(key=lambda r: r["x"])
    return sweep("row width", "bytes per row", rows, ["rows_per_s", "mb_per_s", "peak_rss_mb"],
                 f"{plan.width_records:,} rows per object, pages of {plan.page_sizes[-1]:,} rows (page_mb: the "
                 "largest page; Salesforce documents no page byte limit, Bulk 1.0 retries retrievals over 1 GB), "
                 "3 parallel pages")


async def _strip(coro) -> dict:
    out = await coro
    out.pop("url", None)
    return out


def _row(x, measured: dict, **more) -> dict:
    """A sweep row: the swept value, the medians (without the repeat count), extra columns."""
    return {"x": x, **{k: v for k, v in measured.items() if k != "repeats"}, **more}


def _with(cfg, num_requested: int):
    return cfg.model_copy(update={"stream": cfg.stream.model_copy(update={"num_requested": num_requested})})


async def stream(plan: Plan) -> dict:
    """Events/s against apply batch size, event mix and key collisions; lag p50/p99 against offered rate.

    The simulator stamps commits to the millisecond here: Salesforce's whole-second commitTimestamp would make every
    commit → applied lag read up to a second high (the stamp is truncated), hiding the figure being measured. Whole
    seconds are exercised by the e2e and chaos scenarios and the tests."""
    proc, sim = start_sim(plan.stream_records, "--timestamp-precision", "ms")
    sweeps, figures = [], {}
    try:
        url = await fresh_database(plan.server_url, plan.db("_stream"))
        cfg = settings(sim, url, 2_000)
        svc, task = await start_service(cfg)  # backfill, then streaming: the checkpoint exists afterwards
        await until(lambda: account_streaming(svc), timeout=600)
        svc.stop.set()
        await task
        copy = await copy_ceiling(url, checkpoint=True)
        figures["copy_rows_per_s"] = copy
        n = plan.stream_events
        narrow = {"mix": {"UPDATE": 1.0}}
        rows = []
        for batch in plan.batch_sizes:
            m = await median_of(plan.repeat, lambda b=batch: drain_rate(sim, url, settings(sim, url, b), n, **narrow))
            rows.append(_row(batch, m, ratio_to_copy=m["events_per_s"] / copy))
        sweeps.append(sweep("apply batch size", "batch_max_events", rows, ["events_per_s", "peak_rss_mb"],
                            f"{n:,} narrow UPDATE events drained"))
        rows = []
        for owed in plan.num_requested:
            m = await median_of(plan.repeat, lambda o=owed: drain_rate(sim, url, _with(settings(sim, url, 2_000), o), n,
                                                                   **narrow))
            rows.append(_row(owed, m, ratio_to_copy=m["events_per_s"] / copy))
        sweeps.append(sweep("events owed by the server", "num_requested", rows, ["events_per_s"],
                            "Pub/Sub flow control: at most this many events requested and not yet received"))
        mixes = [("narrow updates", {"mix": {"UPDATE": 1.0}}), ("full creates", {"mix": {"CREATE": 1.0}}),
                 ("deletes and undeletes", {"mix": {"DELETE": 0.5, "UNDELETE": 0.5}}),
                 ("5-record update events", {"mix": {"UPDATE": 1.0}, "per_event": 5})]
        rows = []
        for label, change in mixes:
            m = await median_of(plan.repeat, lambda c=change: drain_rate(sim, url, cfg, n, **c))
            rows.append(_row(label, m, ratio_to_copy=m["events_per_s"] / copy))
        sweeps.append(sweep("event mix", "events", rows, ["events_per_s"], "batch 2,000"))
        rows = []
        for rate in plan.collisions:
            m = await median_of(plan.repeat, lambda r=rate: drain_rate(sim, url, cfg, n, mix={"UPDATE": 1.0},
                                                                   collision=r))
            rows.append(_row(rate, m))
        sweeps.append(sweep("key collisions", "collision_rate", rows, ["events_per_s", "rows_per_event"],
                            "folding: changes to one key in a batch become one row write"))
        rows = []
        for rate in plan.rates:
            lag = await lag_at(sim, cfg, rate, plan.lag_seconds)
            rows.append({"x": rate, **{k: v for k, v in lag.items() if k != "offered_per_s"}})
        sweeps.append(sweep("offered rate", "changes_per_s", rows, ["lag_p50_s", "lag_p99_s", "applied_per_s"],
                            f"narrow updates for {plan.lag_seconds:g} s; lag = commit → applied; achieved: what "
                            "the simulator managed to offer; applied: events ÷ (start → last applied)"))
        rows = await transactions.run(sim, cfg, plan.transaction_changes)
        sweeps.append(sweep("large transaction", "transaction", rows, ["events_per_s", "rss_growth_mb"],
                            "one transaction, held whole and committed as one; past the threshold Salesforce sends "
                            "GAP_OVERFLOW and replicator resyncs (seconds: commit request → table equal to the org)"))
        figures["peak_rss_mb"] = peak_rss_mb()
    finally:
        stop_sim(proc)
    return {"figures": figures, "sweeps": sweeps}


async def burst(plan: Plan) -> dict:
    """A pre-made burst of narrow UPDATE events drained with the simulator idle (bench/burst.py, a process per
    drain): events/s, µs an event by stage, the ratio to decode alone of the same events; with `--against DIR`,
    the same drain by that checkout too, alternated with this one's in each repeat, and the ratio between them."""
    checkouts = {"HEAD": (sys.executable, ROOT.parent)}
    if plan.against:
        other = Path(plan.against).resolve()
        checkouts[_describe(other)] = (str(other / ".venv" / "bin" / "python"), other)
    sims, urls, runs = {}, {}, {label: [] for label in checkouts}
    try:
        for i, label in enumerate(checkouts):  # an org per checkout: one's burst is never the other's backlog
            sims[label] = start_sim(plan.stream_records, "--timestamp-precision", "ms")
            urls[label] = await fresh_database(plan.server_url, plan.db(f"_burst{i}"))
            await _driver(checkouts[label], "setup", sim=sims[label][1], url=urls[label])
        for r in range(plan.repeat):
            for label in (list(checkouts) if r % 2 == 0 else list(reversed(checkouts))):
                runs[label].append(await _driver(checkouts[label], "drain", sim=sims[label][1], url=urls[label],
                                                 n=plan.burst_events, batch=2_000))
        lags = []
        for rate in plan.burst_lag_rates:  # HEAD, in this process: commit → applied lag and where the time goes
            lag = await lag_at(sims["HEAD"][1], settings(sims["HEAD"][1], urls["HEAD"], 2_000), rate,
                               plan.lag_seconds)
            lags.append({"x": rate, **{k: v for k, v in lag.items() if k != "offered_per_s"}})
    finally:
        for proc, _ in sims.values():
            stop_sim(proc)
    report = _burst_report(plan, {label: _medians(r) for label, r in runs.items()})
    if lags:  # quick runs (CI) leave the lag sweep to the stream scenario
        report["sweeps"].append(sweep("lag by stage", "changes_per_s", lags, ["lag_p99_s", "applied_per_s"],
                                      f"narrow updates offered for {plan.lag_seconds:g} s, simulator stamping "
                                      "milliseconds; stage columns: µs an applied event"))
    return report


def _burst_report(plan: Plan, m: dict[str, dict]) -> dict:
    head = m["HEAD"]
    figures = {"events": plan.burst_events, "events_per_s": head["events_per_s"],
               "decode_alone_events_per_s": head["decode_alone_events_per_s"],
               "ratio_to_decode_alone": head["ratio_to_decode_alone"], "cpu_us_per_event": head["cpu_us_per_event"],
               "peak_rss_mb": head["peak_rss_mb"]}
    for label, other in m.items():
        if label != "HEAD":
            figures[f"events_per_s_{label}"] = other["events_per_s"]
            figures[f"ratio_to_{label}"] = head["events_per_s"] / other["events_per_s"]
    stages = [{"x": k.removesuffix("_us_per_event"), "us_per_event": v} for k, v in head.items()
              if k.endswith("_us_per_event") and k != "cpu_us_per_event"]
    rows = [{"x": label, **{k: v for k, v in r.items() if not k.endswith("_us_per_event") or k == "cpu_us_per_event"}}
            for label, r in m.items()]
    note = (f"{plan.burst_events:,} narrow UPDATE events (Account, one changed field) made while replicator was "
            "stopped, then drained with the simulator idle; decode alone: the same events decoded in a loop")
    return {"figures": figures, "sweeps": [
        sweep("burst stages", "stage", stages, ["us_per_event"], "HEAD, µs an event (wall time); rest: receiving "
              "(gRPC reads, protobuf), batching and the event loop: the wall time no stage counted"),
        sweep("burst drain", "checkout", rows, ["events_per_s", "cpu_us_per_event"], note)]}


def _medians(runs: list[dict]) -> dict:
    import statistics

    return {k: statistics.median(r[k] for r in runs) if "rss" not in k else max(r[k] for r in runs)
            for k in runs[0]}


def _describe(checkout: Path) -> str:
    import subprocess

    sha = subprocess.run(["git", "-C", str(checkout), "rev-parse", "--short", "HEAD"], capture_output=True,
                         text=True).stdout.strip()
    return sha or checkout.name


async def _driver(checkout: tuple[str, Path], what: str, **args) -> dict:
    """Run bench/burst.py with a checkout's Python (`-P`: that checkout's `replicator`); its one JSON line."""
    python, cwd = checkout
    proc = await asyncio.create_subprocess_exec(python, "-P", str(ROOT / "burst.py"), what, json.dumps(args),
                                                cwd=str(cwd), stdout=asyncio.subprocess.PIPE,
                                                stderr=asyncio.subprocess.PIPE)
    out, err = await proc.communicate()
    if proc.returncode != 0:
        raise RuntimeError(f"burst {what} with {python} failed: {err.decode()[-2000:]}")
    return json.loads(out.decode().strip().splitlines()[-1])


async def ceiling(plan: Plan) -> dict:
    """Each stage alone, medians of the plan's repeats; the stream's apply stage (memory → Postgres) after the
    others, with its ratio to the COPY of the same run."""
    proc, sim = start_sim(plan.stream_records)
    try:
        first = await _backfill_once(sim, plan, 250_000 if not plan.quick else plan.stream_records, 1)
        fields = await _fields(first["url"])
        await make_changes(sim, plan.ceiling_events, {"UPDATE": 1.0}, rate=50_000, fields=2)

        async def once() -> dict:
            with tempfile.TemporaryDirectory() as tmp:
                return await ceilings.measure(sim, first["url"], fields, Path(tmp), plan.ceiling_events)
        figures = await median_of(plan.repeat, once)
        apply = await ceilings.StreamApply.make(sim, first["url"])
        figures.update(await median_of(plan.repeat, lambda: apply.rates(plan.ceiling_events)))
    finally:
        stop_sim(proc)
    for kind in ("narrow", "full"):
        figures[f"apply_{kind}_ratio_to_copy"] = figures[f"apply_{kind}_events_per_s"] / figures["copy_rows_per_s"]
    return {"figures": figures, "sweeps": []}


async def peer(plan: Plan) -> dict:
    """target-postgres and dlt against replicator on the same rows and the same Postgres."""
    proc, sim = start_sim(plan.peer_records)
    try:
        first = await _backfill_once(sim, plan, 100_000, 3)
        url = first["url"]
        types = await peers.column_types(url)
        for name in peers.PEERS:  # installed before any clock starts
            await asyncio.to_thread(peers.ensure_peer, name)
        with tempfile.TemporaryDirectory() as tmp:
            work = Path(tmp)
            path = work / "account.csv"
            await ceilings.bulk_download(sim, list(types), path)
            singer, lines, n = peers.prepare(path, types, work)

            async def once() -> dict:
                ours = await _backfill_once(sim, plan, 100_000, 3)
                copy = await copy_ceiling(ours["url"], path)
                conn = await asyncpg.connect(ours["url"])
                await conn.execute("DROP SCHEMA IF EXISTS peer_singer CASCADE; DROP SCHEMA IF EXISTS peer_dlt CASCADE")
                await conn.close()
                t_singer = await peers.target_postgres(ours["url"], singer, work)
                t_dlt = await peers.dlt(ours["url"], lines, work)
                loaded = {"target-postgres": await peers.count(ours["url"], "peer_singer.account"),
                          "dlt": await peers.count(ours["url"], "peer_dlt.account")}
                if any(v != n for v in loaded.values()):
                    raise RuntimeError(f"a peer did not load every row: {loaded} of {n}")
                return {"copy_rows_per_s": copy, "replicator_rows_per_s": ours["rows_per_s"],
                        "target_postgres_rows_per_s": n / t_singer, "dlt_rows_per_s": n / t_dlt}
            m = await median_of(plan.repeat, once)
    finally:
        stop_sim(proc)
    m["rows"] = n
    m["replicator_vs_target_postgres"] = m["replicator_rows_per_s"] / m["target_postgres_rows_per_s"]
    m["replicator_vs_dlt"] = m["replicator_rows_per_s"] / m["dlt_rows_per_s"]
    rows = [{"x": name, "rows_per_s": m[key], "ratio_to_copy": m[key] / m["copy_rows_per_s"]}
            for name, key in (("replicator", "replicator_rows_per_s"), ("target-postgres", "target_postgres_rows_per_s"),
                              ("dlt", "dlt_rows_per_s"))]
    return {"figures": m, "sweeps": [sweep("peers", "tool", rows, ["rows_per_s"],
                                           f"{n:,} Account rows into the same Postgres")]}


async def limit(plan: Plan) -> dict:
    """Long text, events near and over the size limit, hostile values: landed correctly, events/s, MB/s."""
    proc, sim = start_sim(plan.stream_records)
    try:
        rows = await limits.run(sim, plan.server_url, plan.limit_events, plan.db("_limits"))
    finally:
        stop_sim(proc)
    bad = [r for r in rows if r["landed_correctly"] != r["of"]]
    return {"figures": {"cases": len(rows), "all_landed_correctly": int(not bad)},
            "sweeps": [sweep("size limits", "case", rows, ["events_per_s"], "each touched row compared with the org")]}


async def whole_path(plan: Plan) -> dict:
    """Backfill of 4 objects, then changes of every kind, then `replicator verify`, without and with crashes
    (e2e.run raises unless every table ends equal to the org)."""
    rows = []
    for kills in plan.e2e_kills:
        m = await median_of(plan.repeat, lambda k=kills: e2e.run(plan.server_url, plan.db("_e2e"), plan.e2e_records,
                                                                 plan.e2e_changes, plan.e2e_rate, k))
        rows.append(_row(kills, m))
    note = (f"4 objects of {plan.e2e_records:,} records, then {plan.e2e_changes:,} changes offered at "
            f"{plan.e2e_rate:,}/s and one GAP_OVERFLOW transaction; kills: `replicator run` SIGKILLed and restarted "
            "at that many moments of the traffic; stream_s: traffic start → every event applied and the resync done")
    return {"figures": {"records_per_object": plan.e2e_records, "changes": plan.e2e_changes},
            "sweeps": [sweep("crashes", "kills", rows, ["backfill_s", "stream_s"], note)]}


async def chaos_runs(plan: Plan) -> dict:
    """`replicator run` SIGKILLed during the backfill and the stream with every fault on; each run must end with
    `replicator verify` equal for every object (chaos.run raises otherwise)."""
    rows = []
    history = plan.chaos_history
    for n in range(plan.chaos_runs):
        figures = await chaos.run(plan.server_url, plan.db("_chaos_history" if history else "_chaos"),
                                  plan.chaos_records, plan.chaos_changes, plan.chaos_rate, plan.chaos_kills,
                                  plan.chaos_backfill_kills, seed=11 + n, history=history,
                                  limit_errors=plan.chaos_limit_errors)
        rows.append(_row(n + 1, figures))
    note = (f"4 objects of {plan.chaos_records:,} records, {plan.chaos_changes:,} changes offered at "
            f"{plan.chaos_rate:,}/s; faults: "
            f"{', '.join(f'{k}={v}' for k, v in chaos.faults_of(plan.chaos_limit_errors).items())}; kills: "
            f"{plan.chaos_backfill_kills} during the backfill, {plan.chaos_kills} during the traffic; every run ended "
            "with verify equal for all 4 objects"
            + ("; history = true for every object, and every run ended with verify --history equal for all 4 and "
               "events_applied = events_published" if history else ""))
    equal = sum(r["objects_equal"] == 4 and (not history or r["history_equal"] == 4) for r in rows)
    return {"figures": {"runs": plan.chaos_runs, "kills_per_run": plan.chaos_kills + plan.chaos_backfill_kills,
                        "runs_equal": equal},
            "sweeps": [sweep("chaos with history" if history else "chaos", "run", rows, ["backfill_s", "stream_s"],
                             note)]}


async def fleet_run(plan: Plan) -> dict:
    """Three replicas, three orgs of four objects, a fault every 10-20 s (bench/fleet.py): takeover times by fault
    kind, fenced commits, balance, events applied = published and verify equal per org. A run that breaks a goal
    returns its `failures` (the report is written, then the scenario counts as failed)."""
    return await fleet.run(plan.server_url, plan.db("_fleet"), duration=plan.fleet_duration, rate=plan.fleet_rate,
                           records=plan.fleet_records, lease_s=plan.fleet_lease_s, seed=plan.fleet_seed)


SCENARIOS = {"ceilings": ceiling, "backfill": backfill, "stream": stream, "burst": burst, "limits": limit,
             "peers": peer, "e2e": whole_path, "chaos": chaos_runs, "objects500": objects500.scenario,
             "transitions": transitions.scenario, "fleet": fleet_run}
QUICK = ["ceilings", "backfill", "stream", "burst", "limits", "e2e", "chaos", "transitions"]  # peers install tools from PyPI: full runs only


def run(name: str, plan: Plan) -> dict:
    return asyncio.run(SCENARIOS[name](plan))
