"""`replicator backfill` as the backfill scenario runs it: a config file for the simulated org, and the command as a
process of its own, reporting its log events, its wall time and its own peak resident memory.

The scenario itself (page size, parallel pages, record count and row width against the COPY ceiling) is
`scenarios.backfill`: `python -m bench --only backfill`. This module was also a script (`python -m bench.backfill`,
one record count a run); the harness measures everything it did, its end-to-end rows/s included.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def write_config(sim: dict, url: str, parallel_pages: int, page_size: int, obj: str = "Account") -> Path:
    cfg = Path(tempfile.mkstemp(suffix=".toml")[1])
    cfg.write_text(
        f"""[salesforce]
instance_url = "{sim['instance_url']}"
client_id = "{sim['client_id']}"
ca_file = "{sim['ca_file']}"
[postgres]
url = "{url}"
[backfill]
parallel_pages = {parallel_pages}
page_size = {page_size}
poll_max_s = 1.0
[objects.{obj}]
"""
    )
    return cfg


# The child reports its own peak resident memory at exit: VmHWM of its address space. Neither getrusage nor
# wait4 can say it: Linux carries the pre-exec address space's high-water mark (the forked copy of this
# process, ~90 MB) into the child's ru_maxrss, which hides any peak below this process's own size.
_PEAK_RSS_CHILD = """
import atexit, re, sys
def _peak():
    kb = re.search(r"VmHWM:\\s+(\\d+)", open("/proc/self/status").read()).group(1)
    sys.stderr.write('{"event": "bench.peak_rss", "kb": %s}\\n' % kb)
atexit.register(_peak)
sys.argv[0] = "replicator"
from replicator.cli import main
main()
"""


def run_backfill(cfg: Path, sim: dict, obj: str = "Account") -> dict:
    """`replicator backfill OBJ` as its own process: its log events, wall time and its own peak RSS."""
    env = dict(os.environ, REPLICATOR_SALESFORCE__CLIENT_SECRET=sim["client_secret"])
    env.pop("DATABASE_URL", None)  # it would win over the config file's database (environment > file)
    t0 = time.monotonic()
    out = subprocess.run(
        [sys.executable, "-c", _PEAK_RSS_CHILD, "--log-json", "backfill", "--config", str(cfg), obj],
        env=env, capture_output=True, text=True,
    )
    wall = time.monotonic() - t0
    if out.returncode != 0:
        raise RuntimeError(f"backfill failed: {out.stderr[-2000:]}")
    events = [json.loads(line) for line in out.stderr.splitlines() if line.startswith("{")]
    peak = next(e["kb"] for e in events if e.get("event") == "bench.peak_rss")
    return {"wall_s": wall, "peak_rss_mb": peak / 1024, "events": events}


if __name__ == "__main__":
    sys.exit("python -m bench.backfill is retired: python -m bench --only backfill")
