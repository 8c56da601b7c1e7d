-- Polled objects (docs/polling.md): when the last key reconciliation (an Id-only extract compared with the table)
-- began, committed in the transaction that applies it; the next one is due `poll.reconcile_interval_s` later.
ALTER TABLE checkpoints ADD COLUMN IF NOT EXISTS poll_reconciled_at timestamptz;
