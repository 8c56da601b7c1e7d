"""The harness's common parts: the simulated org's process, the COPY ceiling, machine facts, medians, reports as
JSON, RESULTS.md tables and PNG charts.

A scenario returns `{"figures": {name: value}, "sweeps": [Sweep…]}`; a sweep is one swept parameter with a row
per value. Tables and charts are made from those, so every scenario is rendered the same way.

This module imports nothing else from bench/ (every other bench module may import it).
"""

from __future__ import annotations

import datetime as dt
import io
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import asyncpg

from replicator.sim.process import start_sim_process

ROOT = Path(__file__).resolve().parent


def start_sim(records: int, *extra: str) -> tuple[subprocess.Popen, dict]:
    """The simulated org in a process of its own (`records` records an object): (the process, its connection
    facts). Keepalives every 0.2 s and a retention of 5,000,000 events, so no scenario waits on a keepalive or
    loses events it has not read yet."""
    proc = subprocess.Popen([sys.executable, "-m", "replicator.sim", "--records", str(records), "--port", "0",
                             "--keepalive-seconds", "0.2", "--retention-events", "5000000", *extra],
                            stdout=subprocess.PIPE)
    line = proc.stdout.readline()
    if not line:
        raise RuntimeError(f"simulator did not start (exit {proc.wait()})")
    return proc, json.loads(line)


def start_sim_orgs(orgs: int, records: int, *extra: str) -> tuple[subprocess.Popen, list[dict]]:
    """`start_sim` for several orgs in one process (`replicator sim --orgs N`, docs/simulator.md "Several orgs"):
    (the process, each org's connection facts in org order). `stop_sim` ends it."""
    return start_sim_process("--records", str(records), "--port", "0", "--keepalive-seconds", "0.2",
                             "--retention-events", "5000000", *extra, orgs=orgs)


def stop_sim(proc: subprocess.Popen) -> None:
    proc.terminate()
    proc.wait()


async def copy_ceiling(url: str, csv: Path | None = None, table: str = "account", *, checkpoint: bool = False) -> float:
    """The ceiling every `ratio_to_copy` divides by: rows/s of one `COPY … FROM` of the same rows into a table of
    the same shape as salesforce.<table> (`LIKE … INCLUDING ALL`: same primary key, same generated columns), made
    for the measurement and dropped after it.

    The rows: `csv`, a file with a header row naming the columns (the rows as Bulk API 2.0 serves them, fetched
    before timing), read the way the backfill reads Salesforce's CSV (an empty field is NULL); or, without `csv`,
    the rows salesforce.<table> holds (its replicated columns, not the `_sf_` ones), exported to memory on the same
    connection first. `checkpoint`: a CHECKPOINT just before the timed COPY, so the COPY does not pay for dirty
    pages left by earlier writes (the stream scenario's ceiling has always had it, the backfill's never)."""
    conn = await asyncpg.connect(url)
    try:
        if csv is None:
            columns = [r[0] for r in await conn.fetch(
                "SELECT column_name FROM information_schema.columns WHERE table_schema = 'salesforce' AND "
                "table_name = $1 AND column_name NOT LIKE '\\_sf\\_%' ORDER BY ordinal_position", table)]
            buf = io.BytesIO()
            await conn.copy_from_query(f'SELECT {", ".join(columns)} FROM salesforce."{table}"', output=buf,
                                       format="csv")
            source, header, force_null = io.BytesIO(buf.getvalue()), False, None  # Postgres's CSV marks its NULLs
        else:
            with csv.open("rb") as fh:
                columns = [h.strip('"').lower() for h in fh.readline().decode().strip().split(",")]
            source, header, force_null = str(csv), True, [c for c in columns if c != "id"]
        await conn.execute("DROP TABLE IF EXISTS public.copy_ceiling")
        await conn.execute(f'CREATE TABLE public.copy_ceiling (LIKE salesforce."{table}" INCLUDING ALL)')
        if checkpoint:
            await conn.execute("CHECKPOINT")
        t0 = time.perf_counter()
        status = await conn.copy_to_table("copy_ceiling", schema_name="public", source=source, columns=columns,
                                          format="csv", header=header, force_null=force_null)
        rate = int(status.split()[-1]) / (time.perf_counter() - t0)
        await conn.execute("DROP TABLE public.copy_ceiling")
        return rate
    finally:
        await conn.close()


