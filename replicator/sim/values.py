"""How one stored value is written on each wire: Bulk CSV, REST JSON, and the admin ground truth.

Formats: REST JSON datetimes `2024-05-01T12:34:56.000+0000` (docs/bulk-rest-oauth.md §1.8); Bulk CSV
and ground truth datetimes `2024-05-01T12:34:56.000Z`, dates `2024-05-01`, times `08:30:00.000Z`, booleans
`true`/`false`, numbers plain (no exponent). The CSV datetime form is this simulator's choice: Salesforce does
not document it (docs/bulk-rest-oauth.md §8, question 1).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable


def _float_text(v: float) -> str:
    text = repr(v)
    if "e" in text or "E" in text:
        text = format(v, "f").rstrip("0").rstrip(".")
    if text.endswith(".0"):
        text = text[:-2]
    return text


def _bool_text(v: bool) -> str:
    return "true" if v else "false"


def _datetime_z(v: dt.datetime) -> str:
    return v.isoformat(timespec="milliseconds") + "Z"


def _datetime_rest(v: dt.datetime) -> str:
    return v.isoformat(timespec="milliseconds") + "+0000"


def _date_text(v: dt.date) -> str:
    return v.isoformat()


def _time_z(v: dt.time) -> str:
    return v.isoformat(timespec="milliseconds") + "Z"


def csv_formatter(ftype: str) -> Callable[[object], str] | None:
    """The to-text function of a CSV column, or None when the stored value already is its text."""
    return {
        "boolean": _bool_text, "int": str, "double": _float_text, "currency": _float_text,
        "percent": _float_text, "date": _date_text, "datetime": _datetime_z, "time": _time_z,
    }.get(ftype)


def rest_value(ftype: str, v: object) -> object:
    """A REST JSON value (query and collections responses)."""
    if v is None:
        return None
    if ftype == "datetime":
        return _datetime_rest(v)  # type: ignore[arg-type]
    if ftype == "date":
        return _date_text(v)  # type: ignore[arg-type]
    if ftype == "time":
        return _time_z(v)  # type: ignore[arg-type]
    return v


def truth_value(ftype: str, v: object) -> object:
    """A ground-truth JSON value (admin NDJSON): JSON types, datetimes in the CSV form."""
    if v is None:
        return None
    if ftype == "datetime":
        return _datetime_z(v)  # type: ignore[arg-type]
    if ftype == "date":
        return _date_text(v)  # type: ignore[arg-type]
    if ftype == "time":
        return _time_z(v)  # type: ignore[arg-type]
    return v


def address_value(parts: dict) -> dict | None:
    """A compound address as REST returns it, from its component values keyed by component suffix."""
    if all(v is None for v in parts.values()):
        return None
    return {
        "city": parts.get("City"), "country": parts.get("Country"), "geocodeAccuracy": None,
        "latitude": parts.get("Latitude"), "longitude": parts.get("Longitude"),
        "postalCode": parts.get("PostalCode"), "state": parts.get("State"), "street": parts.get("Street"),
    }
