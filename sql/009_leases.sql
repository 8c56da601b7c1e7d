-- One writer per unit (docs/operating.md "One writer"): a unit of work (an object, `object:Account`; a channel,
-- `channel:/data/ChangeEvents`) is held by one process through its row here. `fence` grows by one at every
-- acquisition; each commit of rows or a checkpoint checks in its own transaction that the fence is still the one
-- its process acquired (postgres/leases.py), so a process that lost the lease can never commit again. Every time
-- is the database's clock (now()), so the replicas' clocks never matter.
CREATE TABLE IF NOT EXISTS leases (
    unit text PRIMARY KEY,
    owner text NOT NULL,
    fence bigint NOT NULL,
    expires_at timestamptz NOT NULL,
    acquired_at timestamptz NOT NULL DEFAULT now(),
    renewed_at timestamptz NOT NULL DEFAULT now()
);
