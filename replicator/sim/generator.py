"""Seeded, lazy record generator: record i of an object is a pure function of (seed, object, i, org size).

Nothing is materialised: `row(i)` hashes (seed, object, i) with BLAKE2b and carves the 512-bit digest into
field values, so a million-record org costs nothing until it is read. Rows are tuples in the object's
`stored_fields` order (schema.py). Values are Python types: str, int, float, bool, None,
datetime.datetime (naive UTC), datetime.date, datetime.time.

Text deliberately carries the hazards a CSV/COPY path must survive: commas, double quotes, \\n and \\r\\n inside
values, non-ASCII (é, 日本語, emoji). About 2% of records are soft-deleted (IsDeleted=true). Long text areas
are long (2,000 to 131,072 characters) on about 1% of records, so typical rows stay around 500 bytes.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import re
from collections.abc import Callable
from operator import itemgetter

from . import generated
from .derived import compute
from .ids import POD, make_id, with_pod
from .polled import BODIES as POLLED_BODIES
from .schema import (
    HOSTILE_FIELD,
    INDUSTRIES,
    INVOICE_STATUS,
    REGIONS,
    SALUTATIONS,
    STAGES,
    WIDE_FIELDS,
    ObjectSpec,
)

EPOCH = dt.datetime(2024, 1, 1)
# Every generated timestamp is in the past: a record's SystemModstamp is its version, and a live change
# (stamped with the wall clock) must always be newer than the generated state it changes.
END = dt.datetime(2025, 12, 31, 23, 59, 59)
CREATED_SPAN = 547 * 86400  # CreatedDate falls in 2024-01-01 .. 2025-06-30
_SECOND = dt.timedelta(seconds=1)

ADJECTIVES = ("Blue", "Quantum", "Northern", "Silver", "Rapid", "Bright", "Global", "Urban", "Pacific", "Solid")
NOUNS = ("Systems", "Foods", "Logistics", "Partners", "Labs", "Energy", "Holdings", "Works", "Media", "Dynamics")
HAZARDS = (
    "Smith, Jones & Co",
    'The "Best" Widgets',
    "Café Société",
    "日本語の会社",
    "Rocket 🚀 Labs",
    "O'Brien; Sons",
    'Quote "at end"',
    "Tab\tSeparated",
    "Back\\slash",
)
FIRST = ("Ana", "Bo", "Chloé", "Dmitri", "Eve", "Fatima", "Günter", "Hiro", "Ines", "José", "Kenji", "Lea")
LAST = ("Müller", "Smith", "O'Neil", "Tanaka", "García", "Nguyen", "Dubois", "Kowalski", "Rossi", "Björk")
CITIES = ("Paris", "Zürich", "東京", "New York", "São Paulo", "Kraków", "Lagos", "Montréal")
COUNTRIES = ("France", "Switzerland", "Japan", "USA", "Brazil", "Poland", "Nigeria", "Canada")
STATES = ("IDF", "ZH", "Tokyo", "NY", "SP", "MA", "LA", "QC")
SUFFIXES = ("Jr.", "Sr.", "III", "PhD")
_LONG_UNIT = (
    "Lorem ipsum dolor sit amet, \"consectetur\" adipiscing elit.\nSed do eiusmod, tempor — été 日本語 🚀.\r\n"
)
LONG_BASE = _LONG_UNIT * (2 * 131072 // len(_LONG_UNIT) + 2)
# A unique field's generated value names its record (External_Id__c "EXT-00000042" is record 41), so the record
# holding a value is found without generating every row (unique.py).
BASE_POSITIONS = {("Invoice__c", "External_Id__c"): re.compile(r"EXT-(\d{8,})", re.IGNORECASE)}


def _multi(bits: int) -> str | None:
    chosen = [v for k, v in enumerate(REGIONS) if bits >> k & 1]
    return ";".join(chosen) if chosen else None


def _long_text(h: int, limit: int) -> str:
    length = 2000 + h % (limit - 2000 + 1)
    start = (h >> 20) % 1000
    return LONG_BASE[start:start + length]


def _hazard_text(h: int, i: int) -> str:
    kind = h % 4
    if kind == 0:
        return f"{HAZARDS[(h >> 2) % len(HAZARDS)]}\nsecond line for record {i}"
    if kind == 1:
        return f"CRLF line one\r\nline two, with comma {i}"
    return f"{ADJECTIVES[(h >> 2) % 10]} notes: plain text for record {i}."


def _audit(h: int) -> tuple[dt.datetime, dt.datetime, dt.datetime]:
    created = EPOCH + (h % CREATED_SPAN) * _SECOND
    remaining = int((END - created).total_seconds())
    modified = created + ((h >> 26) % (remaining + 1)) * _SECOND
    stamp = modified + min((h >> 56) % 120, int((END - modified).total_seconds())) * _SECOND
    return created, modified, stamp


def _activity(h: int, created: dt.datetime, modified: dt.datetime) -> tuple[dt.date | None, dt.datetime | None]:
    """LastActivityDate (a third of records have none) and LastViewedDate (a quarter never viewed), both after
    creation and in the past."""
    days = (END.date() - created.date()).days
    activity = None if h % 3 == 0 else created.date() + dt.timedelta(days=(h >> 2) % (days + 1))
    seconds = int((END - modified).total_seconds())
    viewed = None if (h >> 24) % 4 == 0 else modified + ((h >> 26) % (seconds + 1)) * _SECOND
    return activity, viewed


def _name(h: int, i: int) -> str:
    if h % 10 == 0:
        return f"{HAZARDS[(h >> 4) % len(HAZARDS)]} {i}"
    return f"{ADJECTIVES[(h >> 4) % 10]} {NOUNS[(h >> 8) % 10]} {i}"


def _account(h: int, i: int, n_accounts: int) -> dict:
    c = h % 8
    blank = (h >> 100) % 20 == 0  # ~5% of records leave their nullable fields empty
    d = {
        "Name": _name(h >> 10, i),
        "Type": ("Prospect", "Customer", "Partner")[(h >> 30) % 3] if not blank else None,
        "Industry": INDUSTRIES[(h >> 33) % len(INDUSTRIES)],
        "AccountNumber": f"AC-{(h >> 36) % 10**8:08d}" if not blank else None,
        "Phone": f"+1 415 {(h >> 64) % 10**7:07d}",
        "Website": f"https://www.example-{i}.com/path?q={(h >> 70) % 1000}",
        "AnnualRevenue": float((h >> 80) % 10**9) if not blank else None,
        "NumberOfEmployees": (h >> 110) % 100000 if not blank else None,
        "Description": None if blank or (h >> 130) % 3 == 0 else (
            _long_text(h >> 140, 32000) if (h >> 135) % 1000 == 0 else _hazard_text(h >> 140, i)),
        "BillingStreet": f"{(h >> 160) % 999 + 1} Rue de l'Église\nBuilding {(h >> 170) % 9}",
        "BillingCity": CITIES[c],
        "BillingState": STATES[c],
        "BillingPostalCode": f"{(h >> 180) % 100000:05d}",
        "BillingCountry": COUNTRIES[c],
        "BillingLatitude": None if blank else round(((h >> 200) % 180_000_000) / 1e6 - 90, 6),
        "BillingLongitude": None if blank else round(((h >> 230) % 360_000_000) / 1e6 - 180, 6),
        "Regions__c": _multi((h >> 260) % 16),
        "Active__c": bool((h >> 264) & 1),
        HOSTILE_FIELD: f"hostile {i}",
    }
    return d


def _place(h: int, prefix: str) -> dict:
    """The components of one of Contact's addresses (Mailing…, Other…)."""
    c = h % 8
    return {
        f"{prefix}Street": f"{(h >> 3) % 999 + 1} Rue de l'Église\nBuilding {(h >> 13) % 9}",
        f"{prefix}City": CITIES[c], f"{prefix}State": STATES[c], f"{prefix}PostalCode": f"{(h >> 17) % 100000:05d}",
        f"{prefix}Country": COUNTRIES[c],
        f"{prefix}Latitude": round(((h >> 34) % 180_000_000) / 1e6 - 90, 6),
        f"{prefix}Longitude": round(((h >> 62) % 360_000_000) / 1e6 - 180, 6),
    }


