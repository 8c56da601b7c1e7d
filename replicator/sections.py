"""The settings' sections ([salesforce], [postgres], [backfill], [stream], [poll], [history], [service] and each
[objects.NAME]): their keys, defaults, bounds and descriptions (docs/configuration.md is generated from them,
replicator/docs.py). config.py puts them together into `Settings` and loads them from the file and the
environment."""

from __future__ import annotations

import urllib.parse
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator

from .model import ConfigError


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class SalesforceSettings(_Section):
    instance_url: str = Field(
        "", description="My Domain URL of the org, e.g. https://acme.my.salesforce.com. Required."
    )
    token_url: str = Field(
        "",
        description="OAuth token endpoint. Default: <instance_url>/services/oauth2/token (client credentials must "
        "target My Domain).",
    )
    auth: Literal["client_credentials", "jwt_bearer", "refresh_token"] = Field(
        "client_credentials", description="OAuth 2.0 flow used to obtain access tokens."
    )
    client_id: str = Field("", description="Connected app consumer key.")
    client_secret: SecretStr | None = Field(None, description="Consumer secret (client_credentials, refresh_token).")
    client_secret_file: Path | None = Field(None, description="File holding the consumer secret, instead of the value.")
    username: str = Field("", description="JWT bearer: the Salesforce username (`sub` claim).")
    private_key_file: Path | None = Field(None, description="JWT bearer: PEM file of the RSA private key.")
    audience: str = Field("https://login.salesforce.com", description="JWT bearer: the `aud` claim.")
    refresh_token: SecretStr | None = Field(None, description="refresh_token flow: the refresh token.")
    api_version: str = Field(
        "62.0", description="REST API version. Parallel result pages need 58.0 or later (Bulk API 2.0 resultPages)."
    )
    ca_file: Path | None = Field(None, description="PEM file of the CA to trust instead of the system store (e.g. the simulator's ca_file).")
    verify: bool = Field(True, description="TLS certificate verification. Leave on; turning it off is logged loudly.")
    timeout_s: float = Field(120.0, description="Per-request timeout in seconds.")
    pubsub_endpoint: str = Field(
        "api.pubsub.salesforce.com:7443", description="Pub/Sub API host:port (gRPC over TLS) for the change stream."
    )
    pubsub_tls: bool = Field(True, description="TLS for the Pub/Sub channel (trusting ca_file when set). Leave on.")
    # REST `/limits` (docs/bulk-rest-oauth.md §2.1; docs/salesforce-coverage.md §3): one API request per read.
    limits_interval_s: float = Field(
        300.0, gt=0,
        description="How often the org's allocations are read from REST `/limits` (DailyApiRequests, "
        "DailyDeliveredPlatformEvents, DailyBulkV2QueryJobs, …): metrics of use, allocation and projected "
        "exhaustion, a warning at 80%, the API budget below, and when change events may flow again after the "
        "delivery allocation ran out. One API request per read (288 a day at the default).",
    )
    api_reserve: float = Field(
        0.2, ge=0, le=1,
        description="Share of the org's daily API requests left to others: while Remaining / Max of "
        "DailyApiRequests is below it, poll rounds (and other scheduled API work) are not started; streams go on. "
        "0 turns the budget off.",
    )

    @field_validator("instance_url", "token_url")
    @classmethod
    def _url(cls, v: str) -> str:
        if v and (urllib.parse.urlsplit(v).scheme not in ("https", "http") or not urllib.parse.urlsplit(v).hostname):
            raise ValueError("must be an https:// URL such as https://acme.my.salesforce.com")
        return v

    @field_validator("api_version")
    @classmethod
    def _version(cls, v: str) -> str:
        v = v.removeprefix("v")
        try:
            float(v)
        except ValueError:
            raise ValueError("must look like 62.0") from None
        return v

    def secret(self) -> str | None:
        if self.client_secret is not None:
            return self.client_secret.get_secret_value()
        if self.client_secret_file is not None:
            try:
                return self.client_secret_file.read_text().strip()
            except OSError as exc:
                raise ConfigError(f"'salesforce.client_secret_file': cannot read {self.client_secret_file}: "
                                  f"{exc.strerror}") from None
        return None


