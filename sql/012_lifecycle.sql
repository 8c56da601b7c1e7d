-- The way an object is kept current (lifecycle.Way, docs/lifecycle.md): with mode = 'cdc', the channel whose
-- checkpoint carries its stream position (NULL: a subscription of its own). A restart with another configuration
-- compares it with the way it is configured now and runs the handoff between the two, never none.
ALTER TABLE objects ADD COLUMN IF NOT EXISTS channel text;
