"""`replicator run`: for every configured object, backfill when needed, then stream; objects run concurrently
and one failing object retries with backoff without stopping the others. SIGINT/SIGTERM stop it cleanly:
batches in flight are committed with their checkpoints before the process exits.
"""

from __future__ import annotations

import asyncio
import random
import signal
from collections.abc import Awaitable, Callable

import structlog

from ..config import Settings
from ..model import ConfigError
from ..postgres import state
from ..salesforce.pubsub import PubSubClient
from .backfill import Backfill
from .platform_events import PlatformEventStream
from .runtime import postgres_pool, salesforce_client
from .stream import ObjectStream

log = structlog.get_logger(__name__)

# A failing object waits 1, 2, 4 … up to 60 s (with jitter) before it tries again.
RETRY_CAP_S = 60.0


async def _sleep_or_stop(stop: asyncio.Event, seconds: float) -> None:
    try:
        await asyncio.wait_for(stop.wait(), seconds)
    except TimeoutError:
        pass


class Service:
    def __init__(self, settings: Settings):
        self.settings = settings
        self.stop = asyncio.Event()
        self.streams: dict[str, ObjectStream] = {}

    async def run(self) -> int:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            try:
                loop.add_signal_handler(sig, self.stop.set)
            except (NotImplementedError, RuntimeError):  # not the main thread (tests drive stop directly)
                pass
        async with salesforce_client(self.settings) as client, postgres_pool(self.settings) as pool:
            sf = self.settings.salesforce
            pubsub = PubSubClient(sf.pubsub_endpoint, client.tokens, ca_file=str(sf.ca_file) if sf.ca_file else None,
                                  tls=sf.pubsub_tls)
            try:
                await asyncio.gather(
                    *(self._supervise(client, pubsub, pool, n) for n in self.settings.objects),
                    *(self._supervise_events(pubsub, pool, n) for n in self.settings.stream.platform_events),
                )
            finally:
                close = getattr(pubsub, "close", None)
                if close is not None:
                    await close()
        log.info("service.stopped")
        return 0

    async def _keep_running(self, what: str, once: Callable[[], Awaitable[None]],
                            on_error: Callable[[str], Awaitable[None]] | None = None) -> None:
        """Run `once` until the service stops; a failure retries with backoff (1, 2, 4 … 60 s, jittered) and
        never stops the other objects. A configuration error stops the service."""
        failures = 0
        while not self.stop.is_set():
            try:
                await once()
                failures = 0
            except ConfigError:
                raise
            except Exception as exc:
                failures += 1
                error = f"{type(exc).__name__}: {exc}"
                delay = min(RETRY_CAP_S, 2 ** min(failures, 6)) * random.uniform(0.5, 1.0)
                log.error("service.failed", what=what, error=error, retry_in_s=round(delay, 1), failures=failures)
                if on_error is not None:
                    await on_error(error)
                await _sleep_or_stop(self.stop, delay)

    async def _supervise(self, client, pubsub, pool, name: str) -> None:
        obj = self.settings.objects[name]

        async def once() -> None:
            async with pool.acquire() as conn:
                st = await state.get_object(conn, name)
            stream = self.streams[name] = ObjectStream(client, pubsub, pool, self.settings, name, obj)
            if st is None or st.phase not in ("BACKFILLED", "STREAMING"):
                if st is None or st.phase == "NEW" or not st.job_id:  # a resumed backfill keeps its position
                    await stream.capture_position()
                log.info("service.backfill", object=name)
                await Backfill(client, pool, self.settings, name, obj).run()
            async with pool.acquire() as conn:
                await state.set_phase(conn, name, "STREAMING")
            await stream.run(self.stop)

        async def record(error: str) -> None:
            async with pool.acquire() as conn:
                await state.record_error(conn, name, error)

        await self._keep_running(name, once, record)

    async def _supervise_events(self, pubsub, pool, name: str) -> None:
        await self._keep_running(f"/event/{name}",
                                 lambda: PlatformEventStream(pubsub, pool, self.settings, name).run(self.stop))


async def run_command(settings: Settings) -> int:
    return await Service(settings).run()
