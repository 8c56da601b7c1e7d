"""The simulator in a process of its own, for tests and benchmarks that want real sockets and a separate
interpreter: `start_sim_process(*args, orgs=N)` runs `python -m replicator.sim --orgs N *args` and returns the
process with the N ready lines (one per org, in org order: __main__.py), `stop_sim_process` ends it.
In-process, `server.SimulatorThread(orgs=N, ...)` does the same on a thread.
"""

from __future__ import annotations

import json
import queue
import subprocess
import sys
import threading
import time


def start_sim_process(*args: str, orgs: int = 1, timeout: float = 60.0,
                      stderr=None) -> tuple[subprocess.Popen, list[dict]]:
    """Start `python -m replicator.sim --orgs <orgs> *args` and wait, at most `timeout` seconds, for its ready
    lines: (the process, the ready infos of org 1 .. org `orgs`). The process is killed when it does not get
    there (RuntimeError when it exited, TimeoutError when it is too slow)."""
    proc = subprocess.Popen([sys.executable, "-m", "replicator.sim", "--orgs", str(orgs), *args],
                            stdout=subprocess.PIPE, stderr=stderr)
    lines: queue.Queue[bytes] = queue.Queue()

    def read() -> None:  # the first `orgs` lines only: the process keeps its stdout afterwards
        for _ in range(orgs):
            line = proc.stdout.readline()
            lines.put(line)
            if not line:
                return

    threading.Thread(target=read, name="replicator-sim-ready", daemon=True).start()
    infos: list[dict] = []
    deadline = time.monotonic() + timeout
    try:
        while len(infos) < orgs:
            try:
                line = lines.get(timeout=max(deadline - time.monotonic(), 0))
            except queue.Empty:
                raise TimeoutError(f"the simulator did not print {orgs} ready line(s) within {timeout} s") from None
            if not line:
                raise RuntimeError(f"the simulator did not start (exit {proc.wait()})")
            infos.append(json.loads(line))
    except BaseException:
        stop_sim_process(proc)
        raise
    return proc, infos


def stop_sim_process(proc: subprocess.Popen, timeout: float = 30.0) -> int:
    """SIGTERM, then SIGKILL after `timeout` seconds; the exit code."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
    code = proc.wait()
    if proc.stdout is not None:
        proc.stdout.close()
    return code
