"""The service's HTTP port: `/metrics` (Prometheus), `/healthz` (alive), `/readyz` (ready to be trusted).

Served by aiohttp on the service's own event loop, so a `/healthz` answer also proves the loop is responsive
(a blocked loop answers nothing and the liveness probe fails).
"""

from __future__ import annotations

import asyncio
import time

import orjson
import structlog
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from ..lifecycle import Phase
from .metrics import Metrics

log = structlog.get_logger(__name__)

# /readyz waits this long for Postgres: under the readiness probe's timeoutSeconds (3 s in
# deploy/kubernetes/replicator.yaml), so a hung database gives a 503 that says why, not a probe timeout that says nothing.
_PG_TIMEOUT_S = 2.0


def readiness(metrics: Metrics, pg_ok: bool, pg_error: str | None, max_lag_s: float) -> tuple[bool, dict]:
    """Ready when Postgres answers and every object is backfilling / resyncing, or streaming connected with
    its lag under the threshold, or stands by (another process holds it: docs/operating.md "One writer"; a standby is ready
    to take over). Returns (ready, the reasons per object); `standby` lists the units this process waits for."""
    now = time.time()
    objects: dict[str, dict] = {}
    ready = pg_ok
    standby = metrics.units.standby() if metrics.units is not None else []
    channel_standby = any(u.startswith("channel:") for u in standby)
    for name, h in metrics.objects.items():
        lag = h.lag(now)
        why = None
        # An object whose unit another process holds has not started here (a channel's members: not started
        # while the channel stands by).
        if f"object:{name}" in standby or (channel_standby and h.phase == Phase.STARTING):
            objects[name] = {"phase": Phase.STANDBY, "lag_s": None, "ready": True}
            continue
        if h.phase in (Phase.BACKFILLING, Phase.RESYNCING):
            pass
        elif h.phase != Phase.STREAMING:
            why = f"phase {h.phase}" + (f": {h.last_error}" if h.last_error else "")
        elif not h.connected:
            why = "stream not connected"
        elif lag is not None and lag > max_lag_s:
            why = f"lag {lag:.0f} s above {max_lag_s:g} s"
        ready &= why is None
        objects[name] = {"phase": h.phase, "lag_s": None if lag is None else round(lag, 3), "ready": why is None,
                         **({"reason": why} if why else {})}
    body = {"ready": ready, "postgres": "ok" if pg_ok else f"unreachable: {pg_error}", "objects": objects,
            "standby": standby}
    return ready, body


class Endpoints:
    def __init__(self, metrics: Metrics, host: str, port: int, max_lag_s: float):
        self.metrics, self.host, self.port, self.max_lag_s = metrics, host, port, max_lag_s
        self.started = time.time()
        self.stopping = False  # set by the service on SIGTERM: /healthz says so (still alive while it drains)
        self._runner: web.AppRunner | None = None

    async def start(self) -> int:
        app = web.Application()
        app.router.add_get("/metrics", self._metrics)
        app.router.add_get("/healthz", self._healthz)
        app.router.add_get("/readyz", self._readyz)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self.port)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]  # the real port when 0 was asked for
        log.info("service.listening", host=self.host, port=self.port, paths=["/metrics", "/healthz", "/readyz"])
        return self.port

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def _metrics(self, request: web.Request) -> web.Response:
        body = generate_latest(self.metrics.registry)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def _healthz(self, request: web.Request) -> web.Response:
        status = "stopping" if self.stopping else "ok"
        return _json(200, {"status": status, "uptime_s": round(time.time() - self.started, 1)})

    async def _readyz(self, request: web.Request) -> web.Response:
        pg_ok, pg_error = False, "no database connection yet"
        store = self.metrics.store
        if store is not None:
            try:
                async with asyncio.timeout(_PG_TIMEOUT_S):
                    await store.ping()
                pg_ok, pg_error = True, None
            except Exception as exc:  # any failure means "not ready", with the reason in the body
                pg_error = f"{type(exc).__name__}: {exc}"
        ready, body = readiness(self.metrics, pg_ok, pg_error, self.max_lag_s)
        return _json(200 if ready else 503, body)


def _json(status: int, body: dict) -> web.Response:
    return web.Response(status=status, body=orjson.dumps(body), content_type="application/json")
