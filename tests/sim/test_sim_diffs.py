"""diffFields: large text values of UPDATE events sent as unified diffs ("Sending Data Differences for Fields of
Updated Records", docs/pubsub-cdc.md §6, diffFields contents), with the `diff_fields` knob on.

The patcher below is written from Salesforce's description of the format and of rebuilding a value (split the
old value into lines, apply the hunks, join with the old value's line break, compare the SHA-256), not from the
simulator's code, so the two cannot share a mistake."""

from __future__ import annotations

import hashlib
import json
import re

import pytest

from replicator.protocol import pubsub_api_pb2 as pb
from replicator.sim.faults import Faults

from .conftest import wait_for
from .pubsub_client import Org, decode_bitmap, events_of, running_org

HUNK = re.compile(r"@@ -(\d+),(\d+) \+(\d+),(\d+) @@")
INVOICES = "/data/Invoice__ChangeEvent"


@pytest.fixture(scope="module")
def org():
    with running_org(records=30, seed=9, faults={"diff_fields": "on"}) as o:
        yield o


@pytest.fixture(autouse=True)
def reset(org):
    yield
    org.faults(**{**Faults().to_dict(), "diff_fields": "on"})


def sha256(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def patch(old: str, diff: str) -> str:
    """Apply a diff value to the old value; asserts the format, the removed lines and the SHA-256."""
    lines = diff.split("\n")
    assert lines[0] == "--- " and lines[1].startswith("+++ ")
    sep = "\r\n" if "\r\n" in old else "\n"
    source, out, at, k = old.split(sep), [], 0, 2
    while k < len(lines):
        m = HUNK.fullmatch(lines[k])
        assert m, lines[k]
        a, b, c, d = map(int, m.groups())
        start = a - 1 if b else a  # an empty range names the line before it
        removed, added = lines[k + 1:k + 1 + b], lines[k + 1 + b:k + 1 + b + d]
        assert all(x.startswith("-") for x in removed) and all(x.startswith("+") for x in added)
        out.extend(source[at:start])
        assert c == (len(out) + 1 if d else len(out))
        assert source[start:start + b] == [x[1:] for x in removed]
        out.extend(x[1:] for x in added)
        at, k = start + b, k + 1 + b + d
    out.extend(source[at:])
    new = sep.join(out)
    assert sha256(new) == lines[1][4:]
    return new


def text(n: int, sep: str = "\n", width: int = 90) -> str:
    """n lines of `width` characters, with multi-byte UTF-8 in every line."""
    return sep.join(f"Line {k:03d}: renewal notes, Zürich été 日本語 🚀 ".ljust(width, ".") for k in range(n))


def edit_line(value: str, k: int, sep: str = "\n", old: str = "renewal", new: str = "upgrade") -> str:
    lines = value.split(sep)
    lines[k] = lines[k].replace(old, new, 1)
    return sep.join(lines)


def update(org: Org, obj: str, record: str, field: str, value: str) -> dict:
    result = org.changes([{"object": obj, "type": "UPDATE", "ids": [record], "fields": {field: value}}])
    event, = events_of(org, result["replay_ids"])
    return event


def test_small_edit_of_a_long_value_arrives_as_a_diff_that_rebuilds_it(org):
    account = org.first_ids("Account", 1)[0]
    old = text(20)
    new = edit_line(old, 5)
    assert len(old) >= 1000
    update(org, "Account", account, "Description", old)
    event = update(org, "Account", account, "Description", new)
    header, diff = event["ChangeEventHeader"], event["Description"]
    assert decode_bitmap(event["_schema"], header["diffFields"]) == {"Description"}
    assert decode_bitmap(event["_schema"], header["changedFields"]) == {"Description", "LastModifiedDate"}
    assert diff.startswith("--- \n+++ " + sha256(new) + "\n@@ -6,1 +6,1 @@\n-Line 005: renewal")
    assert diff.split("\n")[4].startswith("+Line 005: upgrade") and len(diff.split("\n")) == 5
    assert patch(old, diff) == new
    assert org.record("Account", account)["Description"] == new  # the org keeps the full value


def test_the_knob_off_sends_the_full_value(org):
    invoice = org.first_ids("Invoice__c", 1)[0]
    org.faults(diff_fields="off")
    old = text(20)
    update(org, "Invoice__c", invoice, "Body__c", old)
    event = update(org, "Invoice__c", invoice, "Body__c", edit_line(old, 3))
    assert event["Body__c"] == edit_line(old, 3) and event["ChangeEventHeader"]["diffFields"] == []


def _rule_cases() -> dict[str, tuple[str, str]]:
    long_line = "A long line, " + "x" * 967
    short = "\nshort one\nshort two\nshort three"
    return {
        # 1,000 characters before, 992 after: only the 1,000-character rule is broken
        "new value under 1,000 characters": (text(11), edit_line(text(11), 3, old="renewal notes", new="notes")),
        # 1,819 -> 2,820 characters: one line added, but the length grew by 55%
        "length changed by more than 50%": (text(20), text(20) + "\n" + "y" * 1000),
        # 3 of 8 lines changed: 6 changed lines of 16 (37.5%)
        "more than 25% of the lines changed": (text(8, width=150), edit_line(edit_line(edit_line(
            text(8, width=150), 1), 4), 6)),
        # one of four lines changed (25%, allowed), but that line is almost the whole value
        "diff longer than the new value": (long_line + short, long_line.replace("A long", "One long") + short),
    }


@pytest.mark.parametrize("rule", list(_rule_cases()))
def test_each_rule_sends_the_full_value(org, rule):
    old, new = _rule_cases()[rule]
    k = list(_rule_cases()).index(rule)
    record = org.first_ids("Account", 6)[1 + k]
    update(org, "Account", record, "Description", old)
    event = update(org, "Account", record, "Description", new)
    assert event["Description"] == new and event["ChangeEventHeader"]["diffFields"] == []
    assert "Description" in decode_bitmap(event["_schema"], event["ChangeEventHeader"]["changedFields"])


def test_rule_boundaries_still_send_a_diff(org):
    """Exactly 25% of the lines changed, and a length change of under 50%, are not over the limits."""
    record = org.first_ids("Account", 8)[6]
    old = text(8, width=150)
    new = edit_line(edit_line(old, 2), 5)  # 4 changed lines of 16
    update(org, "Account", record, "Description", old)
    event = update(org, "Account", record, "Description", new)
    assert event["ChangeEventHeader"]["diffFields"] and patch(old, event["Description"]) == new


def test_crlf_values_diff_by_line_and_hash_with_their_line_breaks(org):
    contact = org.first_ids("Contact", 1)[0]
    old = text(20, sep="\r\n")
    new = edit_line(old, 7, sep="\r\n")
    update(org, "Contact", contact, "Notes__c", old)
    event = update(org, "Contact", contact, "Notes__c", new)
    diff = event["Notes__c"]
    assert decode_bitmap(event["_schema"], event["ChangeEventHeader"]["diffFields"]) == {"Notes__c"}
    assert "\r" not in diff and diff.split("\n")[2] == "@@ -8,1 +8,1 @@"
    assert sha256(new) != sha256(new.replace("\r\n", "\n")) and diff.split("\n")[1] == "+++ " + sha256(new)
    assert patch(old, diff) == new


def test_mixed_line_breaks_are_sent_in_full(org):
    """A value with both \\n and \\r\\n cannot be rebuilt by joining its lines with one line break."""
    contact = org.first_ids("Contact", 2)[1]
    old = text(10) + "\r\n" + text(10)
    new = edit_line(old, 3)
    update(org, "Contact", contact, "Notes__c", old)
    event = update(org, "Contact", contact, "Notes__c", new)
    assert event["Notes__c"] == new and event["ChangeEventHeader"]["diffFields"] == []


def body_values(org: Org) -> dict[str, str | None]:
    return {r["Id"]: r["Body__c"] for r in map(json.loads, org.http.get("/__sim/objects/Invoice__c/records")
                                                 .content.splitlines())}


def test_traffic_edits_long_text_and_its_events_rebuild_the_org(org):
    """Replaying the traffic's events (full values and diffs) over the values before it gives the org's values."""
    before, stats = body_values(org), org.http.get("/__sim/stats").json()
    made = org.http.get("/__sim/traffic").json()["made"]
    r = org.http.put("/__sim/traffic", json={
        "running": True, "rate": 2000, "mix": {"UPDATE": 1}, "objects": ["Invoice__c"], "text_edit_rate": 1.0,
        "fields_per_update": 1, "records_per_event": 1, "transaction_size": 1, "changes": made + 150})
    assert r.status_code == 200, r.text
    wait_for(lambda: org.http.get("/__sim/traffic").json()["running"] is False)
    with org.subscribe(INVOICES, pb.CUSTOM, bytes.fromhex(stats["last_replay_id"]), num_requested=100) as sub:
        wait_for(lambda: sub.keep_flowing(100) and len(sub.events) >= 150)
        events = [(org.decode(e), org.schema(e.event.schema_id)) for e in sub.events]
    values, diffs = dict(before), 0
    for event, schema in events:
        header = event["ChangeEventHeader"]
        if "Body__c" not in decode_bitmap(schema, header["changedFields"]):
            continue
        record = header["recordIds"][0]
        if "Body__c" in decode_bitmap(schema, header["diffFields"]):
            values[record] = patch(values[record], event["Body__c"])
            diffs += 1
        else:
            values[record] = event["Body__c"]
    assert diffs >= 10
    assert values == body_values(org)


def test_knobs_are_flags_and_faults_with_on_off_values(org):
    from replicator.sim.__main__ import build_parser
    defaults = build_parser().parse_args([])
    assert (defaults.diff_fields, defaults.silent_changes) == ("on", "on")  # as a real org sends them
    args = build_parser().parse_args(["--diff-fields", "off", "--silent-changes", "off"])
    assert (args.diff_fields, args.silent_changes) == ("off", "off")
    with pytest.raises(SystemExit) as exc:
        build_parser().parse_args(["--diff-fields", "yes"])
    assert exc.value.code == 2
    assert org.http.put("/__sim/faults", json={"diff_fields": "yes"}).status_code == 400
    assert org.http.put("/__sim/faults", json={"silent_changes": "on"}).json()["silent_changes"] == "on"
