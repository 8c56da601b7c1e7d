-- The scheduled refresh of columns change events never carry (formula fields, LastActivityDate, LastViewedDate;
-- docs/refresh.md): one row per object, the last refresh that finished, written in the transaction of its UPDATE,
-- and the last failure. The service's first refresh of an object is due `formula_refresh_s` after finished_at,
-- so a restart does not refresh again.
CREATE TABLE IF NOT EXISTS refreshes (
    object         text PRIMARY KEY,
    columns        text[] NOT NULL DEFAULT '{}',    -- the columns refreshed (lower-cased field names)
    job_id         text,                            -- the Bulk API 2.0 query job of the last refresh
    started_at     timestamptz,                     -- database clock just before the job was created
    finished_at    timestamptz,                     -- when its UPDATE committed
    rows_compared  bigint NOT NULL DEFAULT 0,       -- records in the extract
    rows_changed   bigint NOT NULL DEFAULT 0,       -- rows whose refreshed values differed, updated
    rows_skipped   bigint NOT NULL DEFAULT 0,       -- rows that differed but were written after the job began
    duration_s     double precision,
    refreshes      bigint NOT NULL DEFAULT 0,       -- refreshes finished, in all
    last_error     text,                            -- the last failure, cleared by the next success
    failed_at      timestamptz
);