async def machine(pg_url: str) -> dict[str, Any]:
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    conn = await asyncpg.connect(pg_url)
    try:
        version = await conn.fetchval("SHOW server_version")
        fsync = await conn.fetchval("SHOW fsync")
    finally:
        await conn.close()
    return {"cores": os.cpu_count(), "memory_gib": round(mem, 1), "python": platform.python_version(),
            "platform": platform.platform(), "postgres": version, "postgres_fsync": fsync}


async def median_of(repeat: int, run: Callable[[], Awaitable[dict[str, float]]]) -> dict[str, float]:
    """Run `run` `repeat` times; each figure is the median of its runs (peak memory: the maximum)."""
    runs = [await run() for _ in range(repeat)]
    out = {}
    for key in runs[0]:
        values = [r[key] for r in runs if r.get(key) is not None]
        if not values:
            out[key] = None
        elif "rss" in key:
            out[key] = max(values)
        else:
            out[key] = statistics.median(values)
    out["repeats"] = repeat
    return out


def sweep(name: str, parameter: str, rows: list[dict], y: list[str], note: str = "") -> dict:
    """One swept parameter: `rows` hold `x` and the measured figures; `y` names the figures charted."""
    return {"name": name, "parameter": parameter, "rows": rows, "y": y, "note": note}


def write_report(out_dir: Path, scenario: str, command: str, params: dict, machine_info: dict,
                 result: dict) -> Path:
    out_dir.mkdir(parents=True, exist_ok=True)
    report = {"scenario": scenario, "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
              "command": command, "machine": machine_info, "parameters": params, **result}
    path = out_dir / f"{dt.date.today().isoformat()}-{scenario}.json"
    path.write_text(json.dumps(report, indent=2, default=str) + "\n")
    return path


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        if abs(value) >= 100:
            return f"{value:,.0f}"
        if abs(value) >= 1:
            return f"{value:.2f}"
        return f"{value:.3f}"
    if isinstance(value, int):
        return f"{value:,}"
    return "—" if value is None else str(value)


def tables(report: dict) -> str:
    """Markdown for one report: its figures, then one table per sweep."""
    m = report["machine"]
    lines = [f"`{report['command']}` — {report['date']}; {m['cores']} cores, {m['memory_gib']} GiB, Python "
             f"{m['python']}, PostgreSQL {m['postgres']} (fsync {m.get('postgres_fsync', '?')})", ""]
    if report.get("figures"):
        lines += ["| figure | value |", "|---|---|"]
        lines += [f"| {k} | {_fmt(v)} |" for k, v in report["figures"].items()]
        lines.append("")
    for sw in report.get("sweeps", []):
        cols = ["x"]
        for row in sw["rows"]:  # every column any row has, in first-seen order
            cols += [k for k in row if k not in cols]
        lines.append(f"**{sw['name']}** ({sw['parameter']})" + (f": {sw['note']}" if sw["note"] else ""))
        lines.append("")
        lines.append("| " + " | ".join(sw["parameter"] if c == "x" else c for c in cols) + " |")
        lines.append("|" + "---|" * len(cols))
        for row in sw["rows"]:
            lines.append("| " + " | ".join(_fmt(row.get(c)) for c in cols) + " |")
        lines.append("")
    return "\n".join(lines).rstrip() + "\n"


def render_results(md: Path, reports: dict[str, dict]) -> None:
    """Rewrite each scenario's generated block in RESULTS.md (added at the end when missing); prose stays."""
    text = md.read_text() if md.exists() else "# Benchmark results\n"
    for scenario, report in reports.items():
        start, end = f"<!-- bench:{scenario}:start -->", f"<!-- bench:{scenario}:end -->"
        block = f"{start}\n{tables(report)}{end}"
        if start in text:
            text = re.sub(re.escape(start) + ".*?" + re.escape(end), lambda _, b=block: b, text, flags=re.S)
        else:
            text = text.rstrip() + f"\n\n## {scenario} (generated by `python -m bench`)\n\n{block}\n"
    md.parent.mkdir(parents=True, exist_ok=True)
    md.write_text(text)


