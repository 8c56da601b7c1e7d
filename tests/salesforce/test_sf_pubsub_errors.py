"""errors.map_grpc_status: every gRPC status is classified, once (docs/design.md, Principles 4)."""

from __future__ import annotations

import grpc
import pytest

from replicator.model import (
    ApiLimitError,
    ReplayIdInvalidError,
    SessionExpiredError,
    TerminalError,
    TransientError,
)
from replicator.retry import is_transient
from replicator.salesforce.errors import GRPC_STATUS_KINDS, map_grpc_status

PREFIX = "sfdc.platform.eventbus.grpc."


def test_every_grpc_status_code_is_classified():
    names = {code.name for code in grpc.StatusCode}
    assert names == set(GRPC_STATUS_KINDS), "classify the new grpc.StatusCode in errors.GRPC_STATUS_KINDS"


@pytest.mark.parametrize("code", list(grpc.StatusCode), ids=lambda c: c.name)
def test_every_status_maps_to_one_error_kind(code):
    error = map_grpc_status(code.name, "details", None, what="Subscribe /data/X")
    kind = GRPC_STATUS_KINDS[code.name]
    if kind == "auth":
        assert isinstance(error, SessionExpiredError)
    elif kind == "transient":
        assert is_transient(error)
    else:
        assert isinstance(error, TerminalError)
    assert str(error).startswith("Subscribe /data/X: gRPC " + code.name)


@pytest.mark.parametrize("code", ["INTERNAL", "UNKNOWN"])
def test_internal_is_transient_only_for_a_reset_stream(code):
    assert is_transient(map_grpc_status(code, "Received RST_STREAM with error code 2"))
    assert isinstance(map_grpc_status(code, "unexpected server failure"), TerminalError)


def test_replay_id_errors_are_replay_id_invalid():
    for suffix in ("subscription.fetch.replayid.corrupted", "subscription.fetch.replayid.validation.failed"):
        error = map_grpc_status("INVALID_ARGUMENT", "The Replay ID validation failed.", PREFIX + suffix)
        assert isinstance(error, ReplayIdInvalidError) and error.code == suffix
        assert "resync" in str(error)
    other = map_grpc_status("INVALID_ARGUMENT", "topic mismatch", PREFIX + "subscription.fetch.topic.mismatch")
    assert type(other) is TerminalError


def test_not_found_names_the_fix():
    error = map_grpc_status("NOT_FOUND", "The topic information ... not found", PREFIX + "topic.not.found")
    assert error.code == "TOPIC_NOT_FOUND" and "enable Change Data Capture" in str(error)
    assert map_grpc_status("NOT_FOUND", "", rpc="GetSchema").code == "SCHEMA_NOT_FOUND"


def test_limit_and_outage_codes_are_retried():
    assert isinstance(map_grpc_status("RESOURCE_EXHAUSTED", "", PREFIX + "subscription.limit.exceeded"), ApiLimitError)
    assert isinstance(map_grpc_status("UNKNOWN", "", PREFIX + "concurrent.client.limit.exceeded"), ApiLimitError)
    assert is_transient(map_grpc_status("FAILED_PRECONDITION", "", PREFIX + "service.unavailable"))


def test_unknown_status_name_is_terminal():
    assert isinstance(map_grpc_status("SOMETHING_NEW", ""), TerminalError)
    assert not isinstance(map_grpc_status("UNAVAILABLE", ""), TerminalError)
    assert isinstance(map_grpc_status("UNAVAILABLE", ""), TransientError)
