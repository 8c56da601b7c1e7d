"""A transitions run's report (bench/transitions.py): each sequence's outcome line, the figures and tables for
RESULTS.md, and why a sequence ended different: its differences classed (`signature`, to tell alike failures when
minimising) and explained against the org (`explain`: the rows that differ, side by side)."""

from __future__ import annotations

import datetime as dt
from decimal import Decimal

import asyncpg

from .harness import sweep
from .stream import org_records
from .transitions_ops import KEYS, RATE, RECORDS, SETTLE_S
from .transitions_procs import LEASE_S


def _failure_class(columns: set[str]) -> str:
    """A row's difference, by what went wrong rather than which columns the traffic happened to touch."""
    if "isdeleted" in columns:
        return "IsDeleted differs"
    if "lastmodifieddate" in columns:
        return "a change not applied (stale row)"
    if columns == {"systemmodstamp"}:
        return "systemmodstamp differs (alone)"
    if columns and all(c.startswith("tr") and c.endswith("__c") for c in columns):
        return "added field's values not read"
    return "columns " + ", ".join(sorted(columns))


def signature(record: dict) -> list[str]:
    """What a failure looks like, independent of which records and columns: per object, the class of each
    differing row (or missing / extra rows). A minimised sequence must fail the same way, not by another defect."""
    out = set()
    for line in record.get("explain", []):
        obj, _, rest = line.partition(" ")
        _, _, what = rest.partition("): ")
        what = what.split(" [_sf_deleted_at")[0]
        if what.startswith("org ") and "table" in what:
            out.add(f"{obj}: row {what}")
        else:
            out.add(f"{obj}: {_failure_class({part.split(':')[0] for part in what.split('; ')})}")
    obj = None
    for line in (record.get("verify") or "").splitlines():  # a column verify found missing names no row
        if not line.startswith(" ") and ":" in line:
            obj = line.split(":")[0]
        elif "columns missing in Postgres" in line:
            out.add(f"{obj}: {line.strip()}")
    if not out and not record["equal"]:
        out.add(record["verify"].splitlines()[0] if record["verify"] else "no verify output")
    return sorted(out)


def _norm(value, pg_type: str):
    """A value of the org's dump or of a Postgres row in one comparable form (enough to name differing columns;
    `replicator verify` is the judge)."""
    if value is None or value == "":
        return None
    if isinstance(value, str):
        if pg_type == "timestamptz":
            return dt.datetime.fromisoformat(value.replace("Z", "+00:00").replace("+0000", "+00:00"))
        if pg_type == "date":
            return dt.date.fromisoformat(value)
        if pg_type in ("numeric", "integer", "bigint", "double precision"):
            return Decimal(value).normalize()
        if pg_type == "time":
            return dt.time.fromisoformat(value.rstrip("Z"))
        if pg_type == "boolean":
            return value.lower() == "true"
        return value
    if isinstance(value, bool):
        return value
    if isinstance(value, int | float | Decimal):
        return Decimal(str(value)).normalize()
    if isinstance(value, dt.time):
        return value.replace(tzinfo=None)
    return value


async def explain(sim: dict, url: str, verify_out: str, per_object: int = 3) -> list[str]:
    """For the first example keys of each object verify names: which columns differ between the org and the
    row (with both values), or whether the row is missing, soft-deleted or extra."""
    examples: dict[str, list[tuple[str, str]]] = {}
    obj = None
    for line in verify_out.splitlines():
        if not line.startswith(" ") and ":" in line:
            obj = line.split(":")[0]
        elif obj and line.strip().split(":")[0] in ("missing", "extra", "different"):
            kind, _, keys = line.strip().partition(": ")
            examples.setdefault(obj, []).extend((kind, k.strip()) for k in keys.split(",")[:per_object])
    out: list[str] = []
    conn = await asyncpg.connect(url)
    try:
        for obj, keys in examples.items():
            key_field = KEYS.get(obj, "Id")
            truth = {r.get(key_field): r async for r in org_records(sim, obj)}
            types = {r["column_name"]: r["t"] for r in await conn.fetch(
                "SELECT column_name, CASE WHEN data_type = 'timestamp with time zone' THEN 'timestamptz' "
                "WHEN data_type LIKE 'time%' THEN 'time' ELSE data_type END AS t FROM information_schema.columns WHERE table_schema = 'salesforce' "
                "AND table_name = $1", obj.lower())}
            for kind, key in keys:
                row = await conn.fetchrow(f'SELECT * FROM salesforce."{obj.lower()}" WHERE "{key_field.lower()}" = $1',
                                          key)
                rec = truth.get(key)
                if row is None or rec is None:
                    out.append(f"{obj} {key} ({kind}): org {'has it' if rec else 'lacks it'}"
                               f"{' (IsDeleted)' if rec and rec.get('IsDeleted') else ''}, table "
                               f"{'lacks it' if row is None else 'has it'}")
                    continue
                cols = [f"{c}: org {rec[f]!r} table {row[c]!r}" for f in rec if (c := f.lower()) in types
                        and not c.startswith("_sf_") and _norm(rec[f], types[c]) != _norm(row[c], types[c])]
                meta = f"_sf_deleted_at {row['_sf_deleted_at']}, _sf_version {row['_sf_version']}"
                out.append(f"{obj} {key} ({kind}): {'; '.join(cols) or 'no column differs now'} [{meta}]")
    finally:
        await conn.close()
    return out


