"""Peers on the same rows and the same Postgres: MeltanoLabs target-postgres (Singer) and dlt (postgres destination).

Each peer is installed in a virtual environment of its own under bench/.peers/ (made once, reused). The rows are
the simulator's Account rows, fetched once with Bulk API 2.0 and converted before any clock starts: Singer
SCHEMA + RECORD messages in a file for target-postgres, JSON lines read by a Python generator for dlt. Column
types follow the replicated table's (numbers as numbers, booleans as booleans, datetimes as ISO strings with
`format: date-time`), keyed by id. Each peer's time is its process's wall time (start-up included, as a user
running it would see); replicator's figure is `replicator backfill` of the same rows, timed the same way.
"""

from __future__ import annotations

import csv
import json
import subprocess
import sys
import time
import venv
from decimal import Decimal
from pathlib import Path

import asyncpg

ROOT = Path(__file__).resolve().parent
PEERS_DIR = ROOT / ".peers"
PEERS = {
    "target-postgres": ["meltanolabs-target-postgres==0.8.1"],
    "dlt": ["dlt[postgres]==1.31.0"],
}

_DLT_SCRIPT = """
import json, sys, dlt
url, path = sys.argv[1], sys.argv[2]
def rows():
    with open(path) as fh:
        for line in fh:
            yield json.loads(line)
pipeline = dlt.pipeline(pipeline_name="bench_peer", destination=dlt.destinations.postgres(credentials=url),
                        dataset_name="peer_dlt", pipelines_dir=sys.argv[3])
info = pipeline.run(rows(), table_name="account", primary_key="id")
print(json.dumps({"loads": len(info.loads_ids)}))
"""


def ensure_peer(name: str) -> Path:
    """The peer's venv python, installing it the first time (pip, from PyPI)."""
    env_dir = PEERS_DIR / name
    python = env_dir / "bin" / "python"
    marker = env_dir / ".installed"
    if not marker.exists():
        venv.create(env_dir, with_pip=True, clear=True)
        subprocess.run([str(python), "-m", "pip", "install", "-q", *PEERS[name]], check=True)
        marker.write_text(" ".join(PEERS[name]))
    return python


def _json_type(pg_type: str) -> dict:
    if pg_type in ("numeric", "double precision", "real"):
        return {"type": ["number", "null"]}
    if pg_type in ("integer", "bigint", "smallint"):
        return {"type": ["integer", "null"]}
    if pg_type == "boolean":
        return {"type": ["boolean", "null"]}
    if pg_type.startswith("timestamp"):
        return {"type": ["string", "null"], "format": "date-time"}
    if pg_type == "date":
        return {"type": ["string", "null"], "format": "date"}
    return {"type": ["string", "null"]}


def _value(text: str, schema: dict):
    if text == "":
        return None
    kind = schema["type"][0]
    if kind == "number":
        return float(Decimal(text))
    if kind == "integer":
        return int(text)
    if kind == "boolean":
        return text.lower() == "true"
    return text


async def column_types(url: str, table: str = "account") -> dict[str, str]:
    """The replicated columns of salesforce.<table> (not the _sf_ metadata ones) and their types, in order."""
    conn = await asyncpg.connect(url)
    try:
        return {r[0]: r[1] for r in await conn.fetch(
            "SELECT column_name, data_type FROM information_schema.columns WHERE table_schema='salesforce'"
            " AND table_name=$1 AND column_name NOT LIKE '\\_sf\\_%' ORDER BY ordinal_position", table)}
    finally:
        await conn.close()


def prepare(csv_path: Path, types: dict[str, str], out_dir: Path) -> tuple[Path, Path, int]:
    """Singer messages and JSON lines of the same rows (made before timing)."""
    schema = {c: _json_type(t) for c, t in types.items()}
    singer, lines = out_dir / "singer.jsonl", out_dir / "rows.jsonl"
    n = 0
    with csv_path.open(newline="", encoding="utf-8") as fh, singer.open("w") as s, lines.open("w") as j:
        reader = csv.reader(fh)
        header = [h.lower() for h in next(reader)]
        s.write(json.dumps({"type": "SCHEMA", "stream": "account", "key_properties": ["id"],
                            "schema": {"type": "object", "properties": {c: schema[c] for c in header}}}) + "\n")
        for row in reader:
            record = {c: _value(v, schema[c]) for c, v in zip(header, row, strict=True)}
            s.write(json.dumps({"type": "RECORD", "stream": "account", "record": record}) + "\n")
            j.write(json.dumps(record) + "\n")
            n += 1
    return singer, lines, n


async def count(url: str, table: str) -> int:
    conn = await asyncpg.connect(url)
    try:
        return await conn.fetchval(f"SELECT count(*) FROM {table}")
    finally:
        await conn.close()


async def target_postgres(url: str, singer: Path, work: Path) -> float:
    python = ensure_peer("target-postgres")
    config = work / "target-postgres.json"
    from urllib.parse import urlsplit

    u = urlsplit(url)
    config.write_text(json.dumps({"host": u.hostname, "port": u.port or 5432, "user": u.username or "postgres",
                                  "password": u.password or "", "database": u.path.lstrip("/"),
                                  "default_target_schema": "peer_singer", "add_record_metadata": False,
                                  "activate_version": False}))
    exe = python.parent / "target-postgres"
    t0 = time.perf_counter()
    with singer.open("rb") as stdin:
        subprocess.run([str(exe), "--config", str(config)], stdin=stdin, check=True, capture_output=True)
    seconds = time.perf_counter() - t0
    return seconds


async def dlt(url: str, lines: Path, work: Path) -> float:
    python = ensure_peer("dlt")
    script = work / "dlt_load.py"
    script.write_text(_DLT_SCRIPT)
    from urllib.parse import urlsplit

    u = urlsplit(url)
    if u.password is None:  # dlt insists on a password; a trust-auth server ignores it
        url = u._replace(netloc=f"{u.username or 'postgres'}:unused@{u.hostname}:{u.port or 5432}").geturl()
    t0 = time.perf_counter()
    subprocess.run([str(python), str(script), url, str(lines), str(work / "dlt-pipelines")], check=True,
                   capture_output=True)
    return time.perf_counter() - t0


def install_all() -> None:
    for name in PEERS:
        ensure_peer(name)


if __name__ == "__main__":
    install_all()
    print("peers installed under", PEERS_DIR, file=sys.stderr)
