-- Each object's own stream figures when it is a channel's member (docs/operating.md, `replicator status`): the
-- channel's checkpoint counts every member's events together, so each member's events applied, its newest change's
-- commit time and when it was applied are kept on its row, in the same transaction as the channel's checkpoint.
ALTER TABLE objects ADD COLUMN IF NOT EXISTS member_events_applied bigint NOT NULL DEFAULT 0;
ALTER TABLE objects ADD COLUMN IF NOT EXISTS member_committed_at timestamptz;
ALTER TABLE objects ADD COLUMN IF NOT EXISTS member_applied_at timestamptz;