class PostgresSettings(_Section):
    url: SecretStr | None = Field(
        None,
        description="Postgres URL (env DATABASE_URL). Unset: the server at 127.0.0.1:5432 (database test) when one "
        "answers, else a throwaway server started for the run.",
    )
    schema_: str = Field("salesforce", alias="schema", description="Schema of the target tables.")
    pool_size: int = Field(8, ge=2, le=100, description="Connections in the pool (parallel page loads use one each).")


class BackfillSettings(_Section):
    parallel_pages: int = Field(
        3, ge=1, le=5, description="Result pages downloaded and loaded at once. resultPages returns at most 5 URLs per "
        "call (Bulk API 2.0), and each page holds a Postgres connection while it loads."
    )
    page_size: int = Field(
        100_000, ge=100, le=1_000_000,
        description="maxRecords per result page. Smaller pages commit (and can resume) more often; larger pages cost "
        "fewer requests. Salesforce still caps a page by size.",
    )
    poll_max_s: float = Field(10.0, gt=0, description="Longest wait between two job-status polls.")
    job_retries: int = Field(3, ge=0, le=10, description="New jobs tried after a job ends Failed, before the object stops.")


class StreamSettings(_Section):
    # 2,000: "A change event trigger … has a maximum batch size of 2,000 event messages" ("Change Event Triggers",
    # https://developer.salesforce.com/docs/atlas.en-us.change_data_capture.meta/change_data_capture/cdc_trigger_intro.htm).
    # Measured here (bench/RESULTS.md, batch sweep): 100 → 10,000 events a batch took 8.1k → 11.0k events/s.
    batch_max_events: int = Field(
        2_000, ge=1, le=100_000,
        description="Events per apply batch (one transaction). 2,000 is Salesforce's trigger batch size for change "
        "events; larger batches raise throughput, smaller ones lower lag.",
    )
    batch_max_wait_s: float = Field(
        0.2, gt=0, le=60, description="Longest wait before a partial batch is applied (bounds the added lag)."
    )
    num_requested: int = Field(
        100, ge=1, le=100,
        description="Events the Pub/Sub server may owe this client at once per object (FetchRequest num_requested; "
        "Salesforce caps it at 100). Lower values bound in-flight events, higher ones keep the stream full.",
    )
    max_transaction_events: int = Field(
        200_000, ge=1,
        description="A Salesforce transaction is applied in one commit, so it is held in memory until its last event "
        "(measured: ~2.8 KB per full event of a 25-field object). A transaction of more events is split across "
        "commits (logged as stream.transaction_split; readers may then see part of it). Salesforce sends at most "
        "100,000 events per transaction, so the default never splits; lower it to bound memory for wide objects.",
    )
    position_timeout_s: float = Field(
        300.0, gt=0,
        description="Before a backfill or resync, how long to wait for the stream's current position (Salesforce "
        "sends a keepalive within 270 s). Without one, the stream later starts from the earliest retained event.",
    )
    topic_check_s: float = Field(
        300.0, gt=0,
        description="Objects in `auto` mode: how often each one's change-event topic is looked up again (one Pub/Sub "
        "GetTopic per object per interval), so an entity selected for or removed from Change Data Capture switches "
        "between streaming and polling without a hole and without a new extract.",
    )
    # "/data/ChangeEvents" carries every entity selected for Change Data Capture; "/data/<Name>__chn" a custom
    # channel's members ("Subscription Channels", Change Data Capture Developer Guide,
    # https://developer.salesforce.com/docs/atlas.en-us.change_data_capture.meta/change_data_capture/cdc_subscribe_channels.htm;
    # docs/pubsub-cdc.md §5).
    channel: str = Field(
        "", pattern=r"^(|/data/ChangeEvents|/data/[A-Za-z][A-Za-z0-9_]*__chn)$",
        description="Empty: one Pub/Sub subscription per object. \"/data/ChangeEvents\" or a custom channel "
        "\"/data/<Name>__chn\": ONE subscription serves every object in cdc mode, with one checkpoint for the "
        "channel (docs/channels.md). Objects added to the configuration later, and objects "
        "that need a resync, run on their own subscription from then on.",
    )
    channel_objects: list[str] = Field(
        default_factory=list,
        description="With a custom `stream.channel`: the objects it carries (its members in Salesforce). Empty: every "
        "object in cdc mode (right for /data/ChangeEvents, which carries every selected entity). Objects in cdc mode "
        "not listed run on subscriptions of their own.",
    )
    platform_events: list[str] = Field(
        default_factory=list,
        description="Platform events to keep, e.g. [\"Order_Ready__e\"]: each `/event/<name>` topic is appended to "
        "table <schema>.<name lower-cased>, one row per event keyed by replay id (a redelivery adds nothing).",
    )