def verdict_line(record: dict) -> str:
    """A sequence's outcome as printed when it ends."""
    verdict = "equal" if record["equal"] else "DIFFERENT"
    return (f"transitions seed {record['seed']}: {verdict} in {record['seconds']} s, {record['takeovers']} takeovers"
            + "".join(f"\n  {p['op']}: {p['paused']} paused {p['seconds']} s, {len(p['taken_over'])} of its "
                      f"{len(p['held'])} units taken over, fenced commits after: {p['fenced_commits']}"
                      for p in record["pauses"])
            + "".join(f"\n  stuck after {st['after']}: {st['unmet']}: {st['detail']}" for st in record["stuck"])
            + (f"; exits: {record['exits']}" if record["exits"] else "")
            + (f"; unexpected phase changes: {record['unexpected_phase_changes']} (log kept)"
               if record.get("unexpected_phase_changes") else "")
            + ("" if record["equal"] else f"\n{record['verify']}\n" + "\n".join(record.get("explain", []))
               + f"\nlog: {record.get('log')}"))


def report(records: list[dict], failures: list[dict], by_kind: dict[str, int]) -> dict:
    """The run's figures and tables for RESULTS.md."""
    figures = {"sequences": len(records), "operations": sum(len(r["ops"]) for r in records),
               "equal": len(records) - len(failures), "different": len(failures),
               "stuck_conditions": sum(len(r["stuck"]) for r in records),
               "unexpected_exits": sum(len(r["exits"]) for r in records),
               "unexpected_phase_changes": sum(r.get("unexpected_phase_changes", 0) for r in records),
               "takeovers": sum(r["takeovers"] for r in records),
               "pauses": sum(len(r["pauses"]) for r in records),
               "fenced_commits_after_pauses": sum(p["fenced_commits"] or 0 for r in records for p in r["pauses"]),
               "failing_seeds": ", ".join(str(r["seed"]) for r in failures) or "none"}
    kinds_rows = [{"x": k, "operations": v} for k, v in by_kind.items() if v]
    seq_rows = [{"x": r["seed"], "operations": len(r["ops"]), "equal": "yes" if r["equal"] else "NO",
                 "stuck": len(r["stuck"]), "seconds": r["seconds"], "takeovers": r["takeovers"],
                 "fenced": sum(p["fenced_commits"] or 0 for p in r["pauses"]), "ops": "; ".join(r["ops"])}
                for r in records]
    stuck_rows = [{"x": r["seed"], "after": st["after"], "unmet": ", ".join(st["unmet"]), "ops": "; ".join(r["ops"])}
                  for r in records for st in r["stuck"]]
    fail_rows = [{"x": r["seed"], "signature": "; ".join(r["signature"]),
                  "minimal": "; ".join(r["minimal"]["ops"]) if "minimal" in r else "—"} for r in failures]
    note = (f"{RECORDS} records an object, traffic at {RATE}/s; each sequence ends with refresh + verify of every "
            f"configured object; takeovers: units acquired after standing by (service.lease_s = {LEASE_S}); fenced: "
            "commits refused after a replica:pause")
    return {"figures": figures,
            "sweeps": [sweep("operations by kind", "kind", kinds_rows, ["operations"]),
                       sweep("sequences", "seed", seq_rows, [], note),
                       *([sweep("failures", "seed", fail_rows, [], "minimal: fewest operations that still fail "
                                "alike (--minimise); replay: --seed N --sequences 1 or --ops")] if fail_rows else []),
                       *([sweep("stuck", "seed", stuck_rows, [], f"a condition not met within {SETTLE_S} s of the "
                                "operation (then waived for the rest of the sequence)")] if stuck_rows else [])],
            "failures": failures, "stuck": [{"seed": r["seed"], "stuck": r["stuck"]} for r in records if r["stuck"]]}
