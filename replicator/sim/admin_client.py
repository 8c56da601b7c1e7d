"""Calling a running simulator's admin API (`/__sim/…`) from tests, benchmarks and the demo."""

from __future__ import annotations

import ssl
from typing import Any

import httpx


def _verify(info: dict) -> ssl.SSLContext | bool:
    return ssl.create_default_context(cafile=info["ca_file"]) if info.get("ca_file") else True


async def sim_admin(info: dict, method: str, path: str, body: Any = None, timeout: float = 60) -> httpx.Response:
    """One admin call; raises on an error status. `info` is the simulator's ready line."""
    async with httpx.AsyncClient(verify=_verify(info), timeout=timeout) as http:
        response = await http.request(method, info["instance_url"] + path, json=body)
        response.raise_for_status()
        return response
