"""Data differences of large text fields in UPDATE events (the `diff_fields` knob, cdc.py).

Salesforce may send an updated text value as a unified diff instead of the whole value, and lists the field in
the header's `diffFields` ("Sending Data Differences for Fields of Updated Records",
https://developer.salesforce.com/docs/atlas.en-us.change_data_capture.meta/change_data_capture/cdc_data_diff.htm;
docs/pubsub-cdc.md §6 "diffFields contents"). The field then holds (Pub/Sub API form of "Data
Differences in Event Fields", https://developer.salesforce.com/docs/platform/change-data-capture/guide/cdc-data-diff-event-fields.html):

    "--- \\n+++ <SHA-256 hex of the full new value>\\n@@ -2,1 +2,1 @@\\n-old line\\n+new line"

The full value is sent instead when the new value is under 1,000 characters, its length differs from the old by
more than 50%, more than 25% of the lines (old + new) changed, or the diff is longer than the new value.

Choices where the pages are silent (this simulator DECIDES):
- Lines are the value split on its own line break, `\\r\\n` or `\\n`; diff lines carry no line break and are
  joined with `\\n`, with no line break after the last one. Rebuilding a value means joining its lines with the
  old value's line break again, which is what Salesforce's reconstruction steps describe ("How to Reconstruct a
  Field from Its Diff Value" and "Considerations for Newline Characters and Computing the SHA-256 Hash",
  https://developer.salesforce.com/docs/platform/change-data-capture/guide/cdc-data-diff-event-fields-considerations.html).
  A value whose line breaks are mixed (both kinds, or a lone `\\r`) could not be rebuilt that way, so it, and a
  change of line-break style, is always sent in full.
- Hunks have no context lines and always spell both counts, `@@ -a,b +c,d @@`, as the documented example
  does (`@@ -2,1 +2,1 @@`); `difflib.unified_diff(n=0)` would write `@@ -2 +2 @@`, so the hunks are formatted
  here from `difflib.SequenceMatcher` opcodes. An empty range names the line before it (`@@ -3,0 +4,2 @@`
  inserts after old line 3), as GNU diff and difflib do.
- The SHA-256 is over the UTF-8 bytes of the new value, in lowercase hex (the documented example's form).
  Lengths are counted in characters (Python code points); "50% in length" is relative to the old length.
- Only an UPDATE event naming a single record carries diffs: one body serves every record of an event, and
  each record would need its own diff.
"""

from __future__ import annotations

import difflib
import hashlib

MIN_LENGTH = 1000  # shorter new values are sent in full
MAX_LENGTH_CHANGE = 0.5  # a length change of more than 50% of the old length: full value
MAX_CHANGED_LINES = 0.25  # more than 25% of old + new lines changed: full value


def line_break(value: str) -> str | None:
    """The value's one line break (`\\r\\n` or `\\n`); `\\n` for a value without any; None when mixed."""
    lf, cr = value.count("\n"), value.count("\r")
    if cr == 0:
        return "\n"
    crlf = value.count("\r\n")
    return "\r\n" if crlf == lf == cr else None


def text_diff(old: str | None, new: str | None) -> str | None:
    """The diff to send in place of `new`, or None when the full value must be sent (see the module rules)."""
    if old is None or new is None or old == new or len(new) < MIN_LENGTH:
        return None
    if abs(len(new) - len(old)) > MAX_LENGTH_CHANGE * len(old):
        return None
    sep = line_break(old)
    if sep is None or line_break(new) != sep:
        return None
    a, b = old.split(sep), new.split(sep)
    hunks, changed = _hunks(a, b)
    if changed > MAX_CHANGED_LINES * (len(a) + len(b)):
        return None
    diff = "\n".join(["--- ", "+++ " + hashlib.sha256(new.encode()).hexdigest(), *hunks])
    return None if len(diff) > len(new) else diff


def _hunks(a: list[str], b: list[str]) -> tuple[list[str], int]:
    """Diff lines (hunk headers, `-old`, `+new`) with no context, and the number of lines changed. Equal lines
    at both ends are set aside first, so a small edit of a long value costs one short comparison."""
    head = 0
    while head < min(len(a), len(b)) and a[head] == b[head]:
        head += 1
    tail = 0
    while tail < min(len(a), len(b)) - head and a[-1 - tail] == b[-1 - tail]:
        tail += 1
    mid_a, mid_b = a[head:len(a) - tail], b[head:len(b) - tail]
    out: list[str] = []
    changed = 0
    matcher = difflib.SequenceMatcher(None, mid_a, mid_b, autojunk=False)
    for tag, i1, i2, j1, j2 in matcher.get_opcodes():
        if tag == "equal":
            continue
        changed += (i2 - i1) + (j2 - j1)
        out.append(f"@@ -{_start(head + i1, i2 - i1)},{i2 - i1} +{_start(head + j1, j2 - j1)},{j2 - j1} @@")
        out.extend("-" + line for line in mid_a[i1:i2])
        out.extend("+" + line for line in mid_b[j1:j2])
    return out, changed


def _start(index: int, count: int) -> int:
    """1-based first line of a range; an empty range names the line before it (GNU unified format)."""
    return index + 1 if count else index
