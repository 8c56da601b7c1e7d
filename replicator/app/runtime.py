"""Wiring shared by the commands: settings → Salesforce client, Postgres store (migrated, except for read-only commands)."""

from __future__ import annotations

import asyncio
import contextlib
import urllib.parse
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TypeVar

import structlog

from ..config import Settings
from ..observe.logs import register_secret
from ..postgres.store import Store
from ..salesforce.auth import Credentials
from ..salesforce.client import SalesforceClient
from .units import replica_id

T = TypeVar("T")

log = structlog.get_logger(__name__)


def credentials(settings: Settings) -> Credentials:
    sf = settings.salesforce
    secret = sf.secret()
    register_secret(secret)
    refresh = sf.refresh_token.get_secret_value() if sf.refresh_token else None
    register_secret(refresh)
    key = sf.private_key_file.read_text() if sf.private_key_file else None
    return Credentials(
        flow=sf.auth,
        token_url=sf.token_url or sf.instance_url.rstrip("/") + "/services/oauth2/token",
        client_id=sf.client_id,
        client_secret=secret,
        username=sf.username or None,
        private_key=key,
        audience=sf.audience,
        refresh_token=refresh,
    )


def salesforce_client(settings: Settings, retry_attempts: int = 6) -> SalesforceClient:
    sf = settings.salesforce
    if not sf.verify:
        log.warning("tls.verification_disabled", hint="salesforce.verify = false: anyone on the path can read the data")
    return SalesforceClient(
        credentials(settings),
        api_version=sf.api_version,
        ca_file=str(sf.ca_file) if sf.ca_file else None,
        verify=sf.verify,
        timeout=sf.timeout_s,
        retry_attempts=retry_attempts,
    )


@contextlib.asynccontextmanager
async def open_store(settings: Settings, migrate: bool = True) -> AsyncIterator[Store]:
    """A migrated store on the configured Postgres (or the local / a throwaway one, see postgres/server.py). The
    read-only commands pass `migrate=False`: they never create or change the state schema."""
    url = settings.postgres.url.get_secret_value() if settings.postgres.url else None
    if url:
        register_secret(urllib.parse.urlsplit(url).password)
    # pg_stat_activity says whose each session is: replicator <org> <replica id> (docs/orgs.md); a transaction
    # idle for a lease's length is ended by the server (a paused process must not keep a unit: Store.open)
    name = f"replicator {settings.org} {replica_id(settings.service)}"
    async with Store.open(url, settings.postgres.pool_size, migrate, settings.state_schema, name,
                          settings.service.lease_s) as store:
        yield store


# Objects the one-shot `verify` and `refresh` work on at once: each runs a Bulk query job, and Salesforce runs an org's
# jobs side by side; only requests lasting 20 s or more count against its 25 concurrent long requests ("API Request
# Limits and Allocations", https://developer.salesforce.com/docs/platform/salesforce-app-limits-cheatsheet/guide/salesforce-app-limits-platform-api.html;
# docs/bulk-rest-oauth.md). The objects' job waits overlap rather than add up.
OBJECTS_AT_ONCE = 4


def objects_at_once(settings: Settings) -> int:
    """`OBJECTS_AT_ONCE`, within the Postgres pool: each object holds one connection (its comparison or staging
    table) and may want a second one meanwhile."""
    return max(1, min(OBJECTS_AT_ONCE, settings.postgres.pool_size // 2))


async def in_order(names: list[str], work: Callable[[str], Awaitable[T]], at_once: int) -> AsyncIterator[tuple[str, T]]:
    """`work(name)` for every name, `at_once` at a time, yielded in the names' order (each as soon as it and those
    before it are done: the output reads as if they ran in turn). An error of one is raised at its turn, and the
    work still running is cancelled."""
    gate = asyncio.Semaphore(at_once)

    async def one(name: str) -> T:
        async with gate:
            return await work(name)

    tasks = [asyncio.ensure_future(one(name)) for name in names]
    try:
        for name, task in zip(names, tasks, strict=True):
            yield name, await task
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
