-- The live replicas (docs/replicas.md): each `replicator run` renews its row with its leases, so
-- every process knows how many share the units and takes at most its fair share of them (units ÷ live replicas,
-- rounded up). `units` are the units the process runs (holds or stands by for), `held` how many it holds; a row
-- whose expires_at passed is a replica that died or was paused, and a clean stop deletes its row. A signal for
-- balancing only: a unit's one writer is its lease and fence (009_leases.sql), never this table.
CREATE TABLE IF NOT EXISTS replicas (
    replica text PRIMARY KEY,
    units text[] NOT NULL DEFAULT '{}',
    held integer NOT NULL DEFAULT 0,
    started_at timestamptz NOT NULL DEFAULT now(),
    renewed_at timestamptz NOT NULL DEFAULT now(),
    expires_at timestamptz NOT NULL
);
