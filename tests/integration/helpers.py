"""Helpers for end-to-end tests: settings for a simulator, the service run in this process, ground truth, rows in
Postgres, comparison."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import subprocess
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from decimal import Decimal
from typing import Any, Literal

import asyncpg
import httpx
import orjson

# the tests' one way to pick a port (bind 0: the OS chooses), bench/own_postgres.py's; re-exported from here
from bench.own_postgres import free_port as free_port
from replicator.app.service import Service
from replicator.config import Settings, load_settings
from replicator.lifecycle import Phase
from replicator.sim.admin_client import sim_admin

OBJECTS = {"Account": {}, "Contact": {}, "Opportunity": {}, "Invoice__c": {"key": "External_Id__c"}}


def settings_for(sim: dict, pg_url: str, schema: str, **sections: Any) -> Settings:
    overrides: dict[str, Any] = {
        "salesforce": {
            "instance_url": sim["instance_url"],
            "client_id": sim["client_id"],
            "client_secret": sim["client_secret"],
            "ca_file": sim["ca_file"],
        },
        "postgres": {"url": pg_url, "schema": schema},
        "objects": OBJECTS,
        "backfill": {"poll_max_s": 0.2, "page_size": 1000},
        "service": {"port": 0, "host": "127.0.0.1"},
    }
    for k, v in sections.items():
        overrides[k] = v if k == "objects" else {**overrides.get(k, {}), **v}
    return load_settings(overrides=overrides)


def config_toml(sim: dict, pg_url: str, schema: str, **backfill: Any) -> str:
    lines = [
        "[salesforce]",
        f'instance_url = "{sim["instance_url"]}"',
        f'client_id = "{sim["client_id"]}"',
        f'ca_file = "{sim["ca_file"]}"',
        "[postgres]",
        f'url = "{pg_url}"',
        f'schema = "{schema}"',
        "[service]",
        "port = 0",
        'host = "127.0.0.1"',
        "[backfill]",
        "poll_max_s = 0.2",
    ]
    lines += [f"{k} = {v}" for k, v in backfill.items()]
    for name, opts in OBJECTS.items():
        lines.append(f"[objects.{name}]")
        lines += [f'{k} = "{v}"' for k, v in opts.items()]
    return "\n".join(lines) + "\n"


async def sim_get(sim: dict, path: str) -> httpx.Response:
    return await sim_admin(sim, "GET", path)


async def sim_put(sim: dict, path: str, body: dict) -> dict:
    return (await sim_admin(sim, "PUT", path, body)).json()


async def ground_truth(sim: dict, obj: str) -> list[dict]:
    r = await sim_get(sim, f"/__sim/objects/{obj}/records")
    return [orjson.loads(line) for line in r.content.splitlines() if line.strip()]


def _norm(value: Any, pg_type: str) -> Any:
    if value is None or value == "":
        return None
    if isinstance(value, str):
        if pg_type == "timestamptz":
            return dt.datetime.fromisoformat(value.replace("Z", "+00:00").replace("+0000", "+00:00"))
        if pg_type == "date":
            return dt.date.fromisoformat(value)
        if pg_type == "time":
            return dt.time.fromisoformat(value.rstrip("Z"))
        if pg_type == "numeric" or pg_type in ("integer", "bigint"):
            return Decimal(value)
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


async def compare_with_truth(pg_url: str, schema: str, obj: str, key_field: str, truth: list[dict]) -> list[str]:
    """Differences between the table and the simulator's ground truth, as readable lines (empty = equal)."""
    conn = await asyncpg.connect(pg_url)
    try:
        cols = await conn.fetch(
            "SELECT column_name, CASE WHEN data_type = 'timestamp with time zone' THEN 'timestamptz'"
            " WHEN data_type LIKE 'time%' THEN 'time' ELSE data_type END AS t"
            " FROM information_schema.columns WHERE table_schema = $1 AND table_name = $2"
            " AND column_name NOT LIKE '\\_sf\\_%'",
            schema, obj.lower(),
        )
        types = {r["column_name"]: r["t"] for r in cols}
        rows = {
            r[key_field.lower()]: dict(r)
            for r in await conn.fetch(f'SELECT * FROM "{schema}"."{obj.lower()}"')
        }
    finally:
        await conn.close()
    problems = []
    seen = set()
    for rec in truth:
        key = rec[key_field]
        seen.add(key)
        row = rows.get(key)
        if row is None:
            problems.append(f"{obj} {key}: missing")
            continue
        for field, value in rec.items():
            col = field.lower()
            if col not in types:
                continue
            t = types[col]
            a, b = _norm(value, t), _norm(row[col], t)
            if a != b:
                problems.append(f"{obj} {key}.{col}: org {value!r} != pg {row[col]!r}")
    for key in rows.keys() - seen:
        problems.append(f"{obj} {key}: extra")
    return problems


