"""A PostgreSQL server of the harness's own, for the transitions scenario's `pgrestart` operation: the shared
server at 127.0.0.1:5432 is never restarted (others use it). The tests' own-server fixture uses it too
(tests/integration/pg_server.py, which documents the choices): initdb into a temporary directory, a free port, trust
auth on loopback, fsync off; as root, every command runs as the `postgres` system user.
"""

from __future__ import annotations

import os
import pwd
import shutil
import socket
import subprocess
import tempfile

import asyncpg

_USER = "postgres"  # the unprivileged account the server runs as when the tests run as root
_TIMEOUT_S = 60  # pg_ctl's own wait (-w) is 60 s by default; a slower start is a failure, not a hang


def _require(binary: str) -> str:
    path = shutil.which(binary)
    if path is None:
        raise RuntimeError(f"{binary} not found on PATH: a PostgreSQL server of its own is started here. Install the server "
                    f"binaries (Debian: apt-get install postgresql) and put their directory on PATH "
                    f"(/usr/lib/postgresql/<version>/bin)")
    return path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class PostgresServer:
    """One throwaway server: `start`, `stop(mode)`, `restart(mode)`, `url(database)`."""

    def __init__(self) -> None:
        self.initdb, self.pg_ctl = _require("initdb"), _require("pg_ctl")
        self._as_user: list[str] = []
        self.root = tempfile.mkdtemp(prefix="replicator-pgtest-")  # /tmp: traversable by every user
        if os.geteuid() == 0:
            try:
                account = pwd.getpwnam(_USER)
            except KeyError:
                raise RuntimeError(f"running as root and there is no '{_USER}' user to run PostgreSQL as: "
                                   f"create it (useradd --system {_USER})") from None
            if shutil.which("runuser") is None:
                raise RuntimeError("running as root without runuser (util-linux) to start PostgreSQL as another user")
            os.chown(self.root, account.pw_uid, account.pw_gid)
            self._as_user = ["runuser", "-u", _USER, "--"]
        self.data = os.path.join(self.root, "data")
        self.log = os.path.join(self.root, "server.log")
        self.port = free_port()
        self._run(self.initdb, "-D", self.data, "-U", "postgres", "--auth=trust", "--no-sync", "--encoding=UTF8",
                  "--locale=C")
        self.running = False

    def _run(self, *cmd: str) -> None:
        done = subprocess.run([*self._as_user, *cmd], capture_output=True, text=True, timeout=_TIMEOUT_S + 30)
        if done.returncode != 0:
            tail = ""
            if os.path.exists(self.log):
                with open(self.log) as fh:
                    tail = fh.read()[-2000:]
            raise RuntimeError(f"{' '.join(cmd)} exited {done.returncode}: {done.stdout}{done.stderr}{tail}")

    def _options(self) -> str:
        # Loopback only, the socket file in our directory (not the shared server's), no fsync (see above).
        return f"-p {self.port} -c listen_addresses=127.0.0.1 -c unix_socket_directories={self.root} -c fsync=off"

    def start(self) -> None:
        self._run(self.pg_ctl, "start", "-D", self.data, "-l", self.log, "-w", "-t", str(_TIMEOUT_S),
                  "-o", self._options())
        self.running = True

    def stop(self, mode: str = "fast") -> None:
        """`fast`: sessions are ended and the server shuts down cleanly; `immediate`: every server process quits
        at once, as in a crash (recovery from the WAL at the next start). PostgreSQL documentation, "pg_ctl",
        https://www.postgresql.org/docs/current/app-pg-ctl.html."""
        self._run(self.pg_ctl, "stop", "-D", self.data, "-m", mode, "-w", "-t", str(_TIMEOUT_S))
        self.running = False

    def restart(self, mode: str = "fast") -> None:
        self._run(self.pg_ctl, "restart", "-D", self.data, "-l", self.log, "-m", mode, "-w", "-t", str(_TIMEOUT_S),
                  "-o", self._options())
        self.running = True

    def url(self, database: str = "postgres") -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{database}"

    async def create_database(self, name: str) -> str:
        conn = await asyncpg.connect(self.url())
        try:
            await conn.execute(f'CREATE DATABASE "{name}"')
        finally:
            await conn.close()
        return self.url(name)

    def remove(self) -> None:
        if self.running:
            try:
                self.stop("immediate")
            except RuntimeError:
                pass
        shutil.rmtree(self.root, ignore_errors=True)
