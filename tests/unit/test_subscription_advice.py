"""The start-up advice (app/service.py): more than MANY_SUBSCRIPTIONS streamed objects without `stream.channel`
log a warning that names the setting; a channel, or objects that only poll, do not."""

from __future__ import annotations

from replicator.app.service import MANY_SUBSCRIPTIONS, subscription_advice
from replicator.config import load_settings


def _settings(objects: dict, **stream):
    return load_settings(overrides={"salesforce": {"instance_url": "https://x.my.salesforce.com"},
                                    "postgres": {"url": "postgresql://localhost/x"},
                                    "objects": objects, "stream": stream})


def test_many_streamed_objects_without_a_channel_are_advised_to_use_one():
    many = {f"Obj{k:03d}__c": {} for k in range(MANY_SUBSCRIPTIONS + 1)}
    advice = subscription_advice(_settings(many))
    assert advice["objects"] == MANY_SUBSCRIPTIONS + 1 and 'channel = "/data/ChangeEvents"' in advice["action"]
    assert subscription_advice(_settings(many, channel="/data/ChangeEvents")) is None
    polled = {name: {"mode": "poll"} for name in list(many)[:2]}
    assert subscription_advice(_settings({**many, **polled})) is None  # 49 streamed
    assert subscription_advice(_settings({"Account": {}, "Contact": {}})) is None
