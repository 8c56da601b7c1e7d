"""The careful path for a result page that Postgres refused as a whole: check every row in Python.

The fast path hands Salesforce's CSV to COPY untouched. When COPY rejects a page (a row with the wrong
number of columns, a value that is not of its column's type), the page is downloaded again and each row is
checked here: good rows go on to COPY, bad rows become dead letters with their values and the reason.

These checks are a first sieve that names the column at fault, not the judge: they refuse only what Postgres would
certainly refuse. Postgres has the last word (`PageSink.load_checked`): a row that passes here and is still refused
(an impossible datetime such as `2024-13-45T25:61`, a key the page holds twice, a constraint) becomes a dead letter
with Postgres's reason there.
"""

from __future__ import annotations

import csv
import io
import re
from collections.abc import Callable, Iterable, Iterator
from datetime import date
from decimal import Decimal, InvalidOperation

from ..model import TableSpec

_DATETIME = re.compile(r"^\d{4}-\d{2}-\d{2}[T ]\d{2}:\d{2}(:\d{2}(\.\d{1,6})?)?(Z|[+-]\d{2}(:?\d{2})?)?$")
_TIME = re.compile(r"^\d{2}:\d{2}(:\d{2}(\.\d{1,6})?)?Z?$")
_INT_RANGE = {"integer": 2**31, "bigint": 2**63}


def _check_bool(v: str) -> None:
    if v.lower() not in ("true", "false", "1", "0"):
        raise ValueError("not a boolean")


def _check_numeric(v: str) -> None:
    try:
        d = Decimal(v)
    except InvalidOperation:
        raise ValueError("not a number") from None
    if not d.is_finite():
        raise ValueError("not a finite number")


def _int_checker(limit: int) -> Callable[[str], None]:
    def check(v: str) -> None:
        n = int(v)
        if not -limit <= n < limit:
            raise ValueError("out of range")

    return check


def _regex_checker(pattern: re.Pattern[str], what: str) -> Callable[[str], None]:
    def check(v: str) -> None:
        if not pattern.match(v):
            raise ValueError(f"not a {what}")

    return check


def _varchar_checker(n: int) -> Callable[[str], None]:
    def check(v: str) -> None:
        if len(v) > n:
            raise ValueError(f"longer than {n} characters")

    return check


def checker(pg_type: str) -> Callable[[str], None] | None:
    """A function that raises ValueError when a non-empty CSV value would not load into `pg_type`."""
    if pg_type == "boolean":
        return _check_bool
    if pg_type == "numeric":
        return _check_numeric
    if pg_type in _INT_RANGE:
        return _int_checker(_INT_RANGE[pg_type])
    if pg_type == "date":
        return lambda v: date.fromisoformat(v) and None
    if pg_type == "timestamptz":
        return _regex_checker(_DATETIME, "datetime")
    if pg_type == "time":
        return _regex_checker(_TIME, "time")
    if pg_type.startswith("varchar("):
        return _varchar_checker(int(pg_type[8:-1]))
    return None


def check_header(header: list[str], spec: TableSpec) -> None:
    """The page's columns must be the table's, in order (API v50.0 and later return them in SELECT order,
    docs/bulk-rest-oauth.md §1.5)."""
    want = [f.lower() for f in spec.fields]
    got = [h.lower() for h in header]
    if got != want:
        raise ValueError(f"result columns {got[:5]}… do not match the table's {want[:5]}…")


def split_rows(
    rows: Iterable[list[str]], spec: TableSpec
) -> Iterator[tuple[list[str], str | None]]:
    """Yield (row, None) for a row that will load, (row, reason) for one that will not."""
    checks = [checker(c.pg_type) for c in spec.columns]
    names = [c.name for c in spec.columns]
    key_index = names.index(spec.key)
    width = len(names)
    for row in rows:
        if len(row) != width:
            yield row, f"expected {width} columns, got {len(row)}"
            continue
        if not row[key_index]:
            yield row, f"key field {spec.columns[key_index].field} is empty"
            continue
        reason = None
        for value, check, name in zip(row, checks, names, strict=True):
            if check is not None and value != "":
                try:
                    check(value)
                except ValueError as exc:
                    reason = f"column {name}: {exc}: {value[:80]!r}"
                    break
        yield row, reason


def page_rows(text: io.TextIOBase, delimiter: str = ",") -> Iterator[list[str]]:
    """Parse a page (header first) from a text stream; NUL bytes are removed beforehand by the caller."""
    return csv.reader(text, delimiter=delimiter, quotechar='"', strict=False)


def csv_writer(out: io.TextIOBase, delimiter: str = ","):
    """A writer of the CSV shape COPY reads (every value quoted, like Salesforce's)."""
    return csv.writer(out, delimiter=delimiter, quoting=csv.QUOTE_ALL, lineterminator="\n")


class RowEncoder:
    """One row at a time → one CSV record of the shape COPY reads, as UTF-8 bytes (its length is the row's size
    in the file, which the careful path records to read any row again)."""

    def __init__(self, delimiter: str = ","):
        self._buffer = io.StringIO()
        self._writer = csv_writer(self._buffer, delimiter)

    def encode(self, row: list[str]) -> bytes:
        self._buffer.seek(0)
        self._buffer.truncate()
        self._writer.writerow(row)
        return self._buffer.getvalue().encode()


def decode_row(record: bytes, delimiter: str = ",") -> list[str]:
    """The values of one CSV record written by `RowEncoder`."""
    return next(page_rows(io.StringIO(record.decode("utf-8", errors="replace"), newline=""), delimiter), [])
