-- replicator state schema, version 1. Applied once, in a transaction, by replicator/postgres/migrate.py.
-- Every statement is idempotent so a partly applied file can run again.

-- One row per replicated sObject: where its lifecycle stands and how to resume it.
CREATE TABLE IF NOT EXISTS objects (
    object            text PRIMARY KEY,              -- sObject API name, e.g. Account, Invoice__c
    phase             text NOT NULL DEFAULT 'NEW',   -- NEW | BACKFILLING | STREAMING | RESYNCING | FAILED
    table_schema      text,
    table_name        text,
    key_field         text,
    fingerprint       text,                          -- hash of the column list the table was built from
    job_id            text,                          -- Bulk API 2.0 query job of the running backfill
    job_created_at    timestamptz,
    load_mode         text,                          -- copy (table was empty) | upsert (staging + version guard)
    page_size         integer,                       -- maxRecords the job's pages were listed with (locators depend on it)
    pages_done        integer NOT NULL DEFAULT 0,
    last_locator      text,                          -- locator of the last committed page
    rows_loaded       bigint NOT NULL DEFAULT 0,
    rows_expected     bigint,
    stream_position   bytea,                         -- replay id captured before the backfill (handoff)
    backfill_started_at  timestamptz,
    backfill_finished_at timestamptz,
    resync_requested  boolean NOT NULL DEFAULT false,
    last_error        text,
    updated_at        timestamptz NOT NULL DEFAULT now()
);

-- Pages of a backfill job committed so far, written in the same transaction as the page's rows.
CREATE TABLE IF NOT EXISTS backfill_pages (
    object       text NOT NULL,
    job_id       text NOT NULL,
    locator      text NOT NULL,                      -- '' for the first page
    rows         integer NOT NULL,
    dead_letters integer NOT NULL DEFAULT 0,
    committed_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (object, job_id, locator)
);

-- One row per Pub/Sub topic: the last applied replay id, committed with the changes it covers.
CREATE TABLE IF NOT EXISTS checkpoints (
    topic            text PRIMARY KEY,
    replay_id        bytea NOT NULL,
    commit_timestamp timestamptz,
    updated_at       timestamptz NOT NULL DEFAULT now()
);

-- Records and events that could not be applied, with their payload and the reason. Never dropped silently.
CREATE TABLE IF NOT EXISTS dead_letters (
    id            bigserial PRIMARY KEY,
    object        text NOT NULL,
    record_key    text,
    source        text NOT NULL,                     -- backfill | stream
    reason        text NOT NULL,
    payload       jsonb NOT NULL,
    first_seen    timestamptz NOT NULL DEFAULT now(),
    last_seen     timestamptz NOT NULL DEFAULT now(),
    attempts      integer NOT NULL DEFAULT 1,
    next_retry_at timestamptz,
    resolved_at   timestamptz
);
CREATE INDEX IF NOT EXISTS dead_letters_open ON dead_letters (object) WHERE resolved_at IS NULL;
