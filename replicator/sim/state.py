"""The simulator's shared state, handed to every HTTP handler through the aiohttp app."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from .faults import Faults
from .limits import Allocations
from .oauth import TokenStore
from .store import OrgStore

# API versions served (docs/bulk-rest-oauth.md §3.1; the current docs run to v67.0, Summer '26).
# Bulk 2.0 query needs v47.0 or later (docs/bulk-rest-oauth.md §1.1).
RELEASES = {
    47: "Winter '20", 48: "Spring '20", 49: "Summer '20", 50: "Winter '21", 51: "Spring '21", 52: "Summer '21",
    53: "Winter '22", 54: "Spring '22", 55: "Summer '22", 56: "Winter '23", 57: "Spring '23", 58: "Summer '23",
    59: "Winter '24", 60: "Spring '24", 61: "Summer '24", 62: "Winter '25", 63: "Spring '25", 64: "Summer '25",
    65: "Winter '26", 66: "Spring '26", 67: "Summer '26",
}
LATEST_VERSION = "67.0"
MIN_VERSION = min(RELEASES)


@dataclass
class SimState:
    org: OrgStore
    faults: Faults
    tokens: TokenStore
    org_id: str
    user_id: str
    instance_url: str = ""
    page_size: int = 50_000
    gzip_level: int = 1
    state_dir: str = ""
    jobs_created: int = 0
    extras: dict = field(default_factory=dict)
    capture: Any = None  # cdc.ChangeCapture
    traffic: Any = None  # traffic.Traffic
    pubsub: Any = None  # pubsub.PubSubService
    limits: Allocations = field(default_factory=Allocations)  # daily allocations and their use (limits.py)
    channels: Any = None  # channels.Channels

    def limit_info(self) -> str:
        """`Sforce-Limit-Info` value (docs/bulk-rest-oauth.md §2.1)."""
        return f"api-usage={self.limits.api_used}/{self.limits.api_allocation}"


STATE: web.AppKey[SimState] = web.AppKey("sim_state", SimState)


def parse_version(text: str) -> float | None:
    """'v58.0' -> 58.0 when that version is served, else None."""
    if not text.startswith("v"):
        return None
    try:
        value = float(text[1:])
    except ValueError:
        return None
    return value if value.is_integer() and int(value) in RELEASES else None
