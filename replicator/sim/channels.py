"""Multi-entity channels: `/data/ChangeEvents` and custom channels `/data/<Name>__chn` with members.

Salesforce facts (docs/pubsub-cdc.md §5, "Multi-entity channels"):
- `/data/ChangeEvents` carries the change events of every entity selected for Change Data Capture; a custom
  channel `/data/<Name>__chn` carries those of its members (PlatformEventChannelMember records), and adding a
  member selects the entity ("Select Objects for Change Notifications", Change Data Capture Developer Guide,
  https://developer.salesforce.com/docs/platform/change-data-capture/guide/cdc-object-selections-metadata.md).
- Replay ids are opaque positions of the stream they were read from ("Event Message Durability", Pub/Sub API
  Developer Guide, https://developer.salesforce.com/docs/platform/pub-sub-api/guide/event-message-durability.html):
  each custom channel here numbers its events itself, so a position on one channel means nothing on another.
- Events on one channel carry the schema ids of their own entities (each event's `schema_id`); TopicInfo of a
  channel names no schema (this simulator answers `schema_id` "", a choice: the documentation says nothing).

Each custom channel here is an EventBus of its own (events.py: its own counter, retention and keepalive
positions), fed with a copy of every change event of its members the org publishes, in publish order, so a
channel delivers events in commit order like the entity topics. The payload bytes are shared, not copied.
`/data/ChangeEvents` is still served from the org's bus (events.py), with the entity topics' replay ids: the
simulator's tests and tools match events across the two by replay id. A client must not rely on that (it
cannot on Salesforce); replicator keeps one checkpoint per channel and never mixes them.

Admin: `GET /__sim/channels` -> {"/data/Sales__chn": ["Account", "Contact"], ...};
`PUT /__sim/channels {"name": "Sales", "members": ["Account", "Contact"]}` creates or replaces a custom channel
(`name` with or without `__chn`; 400 for an unknown object, nothing changed). `replicator sim --channel
Sales=Account,Contact` does the same at start.
"""

from __future__ import annotations

import re

import orjson
from aiohttp import web

from .events import ALL_CHANGE_EVENTS, Event, EventBus
from .state import STATE

# Salesforce allows 100 custom channels per org ("Change Data Capture Allocations",
# https://developer.salesforce.com/docs/atlas.en-us.change_data_capture.meta/change_data_capture/cdc_allocations.htm;
# docs/pubsub-cdc.md §9).
MAX_CUSTOM_CHANNELS = 100
_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_]*")


class ChannelError(ValueError):
    """A channel definition the org refuses (unknown member, bad name, too many channels)."""


def channel_topic(name: str) -> str:
    """`Sales` or `Sales__chn` or `/data/Sales__chn` -> `/data/Sales__chn`."""
    bare = name.removeprefix("/data/").removesuffix("__chn")
    if not _NAME.fullmatch(bare) or "__" in bare:
        raise ChannelError(f"bad channel name: {name!r} (letters, digits and single underscores)")
    return f"/data/{bare}__chn"


class Channels:
    """The org's multi-entity channels, each with its own EventBus, fed by the org bus (EventBus.followers)."""

    def __init__(self, capture, bus: EventBus) -> None:
        self.capture, self.bus = capture, bus
        self.buses: dict[str, EventBus] = {}  # custom channel -> its bus
        self.members: dict[str, set[str]] = {}
        self._entity_of = {topic: name for topic, name in capture.topics.items() if name}
        bus.followers.append(self)

    def _new_bus(self) -> EventBus:
        return EventBus(self.bus._retention_seconds, self.bus._retention_events)

    def define(self, name: str, members: list[str]) -> str:
        """Create or replace a custom channel; its members are selected for Change Data Capture."""
        topic = channel_topic(name)
        names = []
        for member in members:
            store = self.capture.org.lookup(str(member).removesuffix("ChangeEvent").removesuffix("__"))
            store = store or self.capture.org.lookup(str(member))
            if store is None:
                raise ChannelError(f"unknown object: {member!r}")
            names.append(store.spec.name)
        if not names:
            raise ChannelError("a channel needs at least one member")
        if topic not in self.buses and len(self.buses) >= MAX_CUSTOM_CHANNELS:
            raise ChannelError(f"at most {MAX_CUSTOM_CHANNELS} custom channels")
        self.capture.selected |= set(names)
        self.members[topic] = set(names)
        self.buses.setdefault(topic, self._new_bus())
        return topic

    def bus_for(self, topic: str) -> EventBus | None:
        return self.buses.get(topic)

    def describe(self) -> dict[str, list[str]]:
        """Every multi-entity channel and its members (`/data/ChangeEvents`: the entity selection)."""
        return {ALL_CHANGE_EVENTS: self.capture.selection(), **{t: sorted(m) for t, m in self.members.items()}}

    # -- EventBus follower ------------------------------------------------------------------------------------
    def published(self, event: Event) -> None:
        if not event.change:
            return
        entity = self._entity_of.get(event.topic)
        for topic, members in self.members.items():
            if entity in members:
                self.buses[topic].publish(topic, False, event.schema_id, event.payload)

    def notified(self) -> None:
        for bus in self.buses.values():
            bus.notify()

    def purged(self) -> None:
        for bus in self.buses.values():
            bus.purge_now()


async def get_channels(request: web.Request) -> web.Response:
    return web.json_response(request.app[STATE].channels.describe())


async def put_channel(request: web.Request) -> web.Response:
    channels = request.app[STATE].channels
    try:
        body = orjson.loads(await request.read())
        if not isinstance(body, dict) or not isinstance(body.get("members"), list):
            raise ChannelError('body must be {"name": "Sales", "members": ["Account", ...]}')
        topic = channels.define(str(body.get("name", "")), body["members"])
    except (orjson.JSONDecodeError, ChannelError) as exc:
        return web.json_response({"error": str(exc)}, status=400)
    return web.json_response({"topic": topic, "members": channels.describe()[topic]})


def add_routes(app: web.Application) -> None:
    app.router.add_get("/__sim/channels", get_channels)
    app.router.add_put("/__sim/channels", put_channel)