def _contact(h: int, i: int, n_accounts: int) -> dict:
    first = FIRST[(h >> 10) % len(FIRST)] if (h >> 14) % 25 else None
    last = LAST[(h >> 20) % len(LAST)] + ("" if h % 7 else ', "Jr."')
    acct = (h >> 30) % n_accounts if n_accounts and (h >> 60) % 20 else None
    notes = None
    if (h >> 70) % 100 == 0:
        notes = _long_text(h >> 80, 131072)
    elif (h >> 70) % 3:
        notes = _hazard_text(h >> 80, i)
    other = _place(h >> 300, "Other") if (h >> 296) % 5 == 0 else dict.fromkeys(_place(0, "Other"))
    return {
        "AccountId": make_id("001", acct + 1) if acct is not None else None,
        "FirstName": first,
        "LastName": last,
        "Salutation": SALUTATIONS[(h >> 200) % 8] if (h >> 200) % 8 < len(SALUTATIONS) else None,
        "MiddleName": FIRST[(h >> 204) % len(FIRST)][0] + "." if (h >> 208) % 6 == 0 else None,
        "Suffix": SUFFIXES[(h >> 212) % len(SUFFIXES)] if (h >> 216) % 10 == 0 else None,
        "Email": f"user{i}@example.com" if (h >> 120) % 10 else None,
        "Phone": f"+33 1 {(h >> 130) % 10**8:08d}",
        "Birthdate": dt.date(1950, 1, 1) + dt.timedelta(days=(h >> 160) % 20000) if (h >> 180) % 8 else None,
        "HasOptedOutOfEmail": bool((h >> 190) & 1),
        "Notes__c": notes,
        **_place(h >> 220, "Mailing"),
        **other,
    }


