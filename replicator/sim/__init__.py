"""replicator.sim: a local Salesforce org for tests, demos and benchmarks.

It serves OAuth 2.0, REST (describe, SOQL query, collections retrieve, limits) and Bulk API 2.0 query jobs
over HTTPS, from a seeded, lazily generated org, with fault knobs and an admin API under /__sim/; and the
Pub/Sub API over gRPC (pubsub.py) with change data capture of every change to the org (cdc.py, avro.py,
events.py, diffs.py for large text sent as diffs) made by the admin API or the traffic generator (traffic.py,
longtext.py); values the org computes (Contact's Name, formulas) live in derived.py.
It follows Salesforce's published contract as docs/bulk-rest-oauth.md, docs/pubsub-cdc.md
and docs/salesforce-coverage.md record it (comments cite them by page and section, e.g.
"docs/bulk-rest-oauth.md §1.5"), and imports nothing from replicator.salesforce, replicator.pipeline,
replicator.postgres or replicator.model; only the wire definitions in replicator.protocol.

Entry points: `server.Simulator`, `server.SimulatorThread` (one org or several: `orgs=N`), `process.start_sim_process`
(the simulator as a subprocess) and `python -m replicator.sim` (`__main__.main`; `--orgs N` for several orgs).
"""
