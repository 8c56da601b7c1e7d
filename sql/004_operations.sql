-- When the newest change event was applied (keepalive checkpoints refresh updated_at only): with
-- commit_timestamp it gives the lag `replicator status` shows for a service running elsewhere.
ALTER TABLE checkpoints ADD COLUMN IF NOT EXISTS applied_at timestamptz;
-- How a dead letter was resolved (applied on retry, record gone from Salesforce, dropped by an operator).
ALTER TABLE dead_letters ADD COLUMN IF NOT EXISTS resolution text;
CREATE INDEX IF NOT EXISTS dead_letters_due ON dead_letters (next_retry_at) WHERE resolved_at IS NULL;
