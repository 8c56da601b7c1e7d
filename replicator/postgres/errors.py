"""Every database failure mapped once, to the project's error kinds (model.py), at the one door to Postgres.

The retry policy (retry.py) asks only "transient or terminal?". Postgres answers with an SQLSTATE whose first
two characters are its class (PostgreSQL documentation, "Appendix A. PostgreSQL Error Codes",
https://www.postgresql.org/docs/current/errcodes-appendix.html):

- transient (`DatabaseUnavailableError`): 08 connection exception, 40 transaction rollback (serialization
  failure, deadlock), 53 insufficient resources (too many connections, disk full), 55P03 lock not available,
  57 operator intervention (admin/crash shutdown, cannot connect now, query canceled), 58 system error;
  and the socket errors below SQL (OSError, TimeoutError), asyncpg's "connection was closed", its protocol
  state error on a connection the server ended ("cannot switch to state …") and its outdated statement cache
  (cleared by the retry).
- data (`RejectedDataError`): 22 data exception, 23 integrity constraint violation, 54 program limit exceeded
  (a value too large for its index), and asyncpg's client-side DataError (a value that does not encode as its
  parameter's type). The same data fails again; the caller isolates the rows and dead-letters them.
- configuration (`ConfigError`: no retry fixes it): 28 invalid authorization and 3D000 no such database
  (`ServiceConfigError`: `postgres.url` is wrong for every unit), 42501 insufficient privilege (the role may not
  create or write what replicator needs; the message names the grant).
- everything else (`DatabaseError`, terminal): an SQL error, a missing table, a client misconfiguration.

`tests/unit/test_pg_errors.py` fails when asyncpg grows an exception class this module does not name.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Awaitable, Callable
from typing import ParamSpec, TypeVar

import asyncpg
from asyncpg.exceptions import _base as asyncpg_base

from ..model import (
    ConfigError,
    DatabaseError,
    DatabaseUnavailableError,
    RejectedDataError,
    ReplicatorError,
    ServiceConfigError,
)

P = ParamSpec("P")
T = TypeVar("T")

TRANSIENT_SQLSTATES = ("08", "40", "53", "55P03", "57", "58")
DATA_SQLSTATES = ("22", "23", "54")
# 28 invalid authorization (a wrong password or user), 3D000 invalid catalog name (no such database): what
# `postgres.url` says is wrong. A ServiceConfigError: the command exits 2 with one line, the service stops.
CONFIG_SQLSTATES = ("28", "3D")
# 42501 insufficient privilege: the role may not create the schemas at the first start, or write a table (its owner
# is another role). A ConfigError naming the grant: the command exits 2, the service stops the object it concerns.
PRIVILEGE_SQLSTATE = "42501"

# asyncpg's own exceptions that carry no SQLSTATE, each with its kind (a new one fails the unit test).
CLIENT_ERRORS: dict[type[BaseException], type[ReplicatorError]] = {
    asyncpg_base.OutdatedSchemaCacheError: DatabaseUnavailableError,  # a schema change invalidated a statement
    asyncpg_base.ProtocolError: DatabaseUnavailableError,  # a broken connection mid-message
    asyncpg_base.DataError: RejectedDataError,  # a value that does not encode as its parameter's type
    asyncpg_base.ClientConfigurationError: DatabaseError,
    asyncpg_base.UnsupportedClientFeatureError: DatabaseError,
    asyncpg_base.UnsupportedServerFeatureError: DatabaseError,
    asyncpg_base.TargetServerAttributeNotMatched: DatabaseError,
    asyncpg_base.InternalClientError: DatabaseError,
    asyncpg_base.InterfaceError: DatabaseError,  # misuse, e.g. "connection is closed": most are subclasses above
}

# Below SQL: the socket. ConnectionError and TimeoutError are OSErrors or their siblings.
NETWORK_ERRORS = (OSError, TimeoutError, ConnectionError)


def error_kind(exc: BaseException) -> type[ReplicatorError] | None:
    """The kind of a database failure, or None when `exc` is not one (a bug elsewhere stays what it is)."""
    if isinstance(exc, ReplicatorError):
        return None
    if isinstance(exc, asyncpg.PostgresError):
        state = exc.sqlstate or ""
        if state.startswith(TRANSIENT_SQLSTATES):
            return DatabaseUnavailableError
        if state.startswith(DATA_SQLSTATES):
            return RejectedDataError
        if state.startswith(CONFIG_SQLSTATES):
            return ServiceConfigError
        if state == PRIVILEGE_SQLSTATE:
            return ConfigError
        return DatabaseError
    if isinstance(exc, asyncpg.InterfaceError) and "connection" in str(exc) and "closed" in str(exc):
        return DatabaseUnavailableError  # "connection is closed", "connection was closed in the middle of …"
    if isinstance(exc, asyncpg_base.InternalClientError) and str(exc).startswith("cannot switch to state"):
        # A pooled connection the server ended (a shutdown's FATAL arrived, the socket's close not yet seen) used
        # for a new statement: "cannot switch to state 11; another operation (2) is in progress". Measured during
        # `pg_ctl restart -m fast`; a new connection works.
        return DatabaseUnavailableError
    for cls in type(exc).__mro__:
        if cls in CLIENT_ERRORS:
            return CLIENT_ERRORS[cls]
    if isinstance(exc, NETWORK_ERRORS):
        return DatabaseUnavailableError
    return None


def map_error(exc: BaseException) -> BaseException:
    """`exc` as the project's error (the original kept as `__cause__`), or `exc` itself when it is not a
    database failure."""
    kind = error_kind(exc)
    if kind is None:
        return exc
    first_line = (str(exc).splitlines() or [""])[0]
    if kind is ServiceConfigError:
        hint = "; check postgres.url (or DATABASE_URL)"
    elif kind is ConfigError:
        hint = f"; {privilege_hint(first_line)}"
    else:
        hint = ""
    error = kind(f"postgres: {first_line}{hint}" if hint else f"postgres: {type(exc).__name__}: {first_line}")
    error.__cause__ = exc
    return error


# Postgres's own words for a missing privilege (the server's lc_messages in English, the default), and the grant each
# needs. PostgreSQL documentation, "GRANT", https://www.postgresql.org/docs/current/sql-grant.html.
_DENIED = re.compile(r"permission denied for (database|schema|table|relation|sequence) (\S+)")
_OWNER = re.compile(r"must be (?:the )?owner of (?:table|relation) (\S+)")


def privilege_hint(message: str) -> str:
    """What to grant the role of `postgres.url`, from Postgres's message for SQLSTATE 42501."""
    if m := _DENIED.search(message):
        kind, name = m.group(1), m.group(2).strip('"')
        if kind == "database":
            return (f'the role in postgres.url needs GRANT CREATE ON DATABASE "{name}" (the first start creates the '
                    "schemas replicator and postgres.schema), or create both schemas with the role as their owner")
        if kind == "schema":
            return f'the role in postgres.url needs GRANT USAGE, CREATE ON SCHEMA "{name}"'
        return (f"the role in postgres.url must own {kind} {name} (replicator adds columns to its tables) or be "
                "granted SELECT, INSERT, UPDATE, DELETE on it")
    if m := _OWNER.search(message):
        return f"the role in postgres.url must own table {m.group(1)} (replicator adds columns to its tables)"
    return "the role in postgres.url lacks a privilege; `replicator check` lists those the first start needs"


def mapped(fn: Callable[P, Awaitable[T]]) -> Callable[P, Awaitable[T]]:
    """Decorate an async function of the Postgres edge: database failures leave it mapped."""

    @functools.wraps(fn)
    async def wrapper(*args: P.args, **kwargs: P.kwargs) -> T:
        try:
            return await fn(*args, **kwargs)
        except Exception as exc:
            error = map_error(exc)
            if error is exc:
                raise
            raise error from exc

    return wrapper
