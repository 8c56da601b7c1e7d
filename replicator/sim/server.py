"""The simulator's HTTP server: app assembly, the Salesforce-edge middleware, and the entry points
`Simulator` (async start/stop) and `SimulatorThread` (a context manager running it, or several orgs, in a thread,
for tests). `org_options` derives the options of org k of a multi-org simulator (`replicator sim --orgs N`).
"""

from __future__ import annotations

import asyncio
import copy
import os
import shutil
import socket
import tempfile
import threading
import time
from pathlib import Path

import grpc
from aiohttp import web

from . import admin, admin_events, bulk, channels, limits, rest, rest_replication
from .cdc import ChangeCapture
from .errors import invalid_session, not_found, sf_error
from .events import EventBus
from .faults import Faults
from .ids import MAX_ORGS, make_id, org_pod
from .jobs import JobManager
from .limits import API_LIMIT_TEXT, Allocations
from .oauth import OAuthEndpoints, TokenStore
from .pubsub import PubSubService, start_server
from .state import LATEST_VERSION, STATE, SimState, parse_version
from .store import OrgStore
from .tls import server_context, write_self_signed
from .traffic import Traffic, TrafficConfig

DEMO_CLIENT_ID = "3MVG9replicator.sim.demo.client.id"
DEMO_CLIENT_SECRET = "replicator-sim-demo-secret"
MAX_URI_BYTES = 16_384  # longer URIs get 414 (docs/bulk-rest-oauth.md §2.1)
SF_REST: web.RequestKey[bool] = web.RequestKey("sf_rest", bool)


def _bearer(request: web.Request) -> str | None:
    auth = request.headers.get("Authorization", "")
    scheme, _, token = auth.partition(" ")
    return token.strip() if scheme.lower() in ("bearer", "oauth") and token.strip() else None


@web.middleware
async def salesforce_edge(request: web.Request, handler):
    """Faults, URI limit, auth, API usage and Salesforce-shaped framework errors, for /services/ only."""
    if request.path.startswith("/__sim/"):
        return await handler(request)
    state = request.app[STATE]
    faults = state.faults
    if len(request.raw_path) > MAX_URI_BYTES:
        return sf_error(414, "URI_TOO_LONG", "The request URI is too long")
    if faults.latency_ms > 0:
        await asyncio.sleep(faults.latency_ms / 1000)
    if faults.roll(faults.error_500_rate):
        return sf_error(500, "UNKNOWN_EXCEPTION", "An unexpected error occurred. Please include this ErrorId if "
                                                  "you contact support: 1234567890-12345 (-1234567890)")
    if faults.roll(faults.error_503_rate):
        return sf_error(503, "SERVER_UNAVAILABLE", "Server temporarily unavailable (simulated)")
    parts = request.path.split("/")
    versioned = len(parts) > 3 and parts[1:3] == ["services", "data"] and parts[3] not in ("",)
    if versioned:
        if parse_version(parts[3]) is None:
            return not_found()
        token = _bearer(request)
        if token is None or not state.tokens.touch(token):
            return invalid_session()
        request[SF_REST] = True  # on_response_prepare adds Sforce-Limit-Info
        if not state.limits.charge_api():  # past the daily API allocation (limits.py)
            return sf_error(403, "REQUEST_LIMIT_EXCEEDED", API_LIMIT_TEXT)
        if faults.roll(faults.limit_exceeded_rate):
            return sf_error(403, "REQUEST_LIMIT_EXCEEDED", "TotalRequests Limit exceeded.")
    try:
        return await handler(request)
    except web.HTTPNotFound:
        return not_found()
    except web.HTTPMethodNotAllowed as exc:
        return sf_error(405, "METHOD_NOT_ALLOWED", f"HTTP Method '{exc.method}' not allowed. Allowed are "
                                                   + ",".join(sorted(exc.allowed_methods)))


async def _limit_header(request: web.Request, response: web.StreamResponse) -> None:
    # Sforce-Limit-Info on every REST response except /services/data/, the versions list
    # (docs/bulk-rest-oauth.md §2.1).
    if request.get(SF_REST):
        response.headers["Sforce-Limit-Info"] = request.app[STATE].limit_info()


