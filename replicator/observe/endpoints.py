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
from prometheus_client.metrics_core import Metric

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
        # while the channel stands by). One stopped here on an error no retry fixes is FAILED, whoever holds it.
        if h.phase != Phase.FAILED and (f"object:{name}" in standby or (channel_standby and h.phase == Phase.STARTING)):
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
    """One service's endpoints, or a deployment's of several orgs (`metrics` by org: app/deployment.py): then
    `/metrics` carries an `org` label on every series and `/readyz` is ready when every org is, with each org's
    reasons under `orgs`."""

    def __init__(self, metrics: Metrics | dict[str, Metrics], host: str, port: int, max_lag_s: float):
        self.orgs = metrics if isinstance(metrics, dict) else None
        self.metrics = next(iter(metrics.values())) if isinstance(metrics, dict) else metrics
        self.host, self.port, self.max_lag_s = host, port, max_lag_s
        self._registry = OrgRegistry(self.orgs) if self.orgs is not None else self.metrics.registry
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
        body = generate_latest(self._registry)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def _healthz(self, request: web.Request) -> web.Response:
        status = "stopping" if self.stopping else "ok"
        return _json(200, {"status": status, "uptime_s": round(time.time() - self.started, 1)})

    async def _readyz(self, request: web.Request) -> web.Response:
        if self.orgs is None:
            ready, body = await self._ready(self.metrics)
            return _json(200 if ready else 503, body)
        each = dict(zip(self.orgs, await asyncio.gather(*(self._ready(m) for m in self.orgs.values())), strict=True))
        ready = all(r for r, _ in each.values())
        return _json(200 if ready else 503, {"ready": ready, "orgs": {org: body for org, (_, body) in each.items()}})

    async def _ready(self, metrics: Metrics) -> tuple[bool, dict]:
        pg_ok, pg_error = False, "no database connection yet"
        store = metrics.store
        if store is not None:
            try:
                async with asyncio.timeout(_PG_TIMEOUT_S):
                    await store.ping()
                pg_ok, pg_error = True, None
            except Exception as exc:  # any failure means "not ready", with the reason in the body
                pg_error = f"{type(exc).__name__}: {exc}"
        return readiness(metrics, pg_ok, pg_error, self.max_lag_s)


class OrgRegistry:
    """Several orgs' registries served as one: each family once, each sample with the org's `org` label (the
    exposition format allows a family's HELP and TYPE once: https://prometheus.io/docs/instrumenting/exposition_formats/)."""

    def __init__(self, orgs: dict[str, Metrics]):
        self.orgs = orgs

    def collect(self):
        families: dict[str, Metric] = {}
        for org, metrics in self.orgs.items():
            for family in metrics.registry.collect():
                merged = families.get(family.name)
                if merged is None:
                    merged = families[family.name] = Metric(family.name, family.documentation, family.type,
                                                            family.unit)
                merged.samples += [s._replace(labels={"org": org, **s.labels}) for s in family.samples]
        return list(families.values())


def _json(status: int, body: dict) -> web.Response:
    return web.Response(status=status, body=orjson.dumps(body), content_type="application/json")