def _opportunity(h: int, i: int, n_accounts: int) -> dict:
    acct = (h >> 30) % n_accounts if n_accounts and (h >> 60) % 10 else None
    return {
        "Name": _name(h >> 10, i) + " deal",
        "AccountId": make_id("001", acct + 1) if acct is not None else None,
        "StageName": STAGES[(h >> 70) % len(STAGES)],
        "Amount": ((h >> 80) % 10**9) / 100 if (h >> 110) % 10 else None,
        "Probability": float((h >> 120) % 101),
        "CloseDate": dt.date(2024, 1, 1) + dt.timedelta(days=(h >> 130) % 1096),
        "TotalOpportunityQuantity": ((h >> 150) % 100000) / 100 if (h >> 170) % 4 else None,
        "NextStep": _hazard_text(h >> 180, i) if (h >> 200) % 3 == 0 else None,
        "Follow_Up_Time__c": dt.time((h >> 210) % 24, (h >> 220) % 4 * 15) if (h >> 230) % 5 else None,
    }


def _invoice(h: int, i: int, n_accounts: int) -> dict:
    acct = (h >> 30) % n_accounts if n_accounts else None
    paid = bool((h >> 60) & 1)
    body = None
    if (h >> 70) % 100 == 0:
        body = _long_text(h >> 80, 131072)
    elif (h >> 70) % 2:
        body = _hazard_text(h >> 80, i)
    return {
        "Name": f"INV-{i + 1:07d}",
        "External_Id__c": f"EXT-{i + 1:08d}",
        "Account__c": make_id("001", acct + 1) if acct is not None else None,
        "Amount__c": ((h >> 110) % 10**8) / 100,
        "Tax_Rate__c": ((h >> 140) % 2500) / 100 if (h >> 150) % 10 else None,
        "Quantity__c": ((h >> 160) % 10**6) / 1000,
        "Status__c": "Paid" if paid else INVOICE_STATUS[(h >> 180) % 2],
        "Tags__c": _multi((h >> 190) % 16),
        "Paid__c": paid,
        "Due_Date__c": dt.date(2024, 1, 1) + dt.timedelta(days=(h >> 200) % 1096),
        "Paid_At__c": EPOCH + ((h >> 212) % CREATED_SPAN) * _SECOND if paid else None,
        "Contact_Email__c": f"billing+{i}@example.org" if (h >> 240) % 6 else None,
        "Portal_Url__c": f"https://portal.example.org/invoices/{i + 1}",
        "Memo__c": _hazard_text(h >> 250, i) if (h >> 245) % 4 else None,
        "Body__c": body,
        # An External ID that is not Unique (schema.py): pairs of invoices share a code, one in ten has none.
        "Legacy_Code__c": None if (h >> 280) % 10 == 0 else f"LEG-{i // 2:06d}",
    }


