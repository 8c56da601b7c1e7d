-- History tables (docs/history.md): the stream folds a record's partial changes onto its previous version with
-- this aggregate, used as a window function (each change's full image is the previous version || the changed
-- columns of every change up to it). jsonb_concat is strict, so a NULL (a change whose image comes from the table)
-- leaves the running value as it is.
CREATE OR REPLACE AGGREGATE jsonb_merge(jsonb) (SFUNC = jsonb_concat, STYPE = jsonb, INITCOND = '{}');
