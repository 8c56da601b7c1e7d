"""Long multi-line text for the traffic generator: fresh values, and small edits of existing ones.

A small edit (one word of one line) of a value of 1,000 characters or more is what Salesforce sends as a diff
(docs/pubsub-cdc.md §6, diffFields contents; the rules are in diffs.py), so live traffic carries
diffs when the `diff_fields` knob is on. Words include non-ASCII text, so the SHA-256 of a diff covers
multi-byte UTF-8.
"""

from __future__ import annotations

import random

from .diffs import MIN_LENGTH, line_break

WORDS = ("account", "renewal", "pipeline", "quarterly", "forecast", "invoice", "customer", "partner", "signed",
         "pending", "review", "contract", "Zürich", "été", "naïve", "日本語", "Kraków", "🚀", "support", "upgrade",
         "meeting", "follow-up", "budget", "approved", "shipping", "delayed", "\"quoted\"", "comma,", "São Paulo")


def _line(rng: random.Random) -> str:
    words = [rng.choice(WORDS) for _ in range(rng.randint(6, 14))]
    return " ".join(words).capitalize() + "."


def long_value(rng: random.Random, sep: str) -> str:
    """A fresh multi-line value of 1,200 to 4,000 characters whose lines end with `sep` (`\\n` or `\\r\\n`)."""
    target = rng.randint(MIN_LENGTH + 200, 4000)
    lines: list[str] = []
    length = 0
    while length < target:
        lines.append(_line(rng))
        length += len(lines[-1]) + len(sep)
    return sep.join(lines)


def edit_word(rng: random.Random, value: object) -> str | None:
    """`value` with one word of one line replaced by another, or None when `value` is not a long multi-line text
    with one kind of line break (the only kind a diff can describe)."""
    if not isinstance(value, str) or len(value) < MIN_LENGTH:
        return None
    sep = line_break(value)
    lines = value.split(sep) if sep else []
    candidates = [k for k, line in enumerate(lines) if line.strip()]
    if len(lines) < 8 or not candidates:
        return None
    k = rng.choice(candidates)
    words = lines[k].split(" ")
    w = rng.randrange(len(words))
    words[w] = rng.choice([x for x in WORDS if x != words[w]])
    lines[k] = " ".join(words)
    return sep.join(lines)
