"""The shared vocabulary as plain types.

Every layer speaks these: `salesforce/` returns them, `pipeline/` transforms them, `postgres/` stores them.
Nothing here does I/O.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from typing import Any

# --------------------------------------------------------------------------------------------------------------
# Errors: two kinds, mapped once per edge (docs/design.md, principle 4). The retry policy asks only "transient or terminal?".


class ReplicatorError(Exception):
    """Base of every error this program raises on purpose. Every one is a TransientError or a TerminalError."""


class TransientError(ReplicatorError):
    """Worth retrying with backoff: timeouts, connection errors, 5xx, 429, gRPC UNAVAILABLE.

    `retry_after` (seconds) is a hint from the server, or a longer scale for API-limit errors.
    """

    def __init__(self, message: str, *, retry_after: float | None = None, code: str | None = None):
        super().__init__(message)
        self.retry_after = retry_after
        self.code = code


class TerminalError(ReplicatorError):
    """Retrying will not help: bad credentials, bad configuration, a malformed request, a failed job."""

    def __init__(self, message: str, *, code: str | None = None):
        super().__init__(message)
        self.code = code


class ApiLimitError(TransientError):
    """403 REQUEST_LIMIT_EXCEEDED: the org's API allocation is exhausted; wait on a longer scale."""


class SessionExpiredError(TransientError):
    """401 INVALID_SESSION_ID: the token provider refreshes once and the call is retried."""


class AuthError(TerminalError):
    """Salesforce refused the credentials or a fresh session: the token endpoint (`CredentialsError`, below), or a
    call that a new token did not make pass."""


class ReplayIdInvalidError(TerminalError):
    """Pub/Sub refused the stored replay id (corrupted, or outside the 72 h retention window).

    Never answered by resubscribing at LATEST (that silently loses every event in between, docs/design.md): the
    pipeline resyncs the object instead (docs/design.md, contract 6).
    """


class PermanentError(TerminalError):
    """No retry by this process fixes it: `replicator run` stops the object it concerns (phase FAILED, shown in
    status and /readyz) and goes on with the others (app/service.py `keep_running`); fixed, then started again, the
    object is extracted again."""


class ConfigError(PermanentError):
    """The configuration is invalid, or names what the org or the database refuses for good (an object Salesforce
    does not know, a privilege Postgres does not grant): no retry fixes it, and the message says what to fix.
    Raised where the error arises (the edges map such answers here once). A command exits 2; `replicator run` stops
    the object it concerns (phase FAILED) and goes on with the others (app/service.py)."""


class ServiceConfigError(ConfigError):
    """A configuration error every unit shares (the Salesforce credentials, `postgres.url`): `replicator run` stops
    at once with exit code 2, rather than mark every object FAILED one by one."""


class CredentialsError(AuthError, ServiceConfigError):
    """The token endpoint refused the credentials for good (OAuth `invalid_client`, `invalid_grant`, ...)."""


class JobFailedError(TransientError):
    """A Bulk API 2.0 job ended `Failed` or `Aborted`; retried a bounded number of times with a new job."""


class JobsFailedError(PermanentError):
    """Every Bulk API 2.0 job of an extract ended `Failed` or `Aborted` (`backfill.job_retries` new jobs after the
    first): the object stops rather than start a new job every minute for ever."""


class DatabaseUnavailableError(TransientError):
    """Postgres cannot serve now: connection lost or refused, server restarting, deadlock, serialization
    failure, resources exhausted. The same work may succeed later (postgres/errors.py maps these)."""


class RejectedDataError(TerminalError):
    """Postgres refused the data itself (a value not of its column's type, a NULL or duplicate key, a value too
    long): nothing of the unit of work was committed. Retrying the same data cannot help; the caller isolates
    the bad rows and dead-letters them."""


class DatabaseError(TerminalError):
    """Any other database failure: a missing database, refused credentials, missing privileges, an SQL error.
    Retrying will not help until an operator acts; the message says what Postgres said."""


class Stopped(TerminalError):
    """The service is stopping: the interrupted step is resumable and runs again after a restart."""

    def __init__(self, message: str = "the service is stopping", **kw):
        super().__init__(message, **kw)


class ResyncRequested(TerminalError):
    """An operator asked for a resync (`replicator resync`): the stream stops after committing its batches."""

    def __init__(self, message: str = "a resync was requested", **kw):
        super().__init__(message, **kw)


class LeaseLost(TerminalError):
    """This process no longer holds the unit it was writing for (docs/operating.md "One writer"): another process acquired
    its lease (this one was paused, partitioned or slow past `service.lease_s`). Raised by a commit whose fence
    check failed, inside its transaction, so nothing of it was committed; the unit stands by again."""


# --------------------------------------------------------------------------------------------------------------
# Metadata: what REST describe tells about an sObject.


