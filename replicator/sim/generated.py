"""Generated custom objects (`replicator sim --objects N`): N small custom objects `Gen001__c` … for tests and
benchmarks of many objects at once (one channel for hundreds of objects, docs/pubsub-cdc.md §5).

Each has the same eight fields of common types (text, number, currency, picklist, checkbox, date, a nullable
text) besides the system fields, a key prefix of its own (`x` and two base-36 digits, unused by Salesforce's
standard objects) and seeded rows like every other object (generator.py). They are ordinary custom objects of the
org: describe, REST, Bulk API 2.0 and Change Data Capture (selected by default, topic
`/data/Gen001__ChangeEvent`) serve them, and the traffic generator changes them when they are in its `objects`.
"""

from __future__ import annotations

import datetime as dt
import re

from .schema import FieldSpec

STATUSES = ("New", "Open", "Closed")
_DIGITS = "0123456789abcdefghijklmnopqrstuvwxyz"
MAX_OBJECTS = len(_DIGITS) ** 2 - 1  # two base-36 digits of key prefix
_GENERATED = re.compile(r"Gen\d{3,4}__c")


def object_name(k: int) -> str:
    return f"Gen{k:03d}__c"


def is_generated(name: str) -> bool:
    return bool(_GENERATED.fullmatch(name))


def _fields() -> list[FieldSpec]:
    return [
        FieldSpec("Name", "string", "Name", length=80, nillable=False),
        FieldSpec("Amount__c", "currency", "Amount", precision=16, scale=2, custom=True),
        FieldSpec("Quantity__c", "double", "Quantity", precision=12, scale=3, custom=True),
        FieldSpec("Count__c", "int", "Count", digits=9, custom=True),
        FieldSpec("Status__c", "picklist", "Status", length=255, custom=True, picklist=STATUSES),
        FieldSpec("Active__c", "boolean", "Active", nillable=False, custom=True),
        FieldSpec("Due_Date__c", "date", "Due Date", custom=True),
        FieldSpec("Note__c", "string", "Note", length=255, custom=True),
    ]


def generated_objects(n: int) -> tuple:
    """N objects in schema.OBJECTS' shape: API name, label, plural label, key prefix, custom, fields."""
    if not 0 <= n <= MAX_OBJECTS:
        raise ValueError(f"--objects must be within 0..{MAX_OBJECTS}")
    out = []
    for k in range(1, n + 1):
        prefix = "x" + _DIGITS[k // 36] + _DIGITS[k % 36]
        out.append((object_name(k), f"Generated {k}", f"Generated {k}s", prefix, True, _fields))
    return tuple(out)


def body(h: int, i: int, n_accounts: int) -> dict:
    """The seeded values of record i (generator.py carves `h` from the record's hash)."""
    return {
        "Name": f"GEN-{i + 1:07d}",
        "Amount__c": ((h >> 10) % 10**8) / 100,
        "Quantity__c": ((h >> 40) % 10**6) / 1000,
        "Count__c": (h >> 70) % 10**6,
        "Status__c": STATUSES[(h >> 90) % len(STATUSES)],
        "Active__c": bool((h >> 95) & 1),
        "Due_Date__c": dt.date(2024, 1, 1) + dt.timedelta(days=(h >> 100) % 1096),
        "Note__c": None if (h >> 120) % 4 == 0 else f"note {i}, \"quoted\" é",
    }