async def wait_for(predicate, timeout: float = 30.0, interval: float = 0.05):
    """Poll an async predicate until it returns a truthy value or the deadline passes."""
    deadline = time.monotonic() + timeout
    while True:
        value = await predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError("condition not met before the deadline")
        await asyncio.sleep(interval)


Predicate = Callable[[], Awaitable[Any]]


@contextlib.asynccontextmanager
async def running_service(settings: Settings, until: Predicate | Literal["streaming"] | None = "streaming", *,
                          timeout: float = 120, before_stop: Callable[[], Awaitable[Any]] | None = None
                          ) -> AsyncIterator[Service]:
    """`Service.run` of `settings` in this process for the body of an `async with`, which gets the `Service`.

    Before the body it waits at most `timeout` s for `until`: "streaming", every configured object STREAMING in
    this run (the service's own phase, as /readyz shows it: a phase an earlier run stored does not count); an async
    predicate of the test's own (as `wait_for` takes); None, nothing. A service that ends meanwhile fails the test
    at once with its own exception (or its exit code), not at the deadline.

    On the way out, also when the body failed: `before_stop` (the simulator's settings given back, say), then the
    service is stopped (its `stop` set, as SIGTERM does) and must end within 60 s. The exception the service ended
    with, if any, is raised (the body's, if it failed too, is its context); after a body that passed, an exit code
    other than 0 fails the test."""
    svc = Service(settings)
    task = asyncio.create_task(svc.run())
    try:
        if until is not None:
            await _wait_while_running(svc, task, until, timeout)
        yield svc
    finally:
        try:
            if before_stop is not None:
                await before_stop()
        finally:
            svc.stop.set()
            code = await asyncio.wait_for(task, 60)  # the service's own exception, if it ended on one
    assert code == 0, f"the service exited {code}"


async def _wait_while_running(svc: Service, task: asyncio.Task, until: Predicate | Literal["streaming"],
                              timeout: float) -> None:
    names = list(svc.settings.objects)

    async def every_object() -> bool:
        return all(svc.metrics.object(name).phase == Phase.STREAMING for name in names)

    condition = every_object if until == "streaming" else until

    async def met() -> Any:
        if task.done():
            raise AssertionError(f"the service exited {task.result()} before the test's condition was met")
        return await condition()

    try:
        await wait_for(met, timeout=timeout)
    except TimeoutError:
        what = "every object STREAMING" if until == "streaming" else getattr(until, "__qualname__", repr(until))
        phases = {name: str(svc.metrics.object(name).phase) for name in names}
        raise TimeoutError(f"not met within {timeout:g} s: {what}; the service's phases: {phases}") from None


def give_back(sim: dict, **settings: Any) -> Callable[[], Awaitable[None]]:
    """For `running_service(before_stop=...)`: the simulator's settings named (admin path → body: cdc, limits,
    traffic) put back, in the order given."""
    async def put() -> None:
        for path, body in settings.items():
            r = await sim_admin(sim, "PUT", f"/__sim/{path}", body)
            assert r.status_code == 200, r.text
    return put


