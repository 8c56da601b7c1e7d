"""Records by id through SOQL (`query`, or `queryAll` to include deleted records), and SOQL string quoting.

Ids are spliced into SOQL text, so only well-formed record ids are: anything else is refused (never queried,
never in the result). Every other string literal goes through `soql_string`.
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from replicator.salesforce.client import SalesforceClient

# A Salesforce record id: 15 case-sensitive alphanumerics, or 18 with the case-insensitive checksum suffix.
# "Field Types" (ID), SOAP API Developer Guide:
# https://developer.salesforce.com/docs/atlas.en-us.api.meta/api/field_types.htm
RECORD_ID = re.compile(r"^[A-Za-z0-9]{15}(?:[A-Za-z0-9]{3})?$")

# Ids per query. The SOQL travels in the URL (`GET …/queryAll?q=`), and Salesforce refuses a URI over 16,384
# bytes with 414 ("Status Codes and Error Responses",
# https://developer.salesforce.com/docs/atlas.en-us.api_rest.meta/api_rest/errorcodes.htm;
# docs/bulk-rest-oauth.md §2.1). An id costs at most 28 bytes URL-encoded (`%2718…%27%2C+`): 200
# ids are ~5.6 KB, leaving ~10 KB for the SELECT list. More ids per call would save calls but fail on wide
# objects; the field list is not part of this budget check.
IDS_PER_QUERY = 200


def is_record_id(value: str) -> bool:
    """True for a well-formed 15- or 18-character record id."""
    return isinstance(value, str) and RECORD_ID.match(value) is not None


def soql_string(value: str) -> str:
    """A SOQL string literal: backslash and single quote escaped, newlines as \\n and \\r. "Quoted String Escape
    Sequences", SOQL and SOSL Reference:
    https://developer.salesforce.com/docs/atlas.en-us.soql_sosl.meta/soql_sosl/sforce_api_calls_soql_select_quotedstringescapes.htm"""
    escaped = value.replace("\\", "\\\\").replace("'", "\\'").replace("\n", "\\n").replace("\r", "\\r")
    return f"'{escaped}'"


def soql_datetime(value: dt.datetime) -> str:
    """A SOQL dateTime literal in UTC, `2026-11-30T15:39:01Z` (no quotes; whole seconds: Salesforce stores no
    milliseconds, docs/salesforce-coverage.md §1). "Date Formats and Date Literals", SOQL and SOSL Reference:
    https://developer.salesforce.com/docs/atlas.en-us.soql_sosl.meta/soql_sosl/sforce_api_calls_soql_select_dateformats.htm"""
    if value.tzinfo is None:
        raise ValueError("a SOQL dateTime needs an aware datetime (UTC)")
    return value.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _select_list(fields: Iterable[str], key_field: str) -> list[str]:
    """The fields to select, the key first when the caller did not name it (the result is keyed by it)."""
    names = list(dict.fromkeys(fields))
    return names if any(f.lower() == key_field.lower() for f in names) else [key_field, *names]


async def records_by_id(
    client: SalesforceClient, object_name: str, fields: Sequence[str], ids: Iterable[str], *, include_deleted: bool,
    key_field: str = "Id",
) -> dict[str, dict[str, Any]]:
    """The records with these ids, as {Id: record} (REST JSON values, `attributes` stripped).

    With `key_field` (an external-id field's API name from describe), the records whose key field has these
    values instead, as {value: record}; values are quoted with `soql_string`, not checked as record ids.

    `include_deleted` uses queryAll, which also returns deleted records (`IsDeleted` true, while they are in the
    recycle bin) and archived ones ("QueryAll",
    https://developer.salesforce.com/docs/atlas.en-us.api_rest.meta/api_rest/resources_queryall.htm;
    docs/bulk-rest-oauth.md §3.4). An id that is not a record id is refused: it is never queried and
    never in the result, like an id the org does not have. Keys are the ids Salesforce returns (18 characters).
    `object_name` and `fields` must be API names from describe: they are spliced as they are.
    """
    by_id = key_field == "Id"
    wanted = [i for i in dict.fromkeys(ids) if (is_record_id(i) if by_id else isinstance(i, str))]
    select = ", ".join(_select_list(fields, key_field))
    found: dict[str, dict[str, Any]] = {}
    for start in range(0, len(wanted), IDS_PER_QUERY):
        chunk = wanted[start : start + IDS_PER_QUERY]
        soql = (f"SELECT {select} FROM {object_name} "
                f"WHERE {key_field} IN ({', '.join(soql_string(i) for i in chunk)})")
        async for record in client.query(soql, all_rows=include_deleted):
            if record.get(key_field) is not None:
                found[str(record[key_field])] = record
    return found