class PollSettings(_Section):
    # Datetimes have whole seconds and a transaction commits after its SystemModstamp, so a record can become
    # visible behind a position already read (docs/salesforce-coverage.md §1, "Time and visibility").
    lookback_s: float = Field(
        10.0, ge=0, le=3600,
        description="Polled objects: each round's keyset starts no later than the previous round's getDeleted "
        "`latestDateCovered` (held back by Salesforce while a transaction is in flight) less this many seconds, a "
        "margin for clock skew and late commits Salesforce does not hold back (docs/polling.md). Re-reads cost "
        "queries, never correctness (version guard).",
    )
    handoff_lookback_s: float = Field(
        600.0, ge=0, le=3600,
        description="Events -> poll (a deselection from Change Data Capture, the event allocation used up, a restart "
        "with mode = \"poll\"): the poll starts this many seconds before the object's own position (at least "
        "`lookback_s`). A transaction that committed after the last event applied but before the switch, and whose "
        "events are never read, is stamped up to its duration earlier; Salesforce ends every transaction within 10 "
        "minutes (Apex Developer Guide, \"Execution Governors and Limits\"). Re-reading those minutes once per "
        "switch costs a few queries, never correctness (docs/lifecycle.md).",
    )
    page_size: int = Field(
        2_000, ge=1, le=2_000,
        description="Records per poll query (SOQL LIMIT; one REST queryAll call, at most 2,000 records). Each page "
        "commits with the poll position in one transaction.",
    )
    bulk_threshold: int = Field(
        10_000, ge=0,
        description="Polled objects: when a round's first REST page comes back full, one `SELECT COUNT()` with the "
        "same WHERE asks how large the delta is; at this many records or more the round reads it with one Bulk API "
        "2.0 queryAll job (staged with COPY, applied through the version guard) instead of page by page. 0: never.",
    )
    describe_interval_s: float = Field(
        600.0, gt=0,
        description="Polled objects: every this many seconds (and at every start) the object is described again (one "
        "API call; no change event tells a polled object its fields changed). A field the table lacks is added "
        "and the object resynced, so the values set before are read too (docs/polling.md).",
    )
    reconcile_interval_s: float = Field(
        86_400.0, ge=0,
        description="Polled objects: every this many seconds (and at once when getDeleted answers "
        "INVALID_REPLICATION_DATE, its 15-day window passed, or EXCEEDED_ID_LIMIT for a single minute) an Id-only Bulk "
        "extract is compared with the table; rows the org no longer has are deleted (per `deletes`). 0: never "
        "scheduled.",
    )


class HistorySettings(_Section):
    default: bool = Field(
        False,
        description="Keep a history table `<table>__history` for every object whose `objects.X.history` is unset: "
        "one full version of a record per committed change (docs/history.md).",
    )
    columns: Literal["replicator", "fivetran"] = Field(
        "replicator",
        description="Names of the history tables' validity columns: replicator (`_valid_from`, `_valid_to`, "
        "`_is_current`) or fivetran (`_fivetran_start`, `_fivetran_end`, `_fivetran_active`, so packages written "
        "for Fivetran's history mode read them). Switched later, an existing history table's three columns are "
        "renamed in place when its object is next prepared (docs/history.md).",
    )
    retention_days: float = Field(
        0.0, ge=0,
        description="Versions closed (`_valid_to`) more than this many days ago are deleted, "
        "`prune_batch` rows a transaction, by `replicator prune-history` and by the service once a day. "
        "0 keeps every version.",
    )
    prune_batch: int = Field(
        10_000, gt=0, le=1_000_000,
        description="Versions deleted per transaction by a prune (short transactions: readers and the stream "
        "never wait long on one).",
    )