def charts(out_dir: Path, reports: dict[str, dict]) -> list[Path]:
    """One PNG per sweep: each charted figure against the swept parameter (a line for a numeric parameter, bars
    for named cases such as peers or event mixes). Needs matplotlib (extra `bench`)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out_dir.mkdir(parents=True, exist_ok=True)
    made = []
    for scenario, report in reports.items():
        for sw in report.get("sweeps", []):
            rows = sw["rows"]
            keys = [k for k in sw["y"] if any(isinstance(r.get(k), int | float) for r in rows)]
            if not rows or not keys:
                continue
            numeric = all(isinstance(r.get("x"), int | float) for r in rows)
            fig, axes = plt.subplots(1, len(keys), figsize=(5 * len(keys), 3.6 if numeric else 0.9 + 0.5 * len(rows)),
                                     squeeze=False)
            for ax, key in zip(axes[0], keys, strict=True):
                values = [r.get(key) if isinstance(r.get(key), int | float) else 0 for r in rows]
                if numeric:
                    _line(ax, [r["x"] for r in rows], values, sw["parameter"], key)
                else:
                    _bars(ax, [_wrap(str(r["x"])) for r in rows], values, key)
                if key == "rows_per_s":
                    _ceiling(ax, rows, report.get("figures", {}), numeric)
                if numeric:
                    ax.set_ylim(0, ax.dataLim.y1 * 1.15 or 1)  # from zero: a 5% wobble must not look like a cliff
            fig.suptitle(f"{scenario}: {sw['name']}")
            fig.tight_layout()
            path = out_dir / f"{scenario}-{re.sub(r'[^a-z0-9]+', '-', sw['name'].lower())}.png"
            fig.savefig(path, dpi=80)
            plt.close(fig)
            made.append(path)
    return made


def _ceiling(ax, rows: list[dict], figures: dict, numeric: bool) -> None:
    """The raw-COPY ceiling beside rows/s: per row when each row measured its own (or its ratio to it), else the
    run's figure."""
    def own(r: dict) -> float | None:
        if isinstance(r.get("copy_rows_per_s"), int | float):
            return r["copy_rows_per_s"]
        if isinstance(r.get("ratio_to_copy"), int | float) and r["ratio_to_copy"] > 0:
            return r["rows_per_s"] / r["ratio_to_copy"]
        return None
    copies = [own(r) for r in rows]
    if numeric and all(c is not None for c in copies):
        ax.plot([r["x"] for r in rows], copies, linestyle="--", color="grey", label="raw COPY of the same rows")
    elif isinstance(figures.get("copy_rows_per_s"), int | float):
        copy = figures["copy_rows_per_s"]
        (ax.axhline if numeric else ax.axvline)(copy, linestyle="--", color="grey", label="raw COPY")
        if not numeric:
            ax.set_xlim(0, max(ax.get_xlim()[1], copy * 1.2))
    else:
        return
    ax.legend(fontsize=8, loc="best")


def _line(ax, xs: list, ys: list, xlabel: str, ylabel: str) -> None:
    ax.plot(xs, ys, marker="o")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.grid(True, alpha=0.3)
    if len(xs) > 2 and max(xs) / max(min(xs), 1e-9) > 50:
        ax.set_xscale("log")


def _bars(ax, labels: list[str], values: list, xlabel: str) -> None:
    ax.barh(range(len(labels)), values)
    ax.set_yticks(range(len(labels)), labels, fontsize=8)
    ax.invert_yaxis()  # first case on top, as in the table
    ax.set_xlabel(xlabel)
    ax.grid(True, axis="x", alpha=0.3)
    ax.set_xlim(0, max([*values, 1e-9]) * 1.2)  # room for the labels
    for i, v in enumerate(values):
        ax.annotate(_fmt(v), (v, i), xytext=(3, 0), textcoords="offset points", va="center", fontsize=8)


def _wrap(label: str, width: int = 28) -> str:
    import textwrap

    return "\n".join(textwrap.wrap(label, width)) or label
