"""`python -m replicator.sim`: fast start with a million records, one ready line, clean exit on SIGTERM."""

from __future__ import annotations

import json
import os
import selectors
import signal
import subprocess
import sys
import time

import httpx


def test_cli_ready_line_and_sigterm():
    started = time.monotonic()
    proc = subprocess.Popen([sys.executable, "-m", "replicator.sim", "--records", "1000000", "--no-tls",
                             "--latency-ms", "0"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"})
    try:
        sel = selectors.DefaultSelector()
        sel.register(proc.stdout, selectors.EVENT_READ)
        assert sel.select(timeout=15), "no ready line"
        line = proc.stdout.readline()
        elapsed = time.monotonic() - started
        info = json.loads(line)
        assert elapsed < 5.0
        for key in ("instance_url", "client_id", "client_secret", "org_id", "ca_file", "token_url", "api_version"):
            assert key in info
        assert info["ca_file"] is None and info["instance_url"].startswith("http://")
        r = httpx.get(info["instance_url"] + "/__sim/info")
        assert r.json()["org_id"] == info["org_id"]
        r = httpx.get(info["instance_url"] + "/__sim/counts", timeout=60)
        assert r.json()["Account"]["total"] == 1_000_000
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=15) == 0


def test_cli_bad_usage_exits_2():
    proc = subprocess.run([sys.executable, "-m", "replicator.sim", "--records", "many"], capture_output=True)
    assert proc.returncode == 2
