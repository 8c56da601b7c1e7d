"""What leases cost Postgres (docs/scale.md): lease renewals one per transaction (as app/units.py renewed before
its renewals were batched: postgres/leases.py `renew`), renewals batched 1,000 units a statement (a bare
`unit = ANY(…)`, and `renew_all`, the statement app/units.py sends: each unit with its fence, for one owner), and the
fence check a commit pays (postgres/leases.py `check`).

    python -m bench.lease_scale [--units 20000] [--seconds 5] [--connections 8] [--url postgresql://…]

On a scratch database of the server (default the shared 127.0.0.1:5432, dropped at the end). Prints one JSON
object: renewals/s each way, and commits/s of an empty write transaction with and without the fence check, measured
in one run (ratios, not bare times, carry to another machine).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
import uuid

import asyncpg

from replicator.postgres import leases
from replicator.postgres.migrate import migrate
from replicator.postgres.server import LOCAL_URL


async def _for(seconds: float, connections: int, pool: asyncpg.Pool, work) -> int:
    """Run `work(conn, worker, i)` on `connections` connections at once until `seconds` pass; how many ran."""
    deadline, counts = time.monotonic() + seconds, [0] * connections

    async def worker(k: int) -> None:
        async with pool.acquire() as conn:
            while time.monotonic() < deadline:
                await work(conn, k, counts[k])
                counts[k] += 1

    await asyncio.gather(*(worker(k) for k in range(connections)))
    return sum(counts)


async def measure(url: str, units: int, seconds: float, connections: int) -> dict:
    names = [f"object:O{i}" for i in range(units)]
    async with asyncpg.create_pool(url, min_size=connections, max_size=connections,
                                   server_settings={"search_path": "replicator"}) as pool:  # the state's schema
        async with pool.acquire() as conn:
            await migrate(conn)
            await conn.execute("INSERT INTO replicator.leases (unit, owner, fence, expires_at)"
                               " SELECT u, 'r' || (n % $2), 1, now() + interval '1 hour'"
                               " FROM unnest($1::text[]) WITH ORDINALITY AS t(u, n)", names, connections)

        async def one(conn, k, i):  # each unit renewed in a transaction of its own (before the batching)
            unit = names[(i * connections + k) % units]
            await leases.renew(conn, unit, f"r{(int(unit[8:]) + 1) % connections}", 1, 15.0)

        # Each connection renews the units of one owner (r0…r7), as each replica renews its own: connections that
        # renewed the same rows in different orders deadlocked ("deadlock detected", a run in three here).
        owned = [[n for j, n in enumerate(names) if (j + 1) % connections == k] for k in range(connections)]

        def chunk(k: int, i: int) -> list[str]:  # 1,000 units of owner r{k}
            mine = owned[k]
            return [mine[(i * 1000 + j) % len(mine)] for j in range(min(1000, len(mine)))]

        async def batch(conn, k, i):  # one statement renews 1,000 units of an owner, bare: neither owner nor fences
            await conn.execute("UPDATE replicator.leases SET expires_at = now() + interval '15 seconds',"
                               " renewed_at = now() WHERE unit = ANY($1::text[])", chunk(k, i))

        renewed_all = [0] * connections

        async def batch_fenced(conn, k, i):  # as app/units.py: 1,000 units of one owner with their fences
            renewed_all[k] += len(await leases.renew_all(conn, f"r{k}", dict.fromkeys(chunk(k, i), 1), 15.0))

        async def empty(conn, k, i):  # a write transaction with nothing but a checkpoint-sized write
            async with conn.transaction():
                await conn.execute("UPDATE replicator.leases SET renewed_at = now() WHERE unit = $1", names[k])

        async def fenced(conn, k, i):  # the same, with the fence check last (postgres/leases.py `check`)
            async with conn.transaction():
                await conn.execute("UPDATE replicator.leases SET renewed_at = now() WHERE unit = $1", names[k])
                await conn.fetchval("SELECT true FROM replicator.leases WHERE unit = $1 AND fence = $2 FOR SHARE",
                                    names[k + connections], 1)

        singles = await _for(seconds, connections, pool, one) / seconds
        batches = await _for(seconds, connections, pool, batch) / seconds
        await _for(seconds, connections, pool, batch_fenced)
        fenced_batches = sum(renewed_all) / seconds
        plain = await _for(seconds, connections, pool, empty) / seconds
        checked = await _for(seconds, connections, pool, fenced) / seconds
    return {"units": units, "seconds": seconds, "connections": connections,
            "renewals_per_s_one_per_transaction": round(singles),
            "renewals_per_s_batched_1000": round(batches * 1000),
            "renewals_per_s_renew_all_1000": round(fenced_batches),
            "renew_all_vs_one_per_transaction": round(fenced_batches / singles, 1) if singles else None,
            "commits_per_s_without_fence_check": round(plain), "commits_per_s_with_fence_check": round(checked),
            "fence_check_commit_ratio": round(checked / plain, 3) if plain else None}


async def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--units", type=int, default=20_000)
    ap.add_argument("--seconds", type=float, default=5.0)
    ap.add_argument("--connections", type=int, default=8)
    ap.add_argument("--url", default=LOCAL_URL, help="the server (a scratch database is made on it)")
    args = ap.parse_args()
    database = f"replicator_bench_leases_{uuid.uuid4().hex[:8]}"
    admin = await asyncpg.connect(args.url)
    await admin.execute(f'CREATE DATABASE "{database}"')
    try:
        url = args.url.rsplit("/", 1)[0] + "/" + database
        print(json.dumps(await measure(url, args.units, args.seconds, args.connections)))
    finally:
        await admin.execute(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')
        await admin.close()


if __name__ == "__main__":
    asyncio.run(main())
