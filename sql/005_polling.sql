-- Polled objects (objects without change events, docs/polling.md). Their position is a row of
-- replicator.checkpoints under the topic 'poll:<Object>', committed in the transaction of the rows it covers:
-- the keyset (SystemModstamp, Id) of the newest record read, and how far getDeleted has covered. Such a row has
-- no replay id.
ALTER TABLE replicator.checkpoints ALTER COLUMN replay_id DROP NOT NULL;
ALTER TABLE replicator.checkpoints ADD COLUMN IF NOT EXISTS poll_systemmodstamp timestamptz;
ALTER TABLE replicator.checkpoints ADD COLUMN IF NOT EXISTS poll_id text;
ALTER TABLE replicator.checkpoints ADD COLUMN IF NOT EXISTS poll_deleted_through timestamptz;
-- How each object is replicated: cdc (change events) or poll, decided at start-up, and why.
ALTER TABLE replicator.objects ADD COLUMN IF NOT EXISTS mode text;
ALTER TABLE replicator.objects ADD COLUMN IF NOT EXISTS mode_reason text;
