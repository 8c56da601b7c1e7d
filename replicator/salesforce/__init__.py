"""The client side of the Salesforce APIs: OAuth (`auth`), REST (`client`), Bulk API 2.0 query (`bulk`).

The only package that imports httpx. Everything it returns is a plain dict or a `replicator.model` type, and
every error it raises is a `model.TransientError` or `model.TerminalError` (mapped once, in `errors`).
"""

from replicator.salesforce.auth import Credentials, Token, TokenProvider
from replicator.salesforce.bulk import BulkClient, PageStream
from replicator.salesforce.client import SalesforceClient

__all__ = ["BulkClient", "Credentials", "PageStream", "SalesforceClient", "Token", "TokenProvider"]
