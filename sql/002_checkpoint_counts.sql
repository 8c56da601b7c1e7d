-- Events applied per topic, counted in the same transaction as the checkpoint: with no duplicates delivered,
-- it equals the number of events the org published, which proves no event was applied twice or lost.
ALTER TABLE checkpoints ADD COLUMN IF NOT EXISTS events_applied bigint NOT NULL DEFAULT 0;