def streaming(pg_url: str, *names: str, mode: str | None = None) -> Predicate:
    """A predicate for `wait_for`: each of `names` stored as STREAMING in replicator.objects (and in `mode`, cdc or
    poll, if given). Unlike running_service's default, a phase and mode an earlier run stored count too."""
    listed = ", ".join(f"'{name}'" for name in names)
    moded = f" AND mode = '{mode}'" if mode else ""
    return lambda: pg_value(pg_url, f"SELECT count(*) = {len(names)} FROM replicator.objects"
                                    f" WHERE object IN ({listed}) AND phase = 'STREAMING'{moded}")


def streaming_in(svc: Service, *names: str) -> Predicate:
    """A predicate for `wait_for`: each of `names` STREAMING and connected in `svc` itself (its health, as /readyz
    shows it), not only as stored: a channel's members are stored as members before the channel streams."""
    async def streaming_here() -> bool:
        return all(svc.metrics.object(n).phase == Phase.STREAMING and svc.metrics.object(n).connected for n in names)
    return streaming_here


async def endpoint_get(port: int, path: str) -> httpx.Response | None:
    """GET of the service's HTTP endpoint (/readyz, /healthz, /metrics) on this host; None while nothing answers."""
    try:
        async with httpx.AsyncClient() as http:
            return await http.get(f"http://127.0.0.1:{port}{path}", timeout=5)
    except httpx.TransportError:
        return None


async def pg_value(pg_url: str, sql: str) -> Any:
    """One value from Postgres; None while the table or column it reads does not exist yet."""
    conn = await asyncpg.connect(pg_url)
    try:
        return await conn.fetchval(sql)
    except (asyncpg.UndefinedTableError, asyncpg.UndefinedColumnError):
        return None
    finally:
        await conn.close()


def one_line_error(out: subprocess.CompletedProcess) -> str:
    """The one failure line of a command run with --log-json (JSON, as every line is), as the console shows it:
    no traceback, every line JSON, exactly one `replicator.failed` and it is the last."""
    lines = [line for line in out.stderr.splitlines() if line.strip()]
    assert "Traceback" not in out.stderr, out.stderr[-2000:]
    assert all(line.startswith("{") for line in lines), out.stderr[-2000:]
    failed = [orjson.loads(line) for line in lines if '"replicator.failed"' in line]
    assert len(failed) == 1 and lines[-1].startswith('{"event":"replicator.failed"'), out.stderr[-2000:]
    return f"replicator: {failed[0]['error']}"


def start_logged(args: list[str], env: dict) -> subprocess.Popen:
    """A process whose stderr goes to a temporary file: a pipe read only at the end would block a process that
    logs more than the pipe holds (64 KiB), and the test would wait on a process that waits on the test."""
    log = tempfile.TemporaryFile()
    proc = subprocess.Popen(args, env=env, stdout=subprocess.DEVNULL, stderr=log)
    proc.log_file = log  # type: ignore[attr-defined]
    return proc


def finish(proc: subprocess.Popen, timeout: float) -> str:
    """Wait for `proc` (started by `start_logged`) to exit; its stderr."""
    proc.wait(timeout=timeout)
    proc.log_file.seek(0)  # type: ignore[attr-defined]
    return proc.log_file.read().decode(errors="replace")  # type: ignore[attr-defined]


async def all_equal(settings: Settings, refresh: bool = False) -> bool:
    """`replicator verify` of every configured object says equal. `refresh`: run `replicator refresh` first (formula
    and eventless columns change in the org without events)."""
    from replicator.app.ops_commands import refresh_command
    from replicator.app.runtime import in_order, objects_at_once, open_store, salesforce_client
    from replicator.pipeline.verify import verify_object

    if refresh:
        assert await refresh_command(settings, list(settings.objects)) == 0
    async with salesforce_client(settings) as client, open_store(settings) as store:
        diffs = [diff async for _, (diff, _) in in_order(
            list(settings.objects), lambda name: verify_object(client, store, settings, name), objects_at_once(settings))]
    return all(diff.equal for diff in diffs)
