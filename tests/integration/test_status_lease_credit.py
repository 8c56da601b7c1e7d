"""`replicator status` credits an object to the process that writes it (docs/operating.md "One writer"): its own
lease, else the lease of the channel its position is on. An object whose stored channel is not the one a live
process holds (it left that channel's configuration, and nobody writes it now) is held by nobody, not by whichever
channel happens to be live."""

from __future__ import annotations

import asyncpg

from replicator.postgres.migrate import migrate
from replicator.postgres.status import object_rows

# The test's own sessions see the default org's state unqualified, as the Store's do (postgres/store.py).
DEFAULT_STATE = {"search_path": "replicator"}


async def test_an_object_is_credited_to_its_own_lease_or_its_own_channels_only(pg_url):
    conn = await asyncpg.connect(pg_url, server_settings=DEFAULT_STATE)
    try:
        await migrate(conn)
        await conn.execute(
            "INSERT INTO replicator.objects (object, phase, mode, channel) VALUES"
            " ('Account', 'STREAMING', 'cdc', '/data/OldChannel'), ('Contact', 'STREAMING', 'cdc', '/data/NewChannel'),"
            " ('Lead', 'STREAMING', 'poll', NULL), ('Case', 'STREAMING', 'cdc', '/data/OldChannel')")
        await conn.execute(
            "INSERT INTO replicator.leases (unit, owner, fence, expires_at) VALUES"
            " ('channel:/data/NewChannel', 'r1', 1, now() + interval '1 minute'),"
            " ('object:Lead', 'r2', 4, now() + interval '1 minute'), ('object:Case', 'r3', 2, now() + interval '1 minute')")
        held = {r["object"]: (r["held_unit"], r["held_by"]) for r in await object_rows(conn)}
    finally:
        await conn.close()
    assert held == {"Account": (None, None), "Contact": ("channel:/data/NewChannel", "r1"),
                    "Lead": ("object:Lead", "r2"), "Case": ("object:Case", "r3")}
