-- Resyncs per object (a stale replay id, GAP_OVERFLOW, wildcard record ids): counted so operators see them.
ALTER TABLE objects ADD COLUMN IF NOT EXISTS resyncs integer NOT NULL DEFAULT 0;
ALTER TABLE objects ADD COLUMN IF NOT EXISTS last_resync_at timestamptz;
ALTER TABLE objects ADD COLUMN IF NOT EXISTS last_resync_reason text;
