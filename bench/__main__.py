"""`python -m bench`: every scenario, medians of repeats, JSON per scenario, RESULTS.md tables, PNG charts.

    python -m bench                 # full run (tens of minutes): bench/results/, bench/RESULTS.md, bench/charts/
    python -m bench --quick         # under 3 minutes, small sizes: bench/results/quick/ (the CI smoke test)
    python -m bench --only stream   # some scenarios
    python -m bench --out DIR       # results, RESULTS.md and charts under DIR
    python -m bench --only peers    # target-postgres and dlt (installed into bench/.peers/ on first use)
    python -m bench --only e2e      # the whole path: 4 objects, changes of every kind, crashes, `replicator verify`
    python -m bench --only chaos --history --out /tmp/x   # chaos with history on: verify --history equal too
    python -m bench --render        # rebuild RESULTS.md and charts from bench/results/*.json
    python -m bench --only burst --against ../wt-base   # the burst drain of HEAD beside another checkout's
    python -m bench --only transitions --sequences 50 --seed 1   # random transitions, each sequence verified
    python -m bench --only transitions --seed 17 --sequences 1   # replay sequence 17 exactly
    python -m bench --only fleet --out /tmp/fleet1   # 3 replicas, 3 orgs, a fault every 10-20 s for 3 minutes
    python -m bench --only transitions --ops "remove:Contact; traffic:200; add:Contact"   # a list by hand

Postgres: DATABASE_URL, else the server at 127.0.0.1:5432 (database `test`), else a throwaway server (the
`embedded` extra). Scenarios use databases of their own on that server (replicator_bench*; quick runs replicator_benchq*),
dropped and made anew.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
from pathlib import Path

from replicator.observe.logs import setup_logging
from replicator.postgres.server import resolve_database

from . import harness
from .plan import Plan
from .scenarios import QUICK, SCENARIOS, run


def _failure(failure: str | dict) -> str:
    """One failure of a scenario's report: a line (fleet), or a transitions sequence that ended different."""
    if isinstance(failure, str):
        return failure
    return f"seed {failure.get('seed')}: {failure.get('signature') or 'different'}"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench", description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="small sizes, one repeat, under 3 minutes")
    ap.add_argument("--only", nargs="+", choices=list(SCENARIOS), help="run only these scenarios")
    ap.add_argument("--repeat", type=int, help="repeats per figure (default 3, quick 1); figures are medians")
    ap.add_argument("--out", type=Path, help="directory for results, RESULTS.md and charts")
    ap.add_argument("--against", type=Path, help="burst: another checkout (with its .venv) measured beside this one")
    ap.add_argument("--render", action="store_true", help="only rebuild RESULTS.md and charts from the JSON files")
    ap.add_argument("--sequences", type=int,
                    help="transitions: how many sequences (default 20; quick: one fixed list, 2 drawn with --sequences, "
                    "--kinds or --length)")
    ap.add_argument("--seed", type=int,
                    help="transitions: the first sequence's seed (default 1); fleet: the faults' seed (default 1)")
    ap.add_argument("--duration", type=float, help="fleet: seconds of faults (default 180, quick 40)")
    ap.add_argument("--kinds", help="transitions: the operation kinds drawn, comma-separated (default all)")
    ap.add_argument("--ops", help="transitions: run one sequence of these operations ('kind:arg…' separated by ;)")
    ap.add_argument("--length", help="transitions: operations per sequence, MIN-MAX (default 5-15)")
    ap.add_argument("--own-postgres", action="store_true",
                    help="transitions: run on a Postgres server of the harness's own, so `pgrestart` can restart it")
    ap.add_argument("--minimise", action="store_true",
                    help="transitions: shrink each failing sequence to the fewest operations that still fail alike")
    ap.add_argument("--lookback", type=float, help="transitions: poll.lookback_s of the service (default 0)")
    ap.add_argument("--history", action="store_true",
                    help="chaos: every object keeps history (docs/history.md), and each run must also end with "
                    "`replicator verify --history` equal and every event applied once; reported as chaos_history")
    args = ap.parse_args(argv)
    setup_logging("warning")
    out = args.out or (harness.ROOT / "results" / "quick" if args.quick else None)
    results_dir = out or harness.ROOT / "results"
    results_md = (out / "RESULTS.md") if out else harness.ROOT / "RESULTS.md"
    charts_dir = (out / "charts") if out else harness.ROOT / "charts"
    command = "python -m bench " + " ".join(argv if argv is not None else sys.argv[1:])
    if args.render:
        return render(results_dir, results_md, charts_dir)
    names = args.only or (QUICK if args.quick else list(SCENARIOS))
    return asyncio.run(_run(names, args, results_dir, results_md, charts_dir, command))


