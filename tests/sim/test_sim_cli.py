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
import pytest


@pytest.mark.slow
def test_cli_ready_line_and_sigterm():
    started = time.monotonic()
    proc = subprocess.Popen([sys.executable, "-m", "replicator.sim", "--records", "1000000", "--no-tls",
                             "--latency-ms", "0", "--stream-close-seconds", "30", "--stream-close-rate", "0.01",
                             "--keepalive-ahead", "3", "--timestamp-precision", "s"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
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
        faults = httpx.get(info["instance_url"] + "/__sim/faults").json()
        knobs = ("stream_close_seconds", "stream_close_rate", "keepalive_ahead", "timestamp_precision")
        assert [faults[k] for k in knobs] == [30, 0.01, 3, "s"]
        r = httpx.get(info["instance_url"] + "/__sim/counts", timeout=60)
        assert r.json()["Account"]["total"] == 1_000_000
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=15) == 0


def test_cli_bad_usage_exits_2():
    proc = subprocess.run([sys.executable, "-m", "replicator.sim", "--records", "many"], capture_output=True)
    assert proc.returncode == 2


def test_replicator_sim_help_lists_every_option():
    from click.testing import CliRunner

    from replicator.cli import main
    from replicator.sim.__main__ import build_parser

    flags = [flag for action in build_parser()._actions for flag in action.option_strings]
    assert "--duplicate-rate" in flags and "--records" in flags
    for argv in (["sim", "--help"], ["sim", "-h"]):
        result = CliRunner().invoke(main, argv)
        assert result.exit_code == 0, result.output
        assert result.output.startswith("usage: replicator sim")
        missing = [flag for flag in flags if flag not in result.output]
        assert not missing, f"`replicator {' '.join(argv)}` does not list {missing}"
        assert "see `replicator sim --help`" not in result.output
    listing = CliRunner().invoke(main, ["--help"]).output
    assert "sim" in listing and "see `replicator sim --help`" not in listing


def test_cli_allocations():
    proc = subprocess.Popen([sys.executable, "-m", "replicator.sim", "--records", "10", "--no-tls",
                             "--api-allocation", "70", "--event-allocation", "9"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        sel = selectors.DefaultSelector()
        sel.register(proc.stdout, selectors.EVENT_READ)
        assert sel.select(timeout=15), "no ready line"
        info = json.loads(proc.stdout.readline())
        limits = httpx.get(info["instance_url"] + "/__sim/limits").json()
        assert (limits["api_allocation"], limits["event_allocation"]) == (70, 9)
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=15) == 0
    bad = subprocess.run([sys.executable, "-m", "replicator.sim", "--event-allocation", "-1"], capture_output=True)
    assert bad.returncode == 2 and b"event_allocation" in bad.stderr