@dataclass(frozen=True, slots=True)
class FieldSpec:
    """One `fields[]` item of an sObject describe, reduced to what a table needs."""

    name: str  # API name, e.g. "BillingCity", "External_Id__c"
    type: str  # describe type: id, string, textarea, picklist, multipicklist, boolean, int, double, ...
    label: str = ""
    length: int = 0
    precision: int = 0
    scale: int = 0
    digits: int = 0
    nillable: bool = True
    external_id: bool = False
    unique: bool = False
    id_lookup: bool = False
    calculated: bool = False
    compound_field_name: str | None = None  # set on components, e.g. BillingCity -> BillingAddress
    reference_to: tuple[str, ...] = ()
    relationship_name: str | None = None
    extra_type_info: str | None = None


@dataclass(frozen=True, slots=True)
class ObjectDescribe:
    """An sObject describe: its name, key prefix and fields, in describe order."""

    name: str
    label: str = ""
    key_prefix: str | None = None
    custom: bool = False
    queryable: bool = True
    replicateable: bool = True
    fields: tuple[FieldSpec, ...] = ()

    def field(self, name: str) -> FieldSpec | None:
        lowered = name.lower()
        for f in self.fields:
            if f.name.lower() == lowered:
                return f
        return None


# --------------------------------------------------------------------------------------------------------------
# Bulk API 2.0 query jobs, as the client sees them.


@dataclass(frozen=True, slots=True)
class BulkJob:
    """Job info of a Bulk API 2.0 query job (`GET /jobs/query/{id}`)."""

    id: str
    state: str  # UploadComplete | InProgress | JobComplete | Failed | Aborted
    operation: str = "queryAll"
    object: str = ""
    api_version: str = ""
    number_records_processed: int = 0
    error_message: str | None = None
    column_delimiter: str = "COMMA"
    line_ending: str = "LF"
    created_date: dt.datetime | None = None  # `createdDate`, on Salesforce's clock

    @property
    def done(self) -> bool:
        return self.state in ("JobComplete", "Failed", "Aborted")


@dataclass(frozen=True, slots=True)
class ResultPage:
    """One result set of a completed job, downloadable on its own (`resultPages` entry).

    `locator` is the opaque `locator` query parameter of the page ("" for the first page); it identifies the
    page within its job for resume bookkeeping. `url` is the path (with query) to GET.
    """

    job_id: str
    locator: str
    url: str


# --------------------------------------------------------------------------------------------------------------
# Tables: what the schema step produces from a describe.


@dataclass(frozen=True, slots=True)
class ColumnSpec:
    name: str  # lower-cased field API name: the Postgres column name
    field: str  # field API name as Salesforce spells it
    pg_type: str  # Postgres type, e.g. "text", "numeric(18,2)", "timestamptz"
    nullable: bool = True


@dataclass(frozen=True, slots=True)
class TableSpec:
    """A target table: schema, name, columns (in SOQL select order), key column."""

    object: str  # sObject API name
    schema: str
    name: str  # lower-cased object API name
    columns: tuple[ColumnSpec, ...]
    key: str  # key column name (lower-cased key field), e.g. "id" or "external_id__c"
    fingerprint: str = ""  # hash of the column list; a change means the table must be altered

    @property
    def fields(self) -> list[str]:
        """Field API names to SELECT, in column order."""
        return [c.field for c in self.columns]

    def column(self, name: str) -> ColumnSpec | None:
        for c in self.columns:
            if c.name == name:
                return c
        return None


@dataclass(frozen=True, slots=True)
class TableInfo:
    """Everything the sink needs to know about one object's table: its spec, the column that versions rows
    (`systemmodstamp` when the object has it, else None), whether the object has `IsDeleted`, and whether
    deleted records are removed (`deletes = "hard"`) instead of kept with `isdeleted = true`."""

    spec: TableSpec
    version_column: str | None
    has_isdeleted: bool
    hard_deletes: bool
    # Columns change events never carry (salesforce/topics.EVENTLESS_FIELDS, a computed compound name): a change
    # from an event leaves them as the row holds them; only a record fetched from the org writes them.
    eventless: frozenset[str] = frozenset()
    # The object's history table (`<table>__history`, docs/history.md), None when history is off.
    history: HistoryNames | None = None


@dataclass(frozen=True, slots=True)
class HistoryNames:
    """The names of a history table's three validity columns: replicator's own, or Fivetran's
    (`_fivetran_start`, `_fivetran_end`, `_fivetran_active`) so that packages written for Fivetran's history mode
    read it unchanged."""

    start: str = "_valid_from"
    end: str = "_valid_to"
    active: str = "_is_current"


FIVETRAN_HISTORY = HistoryNames("_fivetran_start", "_fivetran_end", "_fivetran_active")


# Metadata columns every target table carries.
VERSION_COLUMN = "_sf_version"
DELETED_COLUMN = "_sf_deleted_at"
SYNCED_COLUMN = "_sf_synced_at"


@dataclass(slots=True)
class DeadLetter:
    """A record or event that could not be applied: kept with its payload and the reason."""

    object: str
    reason: str
    payload: Any
    key: str | None = None
    source: str = "backfill"  # backfill | stream
    extra: dict[str, Any] = field(default_factory=dict)