async def _run(names, args, results_dir: Path, results_md: Path, charts_dir: Path, command: str) -> int:
    async with resolve_database(os.environ.get("DATABASE_URL")) as server_url:
        machine = await harness.machine(server_url)
        plan = Plan.make(args.quick, args.repeat, server_url)
        plan.against = str(args.against) if args.against else None
        plan.chaos_history = args.history
        _transitions_options(plan, args)
        if args.seed is not None:
            plan.fleet_seed = args.seed
        if args.duration is not None:
            plan.fleet_duration = args.duration
        if "transitions" in names:
            results_dir.mkdir(parents=True, exist_ok=True)
            plan.transitions_progress = str(results_dir / "transitions-progress.jsonl")
        reports, failed = {}, []
        for name in names:
            started = time.monotonic()
            try:
                result = await asyncio.to_thread(run, name, plan)  # each scenario on its own event loop
            except Exception as exc:  # one broken scenario does not lose the others' figures
                print(f"{name}: FAILED: {type(exc).__name__}: {exc}", file=sys.stderr, flush=True)
                failed.append(name)
                continue
            result["seconds"] = round(time.monotonic() - started, 1)
            params = {k: v for k, v in vars(plan).items() if k != "server_url"}
            label = _label(name, plan)
            path = harness.write_report(results_dir, label, command, params, machine, result)
            reports[label] = json.loads(path.read_text())
            print(f"{name}: {result['seconds']} s -> {path}", flush=True)
            if result.get("failures"):  # written for the evidence, and failed
                print(f"{name}: FAILED: " + "; ".join(_failure(f) for f in result["failures"]), file=sys.stderr,
                      flush=True)
                failed.append(name)
    harness.render_results(results_md, reports)
    made = harness.charts(charts_dir, reports)
    print(f"tables -> {results_md}; {len(made)} charts -> {charts_dir}")
    return 1 if failed else 0


def _label(name: str, plan: Plan) -> str:
    """The name a scenario's report and RESULTS.md block take: chaos with history is its own (`chaos_history`), so
    it never replaces the default chaos's figures."""
    return "chaos_history" if name == "chaos" and plan.chaos_history else name


def _transitions_options(plan: Plan, args) -> None:
    from .transitions import KINDS

    if args.sequences is not None or args.kinds or args.length:  # drawn sequences, not the quick run's fixed list
        plan.transitions_fixed = None
    if args.sequences is not None:
        plan.transitions_sequences = args.sequences
    if args.seed is not None:
        plan.transitions_seed = args.seed
    if args.kinds:
        kinds = [k.strip() for k in args.kinds.split(",") if k.strip()]
        unknown = [k for k in kinds if k not in KINDS]
        if unknown:
            raise SystemExit(f"--kinds: unknown {', '.join(unknown)}; kinds are {', '.join(KINDS)}")
        plan.transitions_kinds = kinds
    if args.ops:
        plan.transitions_ops, plan.transitions_sequences = args.ops, 1
    if args.length:
        low, _, high = args.length.partition("-")
        plan.transitions_length = (int(low), int(high or low))
    plan.transitions_own_postgres = args.own_postgres
    plan.transitions_minimise = args.minimise
    if args.lookback is not None:
        plan.transitions_lookback = args.lookback


def render(results_dir: Path, results_md: Path, charts_dir: Path) -> int:
    """Rebuild RESULTS.md blocks and charts from the newest JSON of each scenario (no measuring)."""
    reports: dict[str, dict] = {}
    for path in sorted(results_dir.glob("*.json")):
        report = json.loads(path.read_text())
        if "sweeps" in report and report.get("scenario") in (*SCENARIOS, "chaos_history"):
            reports[report["scenario"]] = report  # sorted by date: the newest wins
    harness.render_results(results_md, reports)
    made = harness.charts(charts_dir, reports)
    print(f"{len(reports)} scenarios -> {results_md}; {len(made)} charts -> {charts_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
