"""Salesforce values → Python values: Avro-decoded change event fields and REST (JSON) record fields.

Each function takes the type of the column the value lands in (`model.ColumnSpec.pg_type`) and returns what
asyncpg sends for it. Pure functions.

Units of change events: datetime fields are epoch milliseconds ("Differences Between Change Events Received
with Streaming API vs. Pub/Sub API",
https://developer.salesforce.com/docs/atlas.en-us.api_streaming.meta/api_streaming/cdc_event_diff_pubsub_cometd.htm;
docs/pubsub-cdc.md §5). Salesforce does not state the units of date and time fields
(docs/pubsub-cdc.md §10, item 4); we read, as the simulator writes: date = epoch milliseconds at
UTC midnight, time = milliseconds since midnight.

NUL: text from Salesforce can hold NUL characters (they occur in real results, docs/bulk-rest-oauth.md
§1.8), and Postgres can store NUL in neither `text` nor `jsonb` (docs/baselines.md, "Salesforce-style CSV straight
into COPY"): a value that keeps it is refused, and so is a dead letter that quotes it. `strip_nul` is the one place
a Salesforce value loses its NULs on its way to a Python value, whichever API brought it: change events (Avro),
records fetched by REST (gap healing, dead-letter retry), platform event fields. The Bulk CSV never becomes Python
values on the fast path; its bytes are stripped at the COPY (`postgres/sink.strip_nul_chunks`), so a record lands
the same, without its NULs, by every path.
"""

from __future__ import annotations

import datetime as dt
from decimal import Decimal
from typing import Any

EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)


def strip_nul(value: Any) -> Any:
    """`value` without NUL characters: a string, or the strings inside lists and dicts (keys too), as decoded from
    Avro or JSON. Other values are returned as they are."""
    if isinstance(value, str):
        return value.replace("\x00", "") if "\x00" in value else value
    if isinstance(value, dict):
        return {strip_nul(k): strip_nul(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [strip_nul(v) for v in value]
    return value


def decode_epoch_ms(ms: int) -> dt.datetime:
    """Epoch milliseconds → an aware UTC datetime."""
    return EPOCH + dt.timedelta(milliseconds=ms)


def encode_epoch_ms(value: dt.datetime) -> int:
    """An aware datetime → epoch milliseconds (whole, truncated)."""
    return int((value - EPOCH).total_seconds() * 1000)


def decode_avro_value(value: Any, pg_type: str) -> Any:
    """A value as fastavro decodes it from a change event → the Python value for `pg_type`."""
    if value is None:
        return None
    if pg_type == "timestamptz":
        return decode_epoch_ms(value) if isinstance(value, int) else value
    if pg_type == "date":
        return decode_epoch_ms(value).date() if isinstance(value, int) else value
    if pg_type == "time":
        if isinstance(value, int):
            return (dt.datetime.min + dt.timedelta(milliseconds=value)).time()
        return value
    if pg_type == "numeric":
        return Decimal(repr(value)) if isinstance(value, float) else Decimal(value)
    if pg_type in ("integer", "bigint"):
        return int(value)
    if pg_type == "boolean":
        return bool(value)
    return strip_nul(value if isinstance(value, str) else str(value))


def decode_rest_value(value: Any, pg_type: str) -> Any:
    """A REST JSON value (query, queryAll, sObject Collections retrieve) → the Python value for `pg_type`.

    REST sends datetimes as `2013-05-08T21:20:00.000+0000` (docs/bulk-rest-oauth.md §3.5), dates as
    `2024-05-01`, times as `08:30:00.000Z`; `…Z` datetimes are accepted too. An empty string is no value.
    """
    if value is None or value == "":
        return None
    if pg_type == "timestamptz":
        return dt.datetime.fromisoformat(value.replace("Z", "+00:00").replace("+0000", "+00:00"))
    if pg_type == "date":
        return dt.date.fromisoformat(value)
    if pg_type == "time":
        return dt.time.fromisoformat(value.rstrip("Z"))
    if pg_type == "numeric":
        return Decimal(str(value))
    if pg_type in ("integer", "bigint"):
        return int(value)
    if pg_type == "boolean":
        return bool(value)
    return strip_nul(value if isinstance(value, str) else str(value))
