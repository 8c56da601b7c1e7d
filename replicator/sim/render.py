"""Render a Bulk query result to a CSV file on disk, remembering where every record starts.

The file holds the records only; the header line is kept apart and prepended to every page, because each
locator page is a standalone CSV with its own header. Every value is double-quoted with embedded quotes doubled
and nulls are `""` (docs/bulk-rest-oauth.md §1.8); delimiter and line ending follow the job
(docs/bulk-rest-oauth.md §1.2).
Runs in a worker thread: pure CPU plus sequential writes; memory is the offsets array (8 bytes/record).
"""

from __future__ import annotations

from array import array
from dataclasses import dataclass

from .plan import Plan, iter_rows
from .values import csv_formatter

DELIMITERS = {"COMMA": ",", "TAB": "\t", "PIPE": "|", "SEMICOLON": ";", "CARET": "^", "BACKQUOTE": "`"}
LINE_ENDINGS = {"LF": "\n", "CRLF": "\r\n"}
_WRITE_BUFFER = 1 << 20  # flush to disk about every MiB


@dataclass
class Rendered:
    header: bytes
    offsets: array  # offsets[k] = byte offset of record k; offsets[-1] = file size
    path: str

    @property
    def count(self) -> int:
        return len(self.offsets) - 1


def ordered_columns(plan: Plan, api_version: float):
    """Columns in SELECT order from v50.0, alphabetical up to v49.0 (docs/bulk-rest-oauth.md §1.5)."""
    if api_version < 50.0:
        return sorted(plan.columns, key=lambda c: c.name.lower())
    return plan.columns


def render_csv(plan: Plan, include_deleted: bool, path: str, delimiter: str = "COMMA",
               line_ending: str = "LF", api_version: float = 67.0, malformed_rows: int = 0,
               cancelled=lambda: False) -> Rendered:
    """Write the result records to `path`. `malformed_rows` records lose their last column (a fault
    for testing dead-lettering); they are spread every 7th record from the 4th."""
    sep = DELIMITERS[delimiter]
    eol = LINE_ENDINGS[line_ending]
    joiner = '"' + sep + '"'
    columns = ordered_columns(plan, api_version)
    positions = [c.position for c in columns]
    formatters = [csv_formatter(c.spec.type) for c in columns]
    plain = all(f is None for f in formatters)
    header = ('"' + joiner.join(c.name.replace('"', '""') for c in columns) + '"' + eol).encode()
    offsets = array("q", [0])
    written = 0
    chunks: list[bytes] = []
    buffered = 0
    with open(path, "wb") as out:
        for k, row in enumerate(iter_rows(plan, include_deleted)):
            if plain:
                values = ["" if row[p] is None else row[p] for p in positions]
            else:
                values = ["" if (v := row[p]) is None else (f(v) if f else v)
                          for p, f in zip(positions, formatters, strict=True)]
            if malformed_rows and k % 7 == 3:
                malformed_rows -= 1
                values.pop()
            line = '"' + joiner.join([v.replace('"', '""') if '"' in v else v for v in values]) + '"' + eol
            data = line.encode()
            chunks.append(data)
            written += len(data)
            offsets.append(written)
            buffered += len(data)
            if buffered >= _WRITE_BUFFER:
                out.write(b"".join(chunks))
                chunks.clear()
                buffered = 0
                if cancelled():
                    break
        out.write(b"".join(chunks))
    return Rendered(header, offsets, path)
