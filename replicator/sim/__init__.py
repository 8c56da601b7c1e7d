"""replicator.sim: a local Salesforce org for tests, demos and benchmarks.

It serves OAuth 2.0, REST (describe, SOQL query, collections retrieve, limits) and Bulk API 2.0 query jobs
over HTTPS, from a seeded, lazily generated org, with fault knobs and an admin API under /__sim/; and the
Pub/Sub API over gRPC (pubsub.py) with change data capture of every change to the org (cdc.py, avro.py,
events.py) made by the admin API or the traffic generator (traffic.py).
It follows shared/protocol/bulk-rest-oauth.md and shared/protocol/pubsub-cdc.md (section numbers in comments,
e.g. "§1.5") and imports nothing from replicator.salesforce, replicator.pipeline, replicator.postgres or
replicator.model; only the wire definitions in replicator.protocol.

Entry points: `server.Simulator`, `server.SimulatorThread`, and `python -m replicator.sim` (`__main__.main`).
"""
