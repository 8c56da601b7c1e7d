"""Large text fields that change events send as unified diffs (the header's `diffFields`).

"Sending Data Differences for Fields of Updated Records"
(https://developer.salesforce.com/docs/atlas.en-us.change_data_capture.meta/change_data_capture/cdc_data_diff.htm;
docs/pubsub-cdc.md §6): for an update of a large text field Salesforce may send, instead of the
value, `"--- \\n+++ <SHA-256 hex of the new value>\\n@@ -a,b +c,d @@\\n-old line\\n+new line…"`, computed per
line of the value. The new value is the stored value with the hunks applied; its SHA-256 must equal the one sent
("How to Reconstruct a Field from Its Diff Value" and "Considerations for Newline Characters and Computing the
SHA-256 Hash": the value keeps its own line breaks, `\\r\\n` or `\\n`).

Pure functions: the pipeline finds the stored value, and fetches the record when a diff cannot be applied.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass

_HUNK = re.compile(r"^@@ -(\d+)(?:,(\d+))? \+(\d+)(?:,(\d+))? @@")


@dataclass(frozen=True, slots=True)
class TextDiff:
    """A field's value sent as diffs: one, or several changes of a batch in order, applied to the stored value."""

    diffs: tuple[str, ...]

    def then(self, later: TextDiff) -> TextDiff:
        return TextDiff(self.diffs + later.diffs)


def apply_diffs(base: str, diff: TextDiff) -> str | None:
    """`base` with every diff applied in order, or None when one does not apply or its hash differs."""
    value: str | None = base
    for text in diff.diffs:
        value = apply_diff(value, text)
        if value is None:
            return None
    return value


def apply_diff(base: str, diff: str) -> str | None:
    """The new value from the old one and a diff, or None when the diff does not fit `base` (another base,
    a malformed diff) or the result's SHA-256 is not the one the diff names."""
    lines = diff.split("\n")
    if len(lines) < 2 or not lines[0].startswith("---") or not lines[1].startswith("+++ "):
        return None
    expected = lines[1][4:].strip().lower()
    newline = "\r\n" if "\r\n" in base else "\n"
    old = base.split(newline)
    new = _patch(old, [line.removesuffix("\r") for line in lines[2:]])
    if new is None:
        return None
    value = newline.join(new)
    return value if hashlib.sha256(value.encode("utf-8")).hexdigest() == expected else None


def _patch(old: list[str], body: list[str]) -> list[str] | None:
    """Apply the hunks in `body` (the diff's lines after its two header lines) to `old`."""
    out: list[str] = []
    pos = 0  # next line of `old` not yet copied
    i = 0
    if body and body[-1] == "":  # the diff's own final line break
        body = body[:-1]
    while i < len(body):
        header = _HUNK.match(body[i])
        if header is None:
            return None
        a, b, d = int(header[1]), int(header[2] or 1), int(header[4] or 1)
        start = a if b == 0 else a - 1  # an insertion (b = 0) goes after line a
        if start < pos or start > len(old):
            return None
        out += old[pos:start]
        pos = start
        i += 1
        kept = removed = added = 0
        while i < len(body) and not body[i].startswith("@@"):
            line = body[i]
            i += 1
            kind, text = line[:1], line[1:]
            if kind == "\\":  # "\ No newline at end of file"
                continue
            if kind in ("-", " "):
                if pos >= len(old) or old[pos] != text:
                    return None  # the stored value is not the one the diff was made from
                pos += 1
                if kind == " ":
                    out.append(text)
                    kept += 1
                else:
                    removed += 1
            elif kind == "+":
                out.append(text)
                added += 1
            else:
                return None
        if kept + removed != b or kept + added != d:
            return None
    return out + old[pos:]
