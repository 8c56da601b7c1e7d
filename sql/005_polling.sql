-- Polled objects (objects without change events, docs/polling.md). Their position is a row of
-- checkpoints under the topic 'poll:<Object>', committed in the transaction of the rows it covers:
-- the keyset (SystemModstamp, Id) of the newest record read, and how far getDeleted has covered. Such a row has
-- no replay id.
ALTER TABLE checkpoints ALTER COLUMN replay_id DROP NOT NULL;
ALTER TABLE checkpoints ADD COLUMN IF NOT EXISTS poll_systemmodstamp timestamptz;
ALTER TABLE checkpoints ADD COLUMN IF NOT EXISTS poll_id text;
ALTER TABLE checkpoints ADD COLUMN IF NOT EXISTS poll_deleted_through timestamptz;
-- How each object is replicated: cdc (change events) or poll, decided at start-up, and why.
ALTER TABLE objects ADD COLUMN IF NOT EXISTS mode text;
ALTER TABLE objects ADD COLUMN IF NOT EXISTS mode_reason text;
