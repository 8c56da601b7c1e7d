"""`replicator status` gives each object on a channel figures of its own (issue 21 defect 5): events applied,
its newest change's commit time and its lag, as an object on its own subscription has from its topic's checkpoint.
Before, a channel member's row showed no events applied and no lag (the figures were the channel's checkpoint's,
which no object's row reads)."""

from __future__ import annotations

import orjson
import pytest

from replicator.app.commands import status_command
from replicator.sim.server import SimulatorThread

from .helpers import ground_truth, pg_value, running_service, settings_for, sim_admin, wait_for

pytestmark = pytest.mark.slow  # the service

CHANNEL = "/data/ChangeEvents"


async def test_status_shows_each_channel_member_its_own_events_and_lag(pg_url, capsys, monkeypatch):
    with SimulatorThread(records=30, seed=21, keepalive_seconds=0.2) as thread:
        sim = thread.info
        settings = settings_for(sim, pg_url, "stchannel",
                                salesforce={"pubsub_endpoint": sim["pubsub_endpoint"]},
                                stream={"batch_max_wait_s": 0.05, "channel": CHANNEL},
                                service={"control_poll_s": 0.2}, objects={"Account": {}, "Contact": {}})
        monkeypatch.setenv("REPLICATOR_POSTGRES__URL", pg_url)
        async with running_service(settings):  # both on the channel
            ids = [r["Id"] for r in await ground_truth(sim, "Account") if not r["IsDeleted"]][:3]
            for k, record in enumerate(ids):  # three transactions: three events, on Account only
                r = await sim_admin(sim, "POST", "/__sim/changes",
                                    [{"object": "Account", "type": "UPDATE", "ids": [record],
                                      "fields": {"Phone": f"st {k}"}}])
                assert r.status_code == 200, r.text
            await wait_for(lambda: pg_value(pg_url, "SELECT count(*) = 3 FROM stchannel.account"
                                                    " WHERE phone LIKE 'st %'"), timeout=30)
            capsys.readouterr()
            assert await status_command(settings, as_json=True) == 0
            # the service beside logs to stdout too (structlog unconfigured in tests): status's JSON array only,
            # printed at once from its "[" line to its "]" line
            lines = capsys.readouterr().out.splitlines()
            start = lines.index("[")
            rows = {r["object"]: r for r in orjson.loads("\n".join(lines[start:lines.index("]", start) + 1]))}
    account, contact = rows["Account"], rows["Contact"]
    assert account["events_applied"] == 3, account
    assert account["lag_s"] is not None and account["lag_s"] >= 0, account
    assert account["last_event_committed_at"] is not None, account
    assert account["replay_id"] is not None and account["replay_id"] == contact["replay_id"]  # the channel's position
    assert contact["events_applied"] == 0, contact  # no Contact event: the channel's count is not every member's
