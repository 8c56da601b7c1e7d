"""Applying Salesforce's diffFields values: unified diffs per line plus the SHA-256 of the new value."""

from __future__ import annotations

import difflib
import hashlib

from replicator.salesforce.diffs import TextDiff, apply_diff, apply_diffs


def sf_diff(old: str, new: str, newline: str = "\n") -> str:
    """A diff as Salesforce sends it: no file names, the new value's hash, hunks without context lines."""
    hunks = list(difflib.unified_diff(old.split(newline), new.split(newline), n=0, lineterm=""))[2:]
    return "--- \n+++ " + hashlib.sha256(new.encode()).hexdigest() + "\n" + "\n".join(hunks)


LONG = "\n".join(f"Line {i}: business applications are moving to the cloud, paragraph {i}." for i in range(40))


def test_the_documented_example_shape_applies():
    new = LONG.replace("Line 1: business applications", "Line 1: business apps")
    diff = sf_diff(LONG, new)
    assert diff.splitlines()[2] == "@@ -2 +2 @@"  # one line replaced, no context (as in Salesforce's example)
    assert apply_diff(LONG, diff) == new


def test_insertions_deletions_and_several_hunks():
    lines = LONG.split("\n")
    new = "\n".join(["first", *lines[:10], "inserted", *lines[11:30], *lines[31:], "last"])
    assert apply_diff(LONG, sf_diff(LONG, new)) == new


def test_crlf_values_keep_their_line_breaks():
    old = LONG.replace("\n", "\r\n")
    new = old.replace("paragraph 7.", "paragraph seven.")
    assert apply_diff(old, sf_diff(old, new, "\r\n")) == new


def test_a_diff_made_from_another_value_or_with_a_wrong_hash_is_refused():
    new = LONG.replace("Line 3:", "Line three:")
    diff = sf_diff(LONG, new)
    assert apply_diff(LONG.replace("Line 3:", "Line 3 (edited):"), diff) is None  # the stored value moved on
    wrong = diff.replace(hashlib.sha256(new.encode()).hexdigest(), "0" * 64)
    assert apply_diff(LONG, wrong) is None
    assert apply_diff(LONG, "not a diff") is None


def test_a_batch_of_diffs_applies_in_order():
    second = LONG.replace("Line 5:", "Line five:")
    third = second.replace("Line 9:", "Line nine:")
    chain = TextDiff((sf_diff(LONG, second),)).then(TextDiff((sf_diff(second, third),)))
    assert apply_diffs(LONG, chain) == third
    assert apply_diffs(second, chain) is None