class ServiceSettings(_Section):
    host: str = Field("0.0.0.0", description="Address of the metrics and health endpoints (`/metrics`, `/healthz`, `/readyz`).")
    port: int = Field(9108, ge=0, le=65535, description="Port of those endpoints; 0 picks a free port (logged at start).")
    metrics: bool = Field(True, description="Serve the endpoints at all (`replicator run` only).")
    shutdown_timeout_s: float = Field(
        30.0, gt=0, le=3600,
        description="After SIGTERM/SIGINT: how long batches in flight may take to commit before the service gives "
        "up on them (they roll back and are applied again after a restart). A second signal exits at once.",
    )
    ready_max_lag_s: float = Field(
        120.0, gt=0, description="`/readyz` fails while any object's lag is above this many seconds."
    )
    retention_hours: float = Field(
        72.0, gt=0, description="Salesforce's event retention (72 h for change events): the basis of "
        "`replicator_time_to_data_loss_seconds`.",
    )
    control_poll_s: float = Field(
        2.0, gt=0, le=300, description="How often a streamed or polled object looks for an operator's request "
        "(`replicator resync`) in the state tables."
    )
    lease_s: float = Field(
        15.0, ge=1, le=600,
        description="One writer per object and per channel (docs/operating.md \"One writer\"): how long a process's hold on "
        "one lasts without renewal (renewed every third of it, on the database's clock). A second process on the "
        "same database stands by and takes an object over within this long after its holder dies; a holder paused "
        "past it can commit nothing more. Also how long a transaction of the process may wait for its next statement "
        "before Postgres ends it (idle_in_transaction_session_timeout: a process paused inside one must not keep "
        "its locks, and so its objects, from the others). Shorter: faster takeover, more renewals (one UPDATE of "
        "every lease a process holds, every third).",
    )
    lease_poll_s: float = Field(
        0.5, gt=0, le=60,
        description="Several replicas (docs/replicas.md): how often a process reads "
        "`replicator.leases` and `replicator.replicas` (two small reads and at most one heartbeat): how soon it "
        "takes a unit another released (a SIGTERM, a hand-back) and sees a replica join or leave.",
    )
    replica_id: str = Field(
        "", description="This process's name in `replicator.leases` and `replicator status` (who holds what). "
        "Default: host name and process id. Must differ between processes: one that finds its own name on a "
        "lease takes it at once (a restart).",
    )


class ObjectSettings(_Section):
    key: str = Field("Id", description="Field whose value keys the table (primary key): Id, or a field Salesforce keeps unique (External ID and Unique).")
    deletes: Literal["soft", "hard"] = Field(
        "soft", description="soft: keep deleted rows with _sf_deleted_at set; hard: remove them."
    )
    fields: list[str] | None = Field(None, description="Fields to replicate (default: every queryable field).")
    mode: Literal["auto", "cdc", "poll"] = Field(
        "auto",
        description="auto: stream change events when the object's change-event topic exists (Pub/Sub GetTopic; the "
        "entity is selected for Change Data Capture), else poll; cdc: stream, and refuse to start without the topic; "
        "poll: poll with REST queryAll on (SystemModstamp, Id) and getDeleted (docs/polling.md).",
    )
    poll_interval_s: float = Field(
        60.0, gt=0, le=86_400,
        description="Polled objects: seconds between two poll rounds (each costs at least two API calls).",
    )
    # A day, as Estuary refreshes formula fields by default (docs/salesforce-coverage.md §5): a refresh is one Bulk
    # query job of Id plus the refreshed fields, a few API calls and one of the 10,000 query jobs Salesforce allows
    # per rolling 24 h (docs/bulk-rest-oauth.md §2.1).
    formula_refresh_s: float = Field(
        86_400.0, ge=0,
        description="Seconds between two refreshes of the columns change events never carry (formula fields, "
        "LastActivityDate, LastViewedDate): a Bulk query of Id and those fields, then one UPDATE of the rows whose "
        "values differ (docs/refresh.md). The next is due this long after the last one stored, a finished backfill "
        "or resync counting as one (at once when none is); 0 turns the schedule off (`replicator refresh` still "
        "runs it).",
    )
    history: bool | None = Field(
        None,
        description="Keep every version of every record in `<table>__history` beside the table (docs/history.md). "
        "Unset: `history.default`.",
    )


# A configuration without `[orgs.<name>]` is this one org; its state and tables stay where they always were.
