"""Salesforce-shaped record ids for the simulator.

A 15-character id is: 3-character key prefix, 2-character pod ("instance") code, one reserved character and a
9-character base-62 counter. The 18-character form appends the case-insensitivity checksum: each 5-character
chunk of the 15-character id gives one suffix character whose bits mark which of the chunk's characters are
upper-case letters. Base-62 digits are ordered 0-9, A-Z, a-z, which is also ASCII order, so sorting ids as
strings sorts them by counter: "Id order" in this package is counter order.

Several simulated orgs (`replicator sim --orgs N`) differ in the pod: org 1 has POD ("5g"), org k the base-62
pair k - 1 after it ("5h" for org 2, "5i" for org 3, ...; `org_pod`), so no two orgs ever issue the same Id, and
within an org every Id has the same pod (Id order stays counter order).
"""

from __future__ import annotations

BASE62 = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
_SUFFIX_ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZ012345"
_DIGIT = {c: i for i, c in enumerate(BASE62)}
POD = "5g"  # org 1's pod/instance characters; any two base-62 characters are valid
COUNTER_WIDTH = 9
_POD_BASE = 5 * 62 + 42  # POD as a base-62 number
MAX_ORGS = 62 * 62 - _POD_BASE  # pods "5g" .. "zz"


def to_base62(n: int, width: int) -> str:
    """Fixed-width base-62 encoding of a non-negative integer."""
    chars = []
    for _ in range(width):
        n, r = divmod(n, 62)
        chars.append(BASE62[r])
    if n:
        raise ValueError("counter overflow")
    return "".join(reversed(chars))


def checksum_suffix(id15: str) -> str:
    """The 3-character suffix that turns a 15-character id into its 18-character form."""
    out = []
    for chunk in range(3):
        bits = 0
        for j in range(5):
            c = id15[chunk * 5 + j]
            if "A" <= c <= "Z":
                bits |= 1 << j
        out.append(_SUFFIX_ALPHABET[bits])
    return "".join(out)


def org_pod(org: int) -> str:
    """The pod of simulated org `org` (1-based): POD for org 1, the next base-62 pairs for the others."""
    if not 1 <= org <= MAX_ORGS:
        raise ValueError(f"org must be within 1..{MAX_ORGS}")
    return POD if org == 1 else to_base62(_POD_BASE + org - 1, 2)  # POD itself: make_id's fast path


def with_pod(value: str, pod: str) -> str:
    """The 18-character Id `value` (15 or 18 characters) with its pod replaced by `pod`."""
    id15 = value[:3] + pod + value[5:15]
    return id15 + checksum_suffix(id15)


_PAIRS = [a + b for a in BASE62 for b in BASE62]
_UP = {c: int("A" <= c <= "Z") for c in BASE62}
_HEAD_SUFFIX: dict[str, str] = {}


def make_id(prefix: str, counter: int, pod: str = POD) -> str:
    """The 18-character id with the given key prefix, counter (1 <= counter < 62**9) and pod (org_pod).

    Equivalent to `id15 + checksum_suffix(id15)`, unrolled because bulk rendering calls it per record.
    """
    rest, p4 = divmod(counter, 3844)
    rest, p3 = divmod(rest, 3844)
    rest, p2 = divmod(rest, 3844)
    d0, p1 = divmod(rest, 3844)
    a, b, c, e = _PAIRS[p1], _PAIRS[p2], _PAIRS[p3], _PAIRS[p4]
    key = prefix if pod is POD else prefix + pod
    head = _HEAD_SUFFIX.get(key)
    if head is None:
        head = _HEAD_SUFFIX[key] = checksum_suffix(prefix + pod + "0" * 10)[0]
    first = BASE62[d0]
    up = _UP
    mid = (up[first] << 1) | (up[a[0]] << 2) | (up[a[1]] << 3) | (up[b[0]] << 4)
    tail = up[b[1]] | (up[c[0]] << 1) | (up[c[1]] << 2) | (up[e[0]] << 3) | (up[e[1]] << 4)
    return (prefix + pod + "0" + first + a + b + c + e
            + head + _SUFFIX_ALPHABET[mid] + _SUFFIX_ALPHABET[tail])


def to_id18(value: str) -> str:
    """Normalise a 15- or 18-character id to 18 characters (the 15-character part is case-sensitive)."""
    if len(value) == 15:
        return value + checksum_suffix(value)
    if len(value) == 18:
        return value[:15] + checksum_suffix(value[:15])
    raise ValueError(f"invalid id: {value!r}")


def parse_counter(value: str, prefix: str, pod: str = POD) -> int | None:
    """The counter of an id minted by make_id with this prefix and pod, or None when it is not one of ours."""
    if len(value) not in (15, 18) or not value.startswith(prefix):
        return None
    if value[3:6] != pod + "0":
        return None
    n = 0
    for c in value[6:15]:
        d = _DIGIT.get(c)
        if d is None:
            return None
        n = n * 62 + d
    if len(value) == 18 and value[15:].upper() != checksum_suffix(value[:15]):
        return None
    return n