class Simulator:
    """A local Salesforce org: OAuth, REST, Bulk API 2.0 query, Pub/Sub API (gRPC) with change data capture,
    admin API. See __main__.py for flags. `traffic`: initial traffic settings (traffic.TrafficConfig);
    `cdc_objects`: the objects selected for Change Data Capture (None: the default selection, cdc.py)."""

    def __init__(self, *, records: int | dict[str, int] = 1000, seed: int = 42, host: str = "127.0.0.1",
                 port: int = 0, tls: bool = True, client_id: str = DEMO_CLIENT_ID,
                 client_secret: str = DEMO_CLIENT_SECRET, username: str = "integration@replicator.sim",
                 jwt_public_key: str | bytes | None = None, page_size: int = 50_000, gzip_level: int = 1,
                 state_dir: str | None = None, hostile_field: bool = False, wide_object: bool = False,
                 faults: dict | None = None, traffic: dict | None = None, cdc_objects: list[str] | None = None,
                 api_allocation: int | None = None, event_allocation: int | None = None,
                 monthly_event_entitlement: int | None = None, objects: int = 0, object_records: int | None = None,
                 channel_members: dict[str, list[str]] | None = None, org: int = 1, org_name: str | None = None,
                 orgs: int = 1, **knobs) -> None:
        """`org`: which org of a multi-org simulator this is (1-based): its Ids, org id and user id carry the
        org's pod (ids.org_pod), so two orgs never share an Id; org 1's are today's. `org_name`: when given, the
        ready info's `org` field (org_options sets it to "org<k>" when there are several orgs), and `orgs` how
        many the simulator serves (its `orgs` field: a reader of the ready lines knows how many to read)."""
        self.host, self.port, self.tls = host, port, tls
        self.pod = org_pod(org)
        self.org_name, self.orgs = org_name, orgs
        self.seed = seed
        self.records = records
        self.client_id, self.client_secret, self.username = client_id, client_secret, username
        self.jwt_public_key = _load_key(jwt_public_key)
        self.page_size, self.gzip_level = page_size, gzip_level
        self._own_dir = state_dir is None
        self.state_dir = state_dir or tempfile.mkdtemp(prefix="replicator-sim-")
        self.faults = Faults()
        self.faults.update({**(faults or {}), **knobs})
        self.limits = Allocations()  # the daily allocations (limits.py); PUT /__sim/limits changes them
        self.limits.update({k: v for k, v in (("api_allocation", api_allocation),
                                              ("event_allocation", event_allocation),
                                              ("monthly_entitlement", monthly_event_entitlement)) if v is not None})
        self.org = OrgStore(records, seed, hostile_field, wide_object, objects, object_records, self.pod)
        self.org_id = make_id("00D", 1, self.pod)
        self.user_id = make_id("005", 1, self.pod)
        self.info: dict = {}
        self._runner: web.AppRunner | None = None
        self._jobs: JobManager | None = None
        self._grpc: grpc.aio.Server | None = None
        self.traffic_settings = traffic or {}
        TrafficConfig().merge(self.traffic_settings, self.org.stores)  # ValueError now, not at start()
        self.traffic: Traffic | None = None
        unknown = [name for name in cdc_objects or () if self.org.lookup(name) is None]
        if unknown:
            raise ValueError(f"--cdc-objects: unknown object {unknown[0]!r}")
        self.cdc_objects = cdc_objects  # None: the default entity selection (cdc.py)
        self.channel_members = channel_members or {}  # custom channel name -> members (channels.py)
        for name, members in self.channel_members.items():
            channels.channel_topic(name)  # ValueError now, not at start()
            unknown = [m for m in members if self.org.lookup(m) is None]
            if unknown or not members:
                raise ValueError(f"--channel {name}: unknown object {unknown[0]!r}" if unknown
                                 else f"--channel {name}: no members")

    async def start(self) -> dict:
        """Bind, start the Pub/Sub (gRPC) and HTTP servers and the traffic generator; returns the ready info."""
        os.makedirs(os.path.join(self.state_dir, "jobs"), exist_ok=True)
        ca_file, key_file = write_self_signed(self.state_dir, self.host) if self.tls else (None, None)
        sock = self._bind()
        public_host = "127.0.0.1" if self.host in ("0.0.0.0", "") else self.host  # noqa: S104
        instance_url = f"{'https' if self.tls else 'http'}://{public_host}:{sock.getsockname()[1]}"
        state, refresh_token = self._org_state(instance_url)
        self._grpc, grpc_port = await start_server(state.pubsub, self.host, _grpc_credentials(ca_file, key_file))
        self.info = self._ready_info(instance_url, refresh_token, f"{public_host}:{grpc_port}", ca_file)
        state.extras["info"] = self.info
        state.extras["metadata_modified"] = time.time()
        self._runner = web.AppRunner(self._app(state, instance_url), access_log=None, handle_signals=False,
                                     shutdown_timeout=1.0)
        await self._runner.setup()
        ssl_context = server_context(ca_file, key_file) if self.tls else None
        await web.SockSite(self._runner, sock, ssl_context=ssl_context).start()
        self.traffic.start()
        return self.info

    def _bind(self) -> socket.socket:
        sock = socket.socket(socket.AF_INET6 if ":" in self.host else socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((self.host, self.port))
        return sock

    def _org_state(self, instance_url: str) -> tuple[SimState, str]:
        """The shared state: sessions, jobs, change capture and its event bus, traffic, the Pub/Sub service;
        and the refresh token handed out in the ready info."""
        tokens = TokenStore(self.org_id, lambda: self.faults.token_idle_seconds)
        state = SimState(self.org, self.faults, tokens, self.org_id, self.user_id, instance_url,
                         self.page_size, self.gzip_level, self.state_dir, limits=self.limits)
        refresh_token = tokens.mint_refresh_token()
        self._jobs = JobManager(self.org, self.faults, os.path.join(self.state_dir, "jobs"))
        bus = EventBus(lambda: self.faults.retention_seconds, lambda: self.faults.retention_events)
        state.capture = ChangeCapture(self.org, self.faults, bus, self.user_id)
        if self.cdc_objects is not None:
            state.capture.select(self.cdc_objects)
        state.channels = channels.Channels(state.capture, bus)
        for name, members in self.channel_members.items():
            state.channels.define(name, members)
        state.traffic = self.traffic = Traffic(state.capture, self.seed)
        self.traffic.update(self.traffic_settings)
        state.pubsub = PubSubService(state.capture, bus, tokens, self.faults, self.org_id, instance_url)
        state.pubsub.allocations = self.limits
        state.pubsub.channels = state.channels
        return state, refresh_token

    def _app(self, state: SimState, instance_url: str) -> web.Application:
        """The HTTP application: OAuth, REST, Bulk and the admin API behind the Salesforce-edge middleware."""
        oauth = OAuthEndpoints(tokens=state.tokens, client_id=self.client_id, client_secret=self.client_secret,
                               org_id=self.org_id, user_id=self.user_id, username=self.username,
                               instance_url=lambda: instance_url, jwt_public_key=self.jwt_public_key)
        app = web.Application(middlewares=[salesforce_edge], client_max_size=8 << 20)
        app[STATE] = state
        app[bulk.JOBS] = self._jobs
        app.on_response_prepare.append(_limit_header)
        app.router.add_post("/services/oauth2/token", oauth.token)
        app.router.add_post("/services/oauth2/revoke", oauth.revoke)
        for module in (rest_replication, rest, bulk, admin, admin_events, limits, channels):
            module.add_routes(app)
        return app

    def _ready_info(self, instance_url: str, refresh_token: str, pubsub_endpoint: str, ca_file: str | None) -> dict:
        return {
            **({"org": self.org_name, "orgs": self.orgs} if self.org_name is not None else {}),
            "instance_url": instance_url,
            "token_url": f"{instance_url}/services/oauth2/token",
            "client_id": self.client_id,
            "client_secret": self.client_secret,
            "refresh_token": refresh_token,
            "username": self.username,
            "org_id": self.org_id,
            "tenant_id": self.org_id,
            "pubsub_endpoint": pubsub_endpoint,
            "user_id": self.user_id,
            "ca_file": ca_file,
            "api_version": LATEST_VERSION,
            "admin_url": f"{instance_url}/__sim",
            "records": self.records,
            "seed": self.seed,
            "state_dir": self.state_dir,
        }

    async def stop(self) -> None:
        if self.traffic is not None:
            await self.traffic.stop()
        if self._grpc is not None:
            await self._grpc.stop(grace=0.5)
            self._grpc = None
        if self._jobs is not None:
            await self._jobs.close()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        if self._own_dir:
            shutil.rmtree(self.state_dir, ignore_errors=True)


async def start_all(simulators: list[Simulator]) -> list[dict]:
    """Start every simulator in order; their ready infos. When one fails, those started are stopped."""
    infos: list[dict] = []
    try:
        for sim in simulators:
            infos.append(await sim.start())
    except BaseException:
        await stop_all(simulators[:len(infos) + 1])
        raise
    return infos


async def stop_all(simulators: list[Simulator]) -> None:
    for sim in simulators:
        await sim.stop()


def org_options(options: dict, k: int, orgs: int) -> dict:
    """The Simulator options of org k (1-based) of `orgs` orgs, from the options given once for all of them.

    With one org, `options` unchanged (today's simulator, byte for byte). With several, org k has `org=k` (its
    Ids' pod: ids.org_pod) and `org_name="org<k>"` (the ready info's `org` field); org 1 keeps the given
    credentials, seed and username, org k > 1 derives its own: client id and secret suffixed "-org<k>", seed + k - 1,
    username suffixed ".org<k>" (as a sandbox's). A fixed port P puts org k on P + k - 1 (0: each picks a free one);
    a state dir D holds org k's in D/org<k>. Everything else (traffic, faults, allocations, ...) applies to every
    org, each with its own generator, traffic and limits."""
    if not 1 <= orgs <= MAX_ORGS:
        raise ValueError(f"--orgs must be within 1..{MAX_ORGS}")
    if orgs == 1:
        return dict(options)
    out = {**copy.deepcopy(options), "org": k, "org_name": f"org{k}", "orgs": orgs}  # no dict shared by two orgs
    if k > 1:
        out["client_id"] = options.get("client_id", DEMO_CLIENT_ID) + f"-org{k}"
        out["client_secret"] = options.get("client_secret", DEMO_CLIENT_SECRET) + f"-org{k}"
        out["seed"] = options.get("seed", 42) + k - 1
        out["username"] = options.get("username", "integration@replicator.sim") + f".org{k}"
    if options.get("port"):
        out["port"] = options["port"] + k - 1
    if options.get("state_dir"):
        out["state_dir"] = os.path.join(options["state_dir"], f"org{k}")
    return out


def _grpc_credentials(ca_file: str | None, key_file: str | None) -> grpc.ServerCredentials | None:
    """TLS for gRPC with the HTTPS certificate (plaintext when there is none)."""
    if ca_file is None or key_file is None:
        return None
    with open(key_file, "rb") as k, open(ca_file, "rb") as c:
        return grpc.ssl_server_credentials([(k.read(), c.read())])


def _load_key(value: str | bytes | None) -> bytes | None:
    if value is None:
        return None
    if isinstance(value, bytes):
        return value
    if value.lstrip().startswith("-----BEGIN"):
        return value.encode()
    return Path(value).read_bytes()


class SimulatorThread:
    """Run a Simulator on its own event loop in a daemon thread: `with SimulatorThread(records=100) as sim:`
    then `sim.info`. `orgs=N`: N orgs on that loop (org_options), `sim.infos` their ready infos in org order
    (`sim.info` is org 1's, `sim.simulators` the Simulators). Startup errors are re-raised in the caller."""

    def __init__(self, orgs: int = 1, **options) -> None:
        self.simulators = [Simulator(**org_options(options, k, orgs)) for k in range(1, orgs + 1)]
        self.simulator = self.simulators[0]
        self.info: dict = {}
        self.infos: list[dict] = []
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="replicator-sim", daemon=True)

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        try:
            self.infos = self._loop.run_until_complete(start_all(self.simulators))
            self.info = self.infos[0]
        except BaseException as exc:  # noqa: BLE001 - handed to the starting thread
            self._error = exc
            self._ready.set()
            return
        self._ready.set()
        self._loop.run_forever()
        self._loop.run_until_complete(stop_all(self.simulators))
        self._loop.close()

    def start(self, timeout: float = 30.0) -> dict:
        self._thread.start()
        if not self._ready.wait(timeout):
            raise TimeoutError("simulator did not start")
        if self._error is not None:
            raise self._error
        return self.info

    def stop(self, timeout: float = 30.0) -> None:
        if self._thread.is_alive():
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(timeout)

    def __enter__(self) -> SimulatorThread:
        self.start()
        return self

    def __exit__(self, *exc_info) -> None:
        self.stop()