# --------------------------------------------------------------------------------------------------------------
# Change Data Capture: what the stream produces, one per record per event.

CHANGE_TYPES = frozenset(
    {"CREATE", "UPDATE", "DELETE", "UNDELETE", "GAP_CREATE", "GAP_UPDATE", "GAP_DELETE", "GAP_UNDELETE", "GAP_OVERFLOW"}
)


@dataclass(frozen=True, slots=True)
class Version:
    """When a change committed, as its event's header says. Changes are ordered by commit time, then by their
    event's place in the topic's replay order (`Change.replay_id`): Salesforce stamps whole seconds, so equal
    commit times are common, and `commit_number` is diagnostic only (docs/design.md, contract 2)."""

    commit_timestamp: int  # epoch milliseconds
    commit_number: int = 0
    sequence_number: int = 0

    def key(self) -> tuple[int, int, int]:
        return (self.commit_timestamp, self.commit_number, self.sequence_number)


@dataclass(frozen=True, slots=True)
class Change:
    """One record's change from one change event, decoded but not yet converted to column values.

    `fields` holds the values the event carries for this record: every non-null field for CREATE and
    UNDELETE, only the changed fields for UPDATE (bitmap `changedFields`), nothing for DELETE and GAP_*.
    Keys are field API names; a compound field's subfield is `Parent.Child` (e.g. `BillingAddress.State`).
    Values are as Avro decodes them (datetime/date/time fields are epoch-millisecond longs; see
    salesforce/cdc.py). `nulled` lists the fields set to null (bitmap `nulledFields`), same naming.
    `record_id` is one element of the header's `recordIds` (it may be a wildcard like `001*` or the
    overflow's `000000000000000AAA`).
    """

    object: str  # header entityName
    record_id: str
    change_type: str  # one of CHANGE_TYPES
    version: Version
    transaction_key: str
    fields: dict[str, Any] = field(default_factory=dict)
    nulled: frozenset[str] = frozenset()
    diff_fields: frozenset[str] = frozenset()
    replay_id: bytes = b""
    schema_id: str = ""
    commit_user: str = ""
    change_origin: str = ""


@dataclass(frozen=True, slots=True)
class StreamEvent:
    """One delivered Pub/Sub event: its replay id and the changes it decodes to (empty for a keepalive)."""

    topic: str
    replay_id: bytes
    changes: tuple[Change, ...] = ()
    commit_timestamp: int | None = None  # epoch ms; None for keepalives
    keepalive: bool = False
    error: str | None = None  # set when the event could not be decoded: it becomes a dead letter
    payload: bytes = b""  # the raw Avro payload, kept only when `error` is set
    schema_id: str = ""
    # A platform event (no ChangeEventHeader) is not a change: its decoded Avro record, as fastavro returns it.
    record: dict[str, Any] | None = None


@dataclass(slots=True)
class RowOp:
    """The folded effect of a batch's changes on one record (keyed by its Salesforce Id)."""

    key: str  # record Id
    kind: str  # "upsert" / "undelete" (full record), "update" (partial), "delete", "refetch" (fetch by id)
    values: dict[str, Any] = field(default_factory=dict)  # column -> value; every column for full records
    version: tuple[int, int, int] = (0, 0, 0)
    commit_ms: int = 0  # the version's time, epoch ms: becomes _sf_stream_version
    # The replay id of the newest change folded in: orders changes of the same second (`_sf_stream_position`).
    # Empty for records not from an event (a dead letter retried): they win no tie against an event's change.
    position: bytes = b""
    fetched: bool = False  # a whole record read from the org (it carries the columns events never carry)
    # upsert: the record ends deleted (created, then deleted, in one batch); delete: `values` are the fields
    # changed before the delete in the same batch (a soft-deleted row keeps the record's last values)
    deleted: bool = False
    # History (docs/history.md): each change folded into this operation, in commit order (None when the object
    # keeps no history). A history table needs every committed change, not only the folded result.
    steps: list[HistoryStep] | None = None
    # What wrote it, when no change event did (`poll`, `resync`): the `_op` of its history version.
    source: str = ""


@dataclass(slots=True)
class HistoryStep:
    """One change event's effect on one record, kept beside the folded operation for its history version.
    `values`: the columns it set (a partial update's only; a delete's none); None when they are unknown here
    (a gap, an undelete: the record is fetched whole, and the fetched record stands for the step)."""

    op: str  # create | update | delete | undelete | gap
    commit_ms: int
    position: bytes
    values: dict[str, Any] | None
    commit_user: str = ""
    change_origin: str = ""
    changed_fields: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Checkpoint:
    """The position a batch covers, stored in the batch's transaction."""

    topic: str
    replay_id: bytes | None
    commit_timestamp: int | None = None  # epoch ms of the last applied event
    # a polled object's position (topic `poll:<Object>`, pipeline/poll.py): the keyset (SystemModstamp in epoch
    # ms, Id) of the newest record read, and the end of the window getDeleted covered (epoch ms)
    poll_modstamp: int | None = None
    poll_id: str | None = None
    poll_deleted_through: int | None = None
