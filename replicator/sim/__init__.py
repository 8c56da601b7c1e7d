"""replicator.sim: a local Salesforce org for tests, demos and benchmarks.

It serves OAuth 2.0, REST (describe, SOQL query, collections retrieve, limits) and Bulk API 2.0 query jobs
over HTTPS, from a seeded, lazily generated org, with fault knobs and an admin API under /__sim/.
It follows shared/protocol/bulk-rest-oauth.md (section numbers in comments, e.g. "§1.5") and imports
nothing from replicator.salesforce, replicator.pipeline or replicator.postgres.

Entry points: `server.Simulator`, `server.SimulatorThread`, and `python -m replicator.sim` (`__main__.main`).
"""