def _wide(h: int, i: int, n_accounts: int) -> dict:
    d: dict = {"Name": f"WIDE-{i + 1:08d}"}
    for k, (name, kind) in enumerate(WIDE_FIELDS):
        x = ((h >> (k % 200)) ^ (k * 0x9E3779B97F4A7C15)) & 0xFFFFFFFFFFFF
        if kind == "string":
            d[name] = f"wide value {i} {k} {x:012x} {x * 7 % 10**15:015d}"
        elif kind == "double":
            d[name] = (x % 10**10) / 10**4
        elif kind == "int":
            d[name] = x % 10**9
        elif kind == "boolean":
            d[name] = bool(x & 1)
        else:
            d[name] = dt.date(2024, 1, 1) + dt.timedelta(days=x % 1096)
    return d


_BODIES: dict[str, Callable[[int, int, int], dict]] = {
    "Account": _account, "Contact": _contact, "Opportunity": _opportunity, "Invoice__c": _invoice,
    "Wide__c": _wide, **POLLED_BODIES,
}


class Generator:
    """Rows of one object. `row(i)` is deterministic and allocation-light; nothing is cached."""

    def __init__(self, spec: ObjectSpec, seed: int, n_accounts: int, pod: str = POD) -> None:
        """`pod`: the org's Id pod (ids.org_pod): the record's Id and its references carry it."""
        self.spec = spec
        self.n_accounts = n_accounts
        self.pod = pod
        # the bodies make references with the default pod; another org's are rebuilt with its own
        self._references = [] if pod == POD else [f.name for f in spec.stored_fields if f.type == "reference"]
        self._prefix = f"{seed}:{spec.name}:".encode()
        self._body = generated.body if generated.is_generated(spec.name) else _BODIES[spec.name]
        names = [f.name for f in spec.stored_fields]
        self._pick = itemgetter(*names)
        self._activity = "LastViewedDate" in names

    def has_base_positions(self, field: str) -> bool:
        return (self.spec.name, field) in BASE_POSITIONS

    def base_position(self, field: str, value: object) -> int | None:
        """The position whose generated `field` would be `value` (case-insensitive), if any; the caller checks
        the row (a value can look like a generated one and not be)."""
        match = BASE_POSITIONS[(self.spec.name, field)].fullmatch(value) if isinstance(value, str) else None
        return int(match.group(1)) - 1 if match else None

    def row(self, i: int) -> tuple:
        """Record i (0-based; its Id counter is i + 1) as a tuple in `stored_fields` order."""
        digest = hashlib.blake2b(self._prefix + i.to_bytes(8, "little"), digest_size=64).digest()
        h = int.from_bytes(digest, "little")
        d = self._body(h >> 12, i, self.n_accounts)
        compute(self.spec.name, d)
        created, modified, stamp = _audit(h >> 300)
        d["Id"] = make_id(self.spec.key_prefix, i + 1, self.pod)
        for name in self._references:
            if d.get(name) is not None:
                d[name] = with_pod(d[name], self.pod)
        d["IsDeleted"] = h % 50 == 0  # ~2% soft-deleted: visible to queryAll and ground truth only
        d["CreatedDate"] = created
        d["LastModifiedDate"] = modified
        d["SystemModstamp"] = stamp
        if self._activity:
            d["LastActivityDate"], d["LastViewedDate"] = _activity(h >> 400, created, modified)
        return self._pick(d)
