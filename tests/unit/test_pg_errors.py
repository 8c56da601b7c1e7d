"""Error mapping at the Postgres edge: every asyncpg exception lands on one of the project's kinds."""

from __future__ import annotations

import inspect

import asyncpg
import pytest
from asyncpg.exceptions import _base as asyncpg_base

from replicator.model import (
    DatabaseError,
    DatabaseUnavailableError,
    RejectedDataError,
    ReplicatorError,
    TerminalError,
    TransientError,
)
from replicator.postgres.errors import CLIENT_ERRORS, error_kind, map_error, mapped


def asyncpg_exception_types() -> list[type[BaseException]]:
    found = set()
    for module in (asyncpg.exceptions, asyncpg_base):
        for _, obj in inspect.getmembers(module, inspect.isclass):
            if issubclass(obj, Exception) and not issubclass(obj, Warning) and obj.__module__.startswith("asyncpg"):
                found.add(obj)
    return sorted(found, key=lambda t: t.__name__)


def make(exc_type: type[BaseException]) -> BaseException:
    return exc_type("boom")


@pytest.mark.parametrize("exc_type", asyncpg_exception_types(), ids=lambda t: t.__name__)
def test_every_asyncpg_exception_is_mapped_to_a_kind(exc_type):
    # Fails when asyncpg grows an exception class without an SQLSTATE that CLIENT_ERRORS does not name.
    if not issubclass(exc_type, asyncpg.PostgresError):
        assert any(cls in CLIENT_ERRORS for cls in exc_type.__mro__), f"{exc_type.__name__} is not mapped"
    mapped_error = map_error(make(exc_type))
    assert isinstance(mapped_error, ReplicatorError), exc_type
    assert isinstance(mapped_error, TransientError | TerminalError)
    assert mapped_error.__cause__ is not None


@pytest.mark.parametrize("exc_type", [
    asyncpg.CannotConnectNowError,  # 57P03: the server is starting or shutting down
    asyncpg.AdminShutdownError,  # 57P01: pg_ctl stop -m fast
    asyncpg.ConnectionDoesNotExistError,  # 08003
    asyncpg.ConnectionFailureError,  # 08006
    asyncpg.SerializationError,  # 40001
    asyncpg.DeadlockDetectedError,  # 40P01
    asyncpg.TooManyConnectionsError,  # 53300
    asyncpg.LockNotAvailableError,  # 55P03
    asyncpg.QueryCanceledError,  # 57014: statement_timeout
])
def test_outages_and_contention_are_transient(exc_type):
    assert error_kind(make(exc_type)) is DatabaseUnavailableError


@pytest.mark.parametrize("exc_type", [
    asyncpg.InvalidTextRepresentationError,  # 22P02
    asyncpg.InvalidDatetimeFormatError,  # 22007
    asyncpg.StringDataRightTruncationError,  # 22001: value too long
    asyncpg.NotNullViolationError,  # 23502
    asyncpg.UniqueViolationError,  # 23505
    asyncpg.CheckViolationError,  # 23514
    asyncpg.ProgramLimitExceededError,  # 54000: index row too large
    asyncpg_base.DataError,  # a value that does not encode as its parameter's type
])
def test_refused_values_are_rejected_data(exc_type):
    assert error_kind(make(exc_type)) is RejectedDataError


def test_a_missing_database_or_a_wrong_password_is_a_configuration_error_of_the_whole_service():
    from replicator.model import ServiceConfigError

    error = map_error(asyncpg.InvalidCatalogNameError('database "nope" does not exist'))
    assert isinstance(error, ServiceConfigError)
    assert str(error) == 'postgres: database "nope" does not exist; check postgres.url (or DATABASE_URL)'
    assert error_kind(asyncpg.InvalidPasswordError("password authentication failed")) is ServiceConfigError


@pytest.mark.parametrize(("message", "grant"), [
    ("permission denied for database warehouse", 'GRANT CREATE ON DATABASE "warehouse"'),
    ("permission denied for schema salesforce", 'GRANT USAGE, CREATE ON SCHEMA "salesforce"'),
    ("permission denied for table account", "must own table account"),
    ("must be owner of table account", "must own table account"),
    ("permission denied to create role", "`replicator check` lists"),
])
def test_a_missing_privilege_is_a_configuration_error_naming_the_grant(message, grant):
    from replicator.model import ConfigError, ServiceConfigError

    error = map_error(asyncpg.InsufficientPrivilegeError(message))  # 42501: no retry grants it
    assert isinstance(error, ConfigError) and not isinstance(error, ServiceConfigError)
    assert str(error).startswith(f"postgres: {message}; the role in postgres.url") and grant in str(error), str(error)


@pytest.mark.parametrize("exc_type", [
    asyncpg.UndefinedTableError,  # 42P01
    asyncpg.PostgresSyntaxError,  # 42601
])
def test_configuration_and_sql_errors_are_terminal(exc_type):
    assert error_kind(make(exc_type)) is DatabaseError


@pytest.mark.parametrize("exc", [ConnectionRefusedError(111, "refused"), ConnectionResetError(), TimeoutError(),
                                 OSError(113, "no route to host")])
def test_socket_failures_are_transient(exc):
    assert error_kind(exc) is DatabaseUnavailableError


def test_a_closed_connection_is_transient_and_a_bug_is_left_alone():
    assert error_kind(asyncpg.InterfaceError("connection is closed")) is DatabaseUnavailableError
    assert error_kind(ValueError("a bug")) is None
    assert error_kind(DatabaseError("already mapped")) is None


async def test_mapped_raises_the_kind_with_the_original_as_cause():
    @mapped
    async def refuse():
        raise asyncpg.UniqueViolationError('duplicate key value violates unique constraint "x"\nDETAIL: …')

    with pytest.raises(RejectedDataError) as info:
        await refuse()
    assert str(info.value) == 'postgres: UniqueViolationError: duplicate key value violates unique constraint "x"'
    assert isinstance(info.value.__cause__, asyncpg.UniqueViolationError)

    @mapped
    async def bug():
        raise KeyError("x")

    with pytest.raises(KeyError):
        await bug()


def test_a_statement_on_a_connection_the_server_ended_is_transient():
    # What asyncpg raised during `pg_ctl restart -m fast` when a pooled connection had received the server's FATAL
    # but not yet its close: the database is restarting, not refusing the work (postgres/errors.py).
    from asyncpg.exceptions import _base as asyncpg_base

    from replicator.model import DatabaseUnavailableError
    from replicator.postgres.errors import map_error

    exc = asyncpg_base.InternalClientError("cannot switch to state 11; another operation (2) is in progress")
    assert isinstance(map_error(exc), DatabaseUnavailableError)
