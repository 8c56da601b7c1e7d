"""The quickstart: `replicator demo` streams live traffic, stops by itself, finds every table equal to the org,
and ends with a psql line that works."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import asyncpg
import pytest

pytestmark = pytest.mark.slow  # the demo's subprocess


async def test_demo_streams_stops_and_prints_a_working_psql_line(pg_url):
    server = pg_url.rsplit("/", 1)[0] + "/test"
    env = dict(os.environ, DATABASE_URL=server)
    out = subprocess.run([sys.executable, "-m", "replicator.cli", "demo", "--records", "800", "--duration", "4",
                          "--rate", "100"], env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    text = out.stdout
    # no terminal: plain periodic lines, then the summary
    assert re.search(r"t=\d+s Account phase=STREAMING rows=\d+ events_applied=\d+", text), text[-2000:]
    summary = text[text.index("summary"):]
    assert summary.count("equal") == 4, summary
    match = re.search(r"psql '([^']+)' -c '([^']+)'", text)
    assert match, text[-1000:]
    url, sql = match.groups()
    conn = await asyncpg.connect(url)
    try:
        rows = await conn.fetch(sql)
        streamed = await conn.fetchval("SELECT sum(events_applied) FROM replicator.checkpoints")
    finally:
        await conn.close()
    assert len(rows) == 5 and rows[0]["id"].startswith("001")
    assert streamed > 0  # live changes were applied, not only the backfill
