"""The client side of the Salesforce APIs, and every Salesforce fact the program relies on.

Clients: OAuth (`auth`), REST (`client`, `describe`), Bulk API 2.0 query (`bulk`), Pub/Sub API (`pubsub`),
records by id through SOQL (`records`). Facts, as pure functions: change event decoding (`cdc`), CDC topics,
gap change types and placeholder record ids (`topics`), value units (`values`), compound fields
(`compounds`).

The only package (with the generated `protocol/` stubs) that imports httpx and grpc. Everything it returns is
a plain dict or a `replicator.model` type, and every error it raises is a `model.TransientError` or
`model.TerminalError` (mapped once, in `errors`).
"""

from replicator.salesforce.auth import Credentials, Token, TokenProvider
from replicator.salesforce.bulk import BulkClient, PageStream
from replicator.salesforce.client import SalesforceClient

__all__ = ["BulkClient", "Credentials", "PageStream", "SalesforceClient", "Token", "TokenProvider"]
