"""`python -m replicator.sim [--records N] [--seed S] [--port P] [--no-tls] [--rate R] [--changes N] [--orgs N]
[fault flags]`

Runs the simulator in the foreground. Once it is ready, prints ONE JSON line on stdout (the ready info:
instance_url, token_url, client_id, client_secret, refresh_token, org_id, tenant_id, pubsub_endpoint, ca_file,
api_version, ...) and serves until SIGINT/SIGTERM. `--orgs N` (N > 1) serves N orgs, each on its own ports with its
own org id, Ids and credentials (server.org_options), and prints N ready lines, in org order once all serve, each
with an `org` field ("org1", "org2", ...) and an `orgs` field (N: how many lines to read). `--rate R` starts the traffic generator at R changes/s;
`--changes N` stops it after N changes (the simulator keeps serving). Exit codes: 0 after a signal, 2 on bad usage, 1 on a startup failure.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys

import orjson

from .faults import KNOB_CHOICES, KNOB_HELP, Faults
from .ids import MAX_ORGS
from .limits import DEFAULT_API_ALLOCATION, DEFAULT_EVENT_ALLOCATION
from .server import DEMO_CLIENT_ID, DEMO_CLIENT_SECRET, Simulator, org_options, start_all, stop_all


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="replicator sim",
        description="Run the local Salesforce org simulator in the foreground: OAuth 2.0, REST, Bulk API 2.0 "
                    "query and the Pub/Sub API (gRPC) with change data capture. Once it serves, it prints one "
                    "JSON line (instance_url, token_url, client_id, client_secret, pubsub_endpoint, ca_file, "
                    "...) and runs until SIGINT or SIGTERM.",
        epilog="Every fault knob below can also be changed while it runs: PUT /__sim/faults with a JSON object "
               "of knob names written with underscores, e.g. {\"duplicate_rate\": 0.05}.")
    p.add_argument("--orgs", type=int, default=1, metavar="N",
                   help="serve N orgs, each on its own ports with its own org id, record Ids and credentials: org 1 "
                        "has the given client id and secret, org k their value suffixed -org<k>, seed + k - 1 and, "
                        "with --port P, port P + k - 1; one ready line per org, with an \"org\" field (org1, org2, "
                        f"...); every other option applies to each org (default 1, at most {MAX_ORGS})")
    p.add_argument("--records", type=int, default=1000, help="records generated per object (default 1000)")
    p.add_argument("--seed", type=int, default=42, help="generator seed (default 42)")
    p.add_argument("--host", default="127.0.0.1", help="bind address (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=0, help="port; 0 picks a free one (default)")
    p.add_argument("--no-tls", action="store_true", help="serve plain HTTP instead of HTTPS")
    p.add_argument("--client-id", default=DEMO_CLIENT_ID, help="the connected app's consumer key (OAuth client_id)")
    p.add_argument("--client-secret", default=DEMO_CLIENT_SECRET, help="the connected app's consumer secret")
    p.add_argument("--username", default="integration@replicator.sim", help="JWT bearer `sub` user")
    p.add_argument("--jwt-public-key", help="PEM file of the public key that verifies JWT bearer assertions")
    p.add_argument("--page-size", type=int, default=50_000, help="Bulk results page size when maxRecords is absent")
    p.add_argument("--gzip-level", type=int, default=1, choices=range(1, 10), help="gzip level for results")
    p.add_argument("--state-dir", help="directory for the certificate and job results (default: a temp dir)")
    p.add_argument("--wide-object", action="store_true",
                   help="add Wide__c: 200 fields, about 4 KB a row (benchmarks of wide rows)")
    p.add_argument("--hostile-field", action="store_true",
                   help="add the custom field Bad\"Name;DROP__c to Account (tests identifier quoting)")
    p.add_argument("--rate", type=float, default=0.0,
                   help="traffic: changes per second; 0 (default) starts with traffic paused")
    p.add_argument("--changes", type=int, default=None, help="traffic: stop after this many changes")
    p.add_argument("--transaction-size", type=int, default=1, help="traffic: events per transaction, 1..N")
    p.add_argument("--records-per-event", type=int, default=1, help="traffic: records per event, 1..N")
    p.add_argument("--collision-rate", type=float, default=0.1,
                   help="traffic: probability an update hits a recently changed record (default 0.1)")
    p.add_argument("--purge-rate", type=float, default=0.0,
                   help="traffic: probability a transaction is followed by the purge of a soft-deleted record "
                        "(emptied from the Recycle Bin: gone for good, no change event) (default 0)")
    p.add_argument("--cdc-objects", type=_names, default=None, metavar="A,B",
                   help="objects selected for Change Data Capture: only they publish change events and have a "
                        "/data/<Object>ChangeEvent topic; an empty value selects none (default: every object "
                        "but Task and Shipment__c). PUT /__sim/cdc {\"objects\": [...]} changes it at run time")
    p.add_argument("--api-allocation", type=int, default=DEFAULT_API_ALLOCATION, metavar="N",
                   help="DailyApiRequests: REST and Bulk requests served before 403 REQUEST_LIMIT_EXCEEDED "
                        f"(default {DEFAULT_API_ALLOCATION:,}; PUT /__sim/limits changes it or resets the usage)")
    p.add_argument("--event-allocation", type=int, default=DEFAULT_EVENT_ALLOCATION, metavar="N",
                   help="DailyDeliveredPlatformEvents: events delivered over Pub/Sub before Subscribe ends with "
                        f"subscription.limit.exceeded (default {DEFAULT_EVENT_ALLOCATION:,})")
    p.add_argument("--monthly-event-entitlement", type=int, default=None, metavar="N",
                   help="an org with the platform events add-on: /limits reports MonthlyPlatformEventsUsageEntitlement "
                        "(Max N, Remaining N minus the events delivered, negative past it; delivery goes on)")
    p.add_argument("--objects", type=int, default=0, metavar="N",
                   help="add N generated small custom objects Gen001__c … (describe, Bulk, REST and change events; "
                        "traffic changes them when listed in its objects)")
    p.add_argument("--object-records", type=int, default=None, metavar="N",
                   help="records of each generated object (default: --records)")
    p.add_argument("--channel", action="append", default=[], type=_channel, metavar="Name=A,B",
                   help="a custom channel /data/<Name>__chn carrying the change events of its members (repeatable; "
                        "its members are selected for Change Data Capture); PUT /__sim/channels at run time")
    defaults = Faults()
    for name, text in KNOB_HELP.items():
        flag = "--" + name.replace("_", "-")
        value = getattr(defaults, name)
        if isinstance(value, bool):
            p.add_argument(flag, action="store_true", help=text)
        elif name in KNOB_CHOICES:
            p.add_argument(flag, choices=KNOB_CHOICES[name], default=value, help=f"{text} (default {value})")
        else:
            p.add_argument(flag, type=type(value), default=value, help=f"{text} (default {value})")
    return p


def _channel(text: str) -> tuple[str, list[str]]:
    name, sep, members = text.partition("=")
    if not sep or not name.strip() or not _names(members):
        raise argparse.ArgumentTypeError("expected Name=Object,Object")
    return name.strip(), _names(members)


def _names(text: str) -> list[str]:
    return [name.strip() for name in text.split(",") if name.strip()]


async def _serve(sims: list[Simulator]) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    infos = await start_all(sims)
    sys.stdout.write("".join(orjson.dumps(info).decode() + "\n" for info in infos))
    sys.stdout.flush()
    try:
        await stop.wait()
    finally:
        await stop_all(sims)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    knobs = {name: getattr(args, name) for name in KNOB_HELP}
    traffic = {"running": args.rate > 0, "rate": args.rate or 10.0, "changes": args.changes,
               "transaction_size": args.transaction_size, "records_per_event": args.records_per_event,
               "collision_rate": args.collision_rate, "purge_rate": args.purge_rate}
    if not 1 <= args.orgs <= MAX_ORGS:
        sys.stderr.write(f"replicator sim: --orgs must be within 1..{MAX_ORGS}\n")
        return 2
    try:
        options = dict(records=args.records, seed=args.seed, host=args.host, port=args.port, tls=not args.no_tls,
                       client_id=args.client_id, client_secret=args.client_secret, username=args.username,
                       jwt_public_key=args.jwt_public_key, page_size=args.page_size, gzip_level=args.gzip_level,
                       state_dir=args.state_dir, hostile_field=args.hostile_field,
                       wide_object=args.wide_object, faults=knobs,
                       traffic=traffic, cdc_objects=args.cdc_objects,
                       api_allocation=args.api_allocation, event_allocation=args.event_allocation,
                       monthly_event_entitlement=args.monthly_event_entitlement, objects=args.objects,
                       object_records=args.object_records, channel_members=dict(args.channel))
        sims = [Simulator(**org_options(options, k, args.orgs)) for k in range(1, args.orgs + 1)]
    except (ValueError, OSError) as exc:
        sys.stderr.write(f"replicator sim: {exc}\n")
        return 2
    try:
        asyncio.run(_serve(sims))
    except OSError as exc:
        sys.stderr.write(f"replicator sim: {exc}\n")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
