"""The traffic generator: a dedicated asyncio task that makes changes at a configured rate through cdc.py.

Configured with GET/PUT /__sim/traffic (PUT merges; `{"running": false}` pauses) and `replicator sim --rate R
--changes N`. A "change" is one record changed (an event naming 3 records is 3 changes), as in the stats.
Values come from the seeded generator (the row of a random position), so they look like the org's data and
include nulls (which become nulledFields). It never makes a duplicate value of a unique field: UPDATEs leave
unique fields alone and a CREATE's unique values are chosen free of every other record's (changes.py). A share of UPDATEs (`text_edit_rate`) edits one word of a long
multi-line text value instead (longtext.py), the change Salesforce sends as a diff when the `diff_fields` knob
is on; where a record has no such value to edit, it gets a fresh one. With the `silent_changes` knob on, one
transaction in five is followed by a change that publishes no event (LastViewedDate or LastActivityDate of a
record, cdc.ChangeCapture.touch). With `purge_rate`, a transaction is now and then followed by a PURGE of one
soft-deleted record (emptied from the Recycle Bin: removed for good, no event; changes.py). Generation runs in ticks of TICK seconds: each tick makes the
changes owed by `rate` since the run (re)started, so the long-run rate holds even when a tick runs late.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import random
import time
import uuid
from collections import deque
from dataclasses import asdict, dataclass, field, fields

from ..retry import wait_event
from .avro import ORDER_READY_TOPIC
from .cdc import TYPES, ChangeCapture, ChangeError, ChangeItem
from .diffs import MIN_LENGTH
from .longtext import edit_word, long_value

TICK = 0.01  # seconds between bursts: small enough for smooth low rates, large enough to batch at 10k/s
BURST = 0.05  # at most this many seconds' worth of changes between two yields to the event loop
RECENT = 256  # recently changed records remembered per object for key collisions
SILENT_RATE = 0.2  # with silent_changes on: probability a transaction is followed by a silent change
REEDIT = 0.8  # probability a text edit goes back to a record given a long value earlier (so diffs occur)
PURGE_TRIES = 20  # random positions tried for a soft-deleted record to purge (about 2% of records are)
ORIGIN = "com/salesforce/api/soap/67.0;client=replicator-sim-traffic"


def _default_mix() -> dict:
    return {"CREATE": 0.2, "UPDATE": 0.7, "DELETE": 0.07, "UNDELETE": 0.03}


@dataclass
class TrafficConfig:
    running: bool = False
    rate: float = 10.0  # changes per second
    mix: dict = field(default_factory=_default_mix)  # weights per change type
    objects: list = field(default_factory=lambda: ["Account", "Contact", "Opportunity", "Invoice__c"])
    transaction_size: int = 1  # each transaction has 1..transaction_size events
    records_per_event: int = 1  # UPDATE/DELETE/UNDELETE events name 1..records_per_event records
    fields_per_update: int = 3  # an UPDATE changes 1..fields_per_update fields
    collision_rate: float = 0.1  # probability an UPDATE hits a recently changed record
    changes: int | None = None  # stop (running=false) once the generator has made this many changes
    platform_event_rate: float = 0.0  # probability a transaction also publishes an Order_Ready__e event
    text_edit_rate: float = 0.05  # probability an UPDATE is a small edit of a long text value
    purge_rate: float = 0.0  # probability a transaction is followed by a PURGE of a soft-deleted record

    def merge(self, changes: dict, known_objects) -> None:
        """Merge a PUT body; raise ValueError naming the first bad key (nothing is applied then)."""
        staged = asdict(self)
        names = {f.name for f in fields(self)}
        for key, value in changes.items():
            if key not in names:
                raise ValueError(f"unknown traffic setting: {key}")
            staged[key] = value
        if not isinstance(staged["running"], bool):
            raise ValueError("running must be a boolean")
        probabilities = ("collision_rate", "platform_event_rate", "text_edit_rate", "purge_rate")
        for key in ("rate", *probabilities):
            if isinstance(staged[key], bool) or not isinstance(staged[key], int | float) or staged[key] < 0:
                raise ValueError(f"{key} must be a non-negative number")
        if max(staged[key] for key in probabilities) > 1:
            raise ValueError(", ".join(probabilities) + " are probabilities (0..1)")
        for key in ("transaction_size", "records_per_event", "fields_per_update"):
            if isinstance(staged[key], bool) or not isinstance(staged[key], int) or staged[key] < 1:
                raise ValueError(f"{key} must be a positive integer")
        if staged["changes"] is not None and (not isinstance(staged["changes"], int) or staged["changes"] < 0):
            raise ValueError("changes must be null or a non-negative integer")
        mix = staged["mix"]
        if not isinstance(mix, dict) or set(mix) - set(TYPES) or not any(mix.values()) or \
                any(not isinstance(v, int | float) or v < 0 for v in mix.values()):
            raise ValueError("mix must map CREATE/UPDATE/DELETE/UNDELETE to non-negative weights")
        if not isinstance(staged["objects"], list) or not staged["objects"] or \
                any(o not in known_objects for o in staged["objects"]):
            raise ValueError("objects must be a non-empty list of the org's objects")
        for key, value in staged.items():
            setattr(self, key, value)


class Traffic:
    def __init__(self, capture: ChangeCapture, seed: int) -> None:
        self.capture = capture
        self.config = TrafficConfig()
        self.made = 0  # changes made by the generator
        self.rng = random.Random(seed)
        self._wake = asyncio.Event()
        self._recent: dict[str, deque] = {}
        self._deleted: dict[str, list[int]] = {}
        self._settable: dict[str, list[str]] = {}
        self._long: dict[tuple[str, str], deque] = {}  # (object, field) -> positions given a long value
        self._task: asyncio.Task | None = None

    def to_dict(self) -> dict:
        return {**asdict(self.config), "made": self.made}

    def update(self, changes: dict) -> None:
        self.config.merge(changes, self.capture.org.stores)
        self._wake.set()

    def start(self) -> None:
        self._task = asyncio.ensure_future(self._run())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass

    async def _run(self) -> None:
        while True:
            if not self.config.running or self.config.rate <= 0:
                self._wake.clear()
                await self._wake.wait()
                continue
            started, made_at_start, rate = time.monotonic(), self.made, self.config.rate
            while self.config.running and self.config.rate == rate:
                owed = int((time.monotonic() - started) * rate) - (self.made - made_at_start)
                limit = self.config.changes
                if limit is not None:
                    owed = min(owed, limit - self.made)
                    if owed <= 0 and self.made >= limit:
                        self.config.running = False
                        break
                burst = min(owed, max(1, int(rate * BURST)))
                while burst > 0:
                    burst -= self.transaction(burst)
                if owed > max(1, int(rate * BURST)):
                    await asyncio.sleep(0)  # behind: go on at once, but let the servers run in between
                    continue
                self._wake.clear()
                await wait_event(self._wake, TICK)

    def transaction(self, budget: int) -> int:
        """Make one transaction of at most `budget` changes; returns the changes made (at least 1)."""
        cfg, rng = self.config, self.rng
        items: list[ChangeItem] = []
        used: set = set()
        made = 0
        for _ in range(rng.randint(1, cfg.transaction_size)):
            if made >= budget:
                break
            item = self._item(rng.choice(cfg.objects), min(budget - made, cfg.records_per_event), used)
            if item is not None:
                items.append(item)
                made += max(len(item.positions), item.count if item.type == "CREATE" else 0)
        if not items or self.capture.locked(items) is not None:  # a late commit holds a row lock: not now
            return 1
        try:
            self.capture.validate(items)
        except ChangeError:
            return 1
        result = self.capture.commit(items, ORIGIN)
        for item, ids in zip(items, result.ids, strict=True):
            name = item.store.spec.name
            recent = self._recent.setdefault(name, deque(maxlen=RECENT))
            positions = item.positions or [item.store.position(i) for i in ids]
            if item.type == "DELETE":
                self._deleted.setdefault(name, []).extend(positions)
            else:
                recent.extend(positions)
        if cfg.platform_event_rate and rng.random() < cfg.platform_event_rate:
            self._order_ready(result.commit_timestamp)
        if self.capture.faults.silent_changes == "on" and rng.random() < SILENT_RATE:
            self._touch()
        if cfg.purge_rate and rng.random() < cfg.purge_rate:
            self._purge()
        self.made += made
        return max(made, 1)

    def _order_ready(self, now_ms: int) -> None:
        platform, rng = self.capture.platform, self.rng
        payload = platform.encode({"CreatedDate": now_ms, "CreatedById": self.capture.user_id,
                                   "Order_Id__c": f"ORD-{rng.randrange(10**8):08d}",
                                   "Amount__c": round(rng.uniform(1, 10_000), 2), "Ready_At__c": now_ms})
        self.capture.bus.publish(ORDER_READY_TOPIC, False, platform.id, payload, str(uuid.UUID(int=rng.getrandbits(128))))
        self.capture.bus.notify()

    def _item(self, name: str, records: int, used: set) -> ChangeItem | None:
        rng, store = self.rng, self.capture.org.stores[name]
        mix = self.config.mix
        kind = rng.choices(list(mix), weights=list(mix.values()))[0]
        if kind == "CREATE" or store.count() == 0:
            return ChangeItem(store, "CREATE", values={}, generated=True)
        if kind == "UNDELETE":
            deleted = self._deleted.get(name)
            while deleted:
                pos = deleted.pop(rng.randrange(len(deleted)))
                if (name, pos) not in used and store.exists(pos) and store.row(pos)[store.deleted_pos]:
                    used.add((name, pos))
                    return ChangeItem(store, "UNDELETE", positions=[pos])
            kind = "UPDATE"
        if kind == "UPDATE" and self.config.text_edit_rate and rng.random() < self.config.text_edit_rate:
            edit = self._text_edit(name, used)
            if edit is not None:
                return edit
        positions = []
        recent = self._recent.get(name)
        for _ in range(rng.randint(1, records) * 2):
            if len(positions) >= records:
                break
            if recent and kind == "UPDATE" and rng.random() < self.config.collision_rate:
                pos = recent[rng.randrange(len(recent))]
            else:
                pos = rng.randrange(store.count())
            if (name, pos) in used or not store.live(pos):
                continue
            used.add((name, pos))
            positions.append(pos)
        if not positions:
            return None
        if kind == "DELETE":
            return ChangeItem(store, "DELETE", positions=positions)
        settable = self._settable.get(name)
        if settable is None or len(settable) == 0:
            settable = self._settable[name] = [
                f.name for f in store.spec.stored_fields
                # unique fields (External_Id__c) are left alone: Salesforce rejects a duplicate value; an external
                # id that is not unique (Legacy_Code__c) changes like any field, duplicates and all
                if f.writable and not f.unique
                and f.name in store.names]
        source = store.generator.row(rng.randrange(1 << 30))
        values, nulled = {}, []
        for fname in rng.sample(settable, min(len(settable), rng.randint(1, self.config.fields_per_update))):
            col = store.names.index(fname)
            value = source[col] if col < len(source) else None
            if value is None:
                nulled.append(fname)
            else:
                values[fname] = value
        return ChangeItem(store, "UPDATE", positions=positions, values=values, nulled=nulled)

    def _text_edit(self, name: str, used: set) -> ChangeItem | None:
        """One word changed in a long text value of one record; a fresh long value (lines ending in \\n or
        \\r\\n) where the record has none to edit. None when the object has no long text field."""
        rng, store = self.rng, self.capture.org.stores[name]
        fields = [f.name for f in store.spec.stored_fields if f.type == "textarea" and f.length >= MIN_LENGTH
                  and not f.compound_field_name and f.name in store.names]
        if not fields or store.count() == 0:
            return None
        field = rng.choice(fields)
        pool = self._long.setdefault((name, field), deque(maxlen=RECENT))
        pos = pool[rng.randrange(len(pool))] if pool and rng.random() < REEDIT else rng.randrange(store.count())
        if (name, pos) in used or not store.live(pos):
            return None
        row = store.row(pos)
        used.add((name, pos))
        pool.append(pos)
        value = edit_word(rng, row[store.names.index(field)]) or long_value(rng, rng.choice(("\n", "\r\n")))
        return ChangeItem(store, "UPDATE", positions=[pos], values={field: value})

    def _touch(self) -> None:
        """A record viewed (LastViewedDate = now) or given an activity (LastActivityDate = today): no event."""
        rng, org = self.rng, self.capture.org
        names = [n for n in self.config.objects if "LastViewedDate" in org.stores[n].names]
        if not names:
            return
        store = org.stores[rng.choice(names)]
        pos = rng.randrange(store.count()) if store.count() else None
        if pos is None or not store.live(pos):
            return
        now = dt.datetime.now(dt.UTC).replace(tzinfo=None)
        now = now.replace(microsecond=0 if self.capture.faults.whole_seconds else now.microsecond // 1000 * 1000)
        values = {"LastViewedDate": now} if rng.random() < 0.7 else {"LastActivityDate": now.date()}
        self.capture.touch(store, [pos], values)

    def _purge(self) -> None:
        """One soft-deleted record emptied from the Recycle Bin: removed for good, no event (changes.py). Records
        the generator deleted go first; otherwise a few random positions are tried."""
        rng, org = self.rng, self.capture.org
        name = rng.choice(self.config.objects)
        store, deleted = org.stores[name], self._deleted.get(name, [])
        candidates = [deleted.pop(rng.randrange(len(deleted)))] if deleted else []
        candidates += [rng.randrange(store.count()) for _ in range(PURGE_TRIES)] if store.count() else []
        for pos in candidates:
            if store.exists(pos) and store.row(pos)[store.deleted_pos]:
                item = ChangeItem(store, "PURGE", positions=[pos])
                if self.capture.locked([item]) is not None:
                    continue
                self.capture.validate([item])
                self.capture.commit([item], ORIGIN)
                return
