"""History retention: versions closed more than `history.retention_days` ago are deleted (docs/history.md).

`replicator prune-history` prunes once; the service prunes each object that keeps history once a day, beside its
stream or poll rounds (app/service.py), under the object's lease like the refresh.
"""

from __future__ import annotations

import asyncio

import structlog

from ..config import Settings
from ..model import Stopped
from ..postgres.store import Store
from ..salesforce.client import SalesforceClient
from .schema import history_names, object_table
from .stopping import sleep_or_stop

log = structlog.get_logger(__name__)

# Retention is counted in days, so pruning once a day keeps at most a day's closed versions more than asked; each
# prune deletes in transactions of `history.prune_batch` rows, so it never holds the table for long.
PRUNE_INTERVAL_S = 86_400.0
# After a failed prune (the database away, the object described while Salesforce is down): try again sooner.
PRUNE_RETRY_S = 900.0


async def prune_history(client: SalesforceClient, store: Store, settings: Settings, name: str) -> int | None:
    """Delete the object's history versions closed more than `history.retention_days` ago. Returns how many;
    None when the object keeps no history, or keeps every version (`retention_days` 0)."""
    obj, days = settings.objects[name], settings.history.retention_days
    names = history_names(settings, obj)
    if names is None or not days:
        return None
    table = object_table(await client.describe(name), settings.postgres.schema_, obj, names)
    await store.page_sink(table).prepare()  # validity columns renamed should history.columns have changed
    pruned = await store.prune_history(table, days, settings.history.prune_batch)
    log.info("history.pruned", object=name, versions=pruned, retention_days=days)
    return pruned


async def prune_daily(client: SalesforceClient, store: Store, settings: Settings, name: str,
                      stop: asyncio.Event) -> None:
    """The service's prune of one object: at once, then every PRUNE_INTERVAL_S until the service stops. A failure
    is logged and tried again after PRUNE_RETRY_S; it never stops the object."""
    while not stop.is_set():
        wait = PRUNE_INTERVAL_S
        try:
            if await prune_history(client, store, settings, name) is None:
                return
        except Stopped:
            return
        except Exception as exc:
            log.warning("history.prune_failed", object=name, error=str(exc), retry_in_s=PRUNE_RETRY_S)
            wait = PRUNE_RETRY_S
        await sleep_or_stop(stop, wait)
