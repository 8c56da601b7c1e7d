-- Derivation repairs (docs/upgrading.md, pipeline/repairs.py): a release that fixes how a column is derived repairs
-- the rows an earlier release derived wrong, once per object. One row per repair and object, written when the repair
-- is settled: in the transaction of its UPDATE (outcome 'repaired'), or when nothing can need it (outcome
-- 'not_needed', with why: the database or the object's table was loaded by a release with the fix, the object has no
-- such column, no row holds a value the earlier derivation could have written). A repair without a row runs at the
-- object's next start under its unit's lease; a repair cut short records nothing and runs again.
-- Numbered 017: 016 is left to branches in flight when it was written.
CREATE TABLE IF NOT EXISTS repairs (
    repair        text NOT NULL,                    -- the repair's id (pipeline/repairs.py REPAIRS)
    object        text NOT NULL,
    outcome       text NOT NULL,                    -- repaired | not_needed
    reason        text,                             -- not_needed: why
    columns       text[],                           -- repaired: its columns compared with the org
    job_id        text,                             -- repaired: the Bulk job that read them
    rows_compared bigint,                           -- the extract's figures: an object's pending repairs share it
    rows_changed  bigint,
    rows_skipped  bigint,                           -- written after the job began (none: the repair runs first)
    finished_at   timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (repair, object)
);
