-- A resync (any extract loaded through the upsert) removes the rows its whole extract lacks, decided by presence in
-- the extract, never by when a row was written (docs/architecture.md "How the stream works", docs/design.md contract 5).
--
-- extract_keys: the keys each page of the object's running upsert-mode job held, inserted in the transaction that
-- loads the page (postgres/sink.py), so a job resumed after a crash still knows what its committed pages held.
-- Emptied when a job starts and when the backfill finishes (postgres/state.py). One array a page, not a row a key:
-- 100,000 keys as rows cost ~80 ms to insert and ~90 ms to delete (WAL for each), as one array ~50 ms and <1 ms.
-- Logged, not UNLOGGED: a Postgres crash empties an unlogged table, and a lost key set would read as "the extract
-- held nothing".
CREATE TABLE IF NOT EXISTS extract_keys (
    object      text NOT NULL,
    job_id      text NOT NULL,
    record_keys text[] NOT NULL
);

-- The running job's createdDate on Salesforce's clock: a row whose version (a commit time or SystemModstamp, also
-- Salesforce's clock) is at or after it may hold a record the extract could not see yet, and stays.
ALTER TABLE objects ADD COLUMN IF NOT EXISTS job_created_in_org timestamptz;
