"""Routing a channel's batch (pipeline/channel.py): each event to its entity's object, events of objects the channel
does not serve skipped and counted, undecodable events as dead letters, keepalives left out; the channel's state
is every member's health."""

from __future__ import annotations

from types import SimpleNamespace

from replicator.config import load_settings
from replicator.model import Change, StreamEvent, Version
from replicator.observe.metrics import Metrics, ObjectHealth
from replicator.pipeline.channel import ChannelStream

CHANNEL = "/data/Sales__chn"


def _settings():
    return load_settings(overrides={"salesforce": {"instance_url": "https://x.my.salesforce.com"},
                                    "postgres": {"url": "postgresql://localhost/x"},
                                    "objects": {"Account": {}, "Contact": {}}, "stream": {"channel": CHANNEL}})


def _event(entity: str, n: int) -> StreamEvent:
    change = Change(entity, f"001{n:015d}", "UPDATE", Version(1_700_000_000_000 + n), "txn")
    return StreamEvent(CHANNEL, n.to_bytes(10, "big"), (change,), commit_timestamp=1_700_000_000_000 + n)


def _channel(metrics: Metrics) -> ChannelStream:
    members = {name: SimpleNamespace(health=ObjectHealth(name)) for name in ("Account", "Contact")}
    return ChannelStream(None, None, _settings(), members, metrics, detach=None)


def test_events_go_to_their_object_in_order_and_the_rest_is_counted():
    metrics = Metrics()
    channel = _channel(metrics)
    batch = [_event("Account", 1), _event("Contact", 2), _event("Opportunity", 3), _event("Account", 4),
             StreamEvent(CHANNEL, b"\x05" * 10, error="schema s1: not found", payload=b"\x01", schema_id="s1"),
             StreamEvent(CHANNEL, b"\x06" * 10, keepalive=True), _event("Opportunity", 7)]
    routed, dead = channel.route(batch)
    assert {k: [e.replay_id[-1] for e in v] for k, v in routed.items()} == {"Account": [1, 4], "Contact": [2]}
    assert channel.skipped == {"Opportunity": 2}
    assert metrics.channel_skipped.labels(channel=CHANNEL, object="Opportunity")._value.get() == 2
    assert [(d.object, d.source, d.payload["schema_id"]) for d in dead] == [(CHANNEL, "stream", "s1")]


def test_the_channel_state_is_every_members_health():
    channel = _channel(Metrics())
    channel._mark(idle=True, caught_up_at=123.0, connected=True)
    assert all((s.health.idle, s.health.caught_up_at, s.health.connected) == (True, 123.0, True)
               for s in channel.members.values())
