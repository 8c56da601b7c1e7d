"""`replicator run` of a configuration with `[orgs.<name>]`: each org's Service (app/service.py) in this one
process, beside the others (docs/orgs.md).

Each org keeps its own everything: its Salesforce client and Pub/Sub channel, its Store (a pool whose connections
have the org's state schema on their search path: postgres/store.py), its units and their leases, its fleet (the
org's `replicas` rows: an org is balanced over the live replicas on its own), its API budget and allocations. What
they share is the process: one signal handler, one HTTP port (`/metrics` with an `org` label on every series,
`/readyz` per org), the log (every line of an org's work carries `org`).

An org that stops on an error no retry fixes (its credentials, its configuration) stops alone: logged once, its
objects not ready in `/readyz`, the other orgs go on; the process ends (exit code 2) when no org is left.
"""

from __future__ import annotations

import asyncio
import signal

import structlog

from ..config import DEFAULT_ORG, Settings
from ..lifecycle import Phase
from ..model import ConfigError
from ..observe.endpoints import Endpoints
from .service import Service, stop_on_signals

log = structlog.get_logger(__name__)


class Deployment:
    def __init__(self, orgs: list[Settings]):
        self.services = {settings.org: Service(settings) for settings in orgs}
        self.settings = orgs[0].service  # the deployment's: the same in every org's settings
        self.endpoints: Endpoints | None = None

    def _on_signal(self, sig: signal.Signals) -> None:
        log.info("service.stopping", signal=sig.name, bound_s=self.settings.shutdown_timeout_s,
                 orgs=list(self.services))
        if self.endpoints is not None:
            self.endpoints.stopping = True
        for svc in self.services.values():
            svc.stop.set()

    async def run(self) -> int:
        stop_on_signals(self._on_signal)
        svc = self.settings
        if svc.metrics:
            self.endpoints = Endpoints({org: s.metrics for org, s in self.services.items()}, svc.host, svc.port,
                                       svc.ready_max_lag_s)
            await self.endpoints.start()
        try:
            results = await asyncio.gather(*(self._serve(org, s) for org, s in self.services.items()))
        finally:
            if self.endpoints is not None:
                await self.endpoints.stop()
        errors = [r for r in results if isinstance(r, BaseException)]
        if errors:  # every org has ended; the first one's error decides the exit code (ConfigError first: 2)
            raise next((e for e in errors if isinstance(e, ConfigError)), errors[0])
        return max(results)

    async def _serve(self, org: str, service: Service) -> int | BaseException:
        """One org's service; its error is returned (the other orgs go on), logged once here."""
        with structlog.contextvars.bound_contextvars(org=org):
            try:
                return await service.serve()
            except Exception as exc:
                error = f"{type(exc).__name__}: {exc}"
                left = [o for o, s in self.services.items() if s is not service and not s.stop.is_set()]
                log.error("org.stopped", org=org, error=error, orgs_running=len(left),
                          action="fix it, then start the service again"
                                 + (", the other orgs go on" if left else "; no org is left to run"))
                for name in service.settings.objects:  # /readyz and the metrics say why, per object
                    health = service.metrics.object(name)
                    if health.phase != Phase.FAILED:
                        health.fail(error)
                service.stop.set()
                return exc


async def run_command(orgs: list[Settings]) -> int:
    """One org without `[orgs]`: the Service alone, as always; else a Deployment of the selected orgs."""
    if len(orgs) == 1 and orgs[0].org == DEFAULT_ORG and not orgs[0].orgs:
        return await Service(orgs[0]).run()
    return await Deployment(orgs).run()
