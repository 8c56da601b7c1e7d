"""replicator.retry: classification, backoff scales, Retry-After, logging of retries."""

from __future__ import annotations

import pytest
import structlog

from replicator.model import (
    ApiLimitError,
    AuthError,
    JobFailedError,
    SessionExpiredError,
    TerminalError,
    TransientError,
)
from replicator.retry import backoff_delay, is_transient, retry_transient


def test_classification():
    assert is_transient(TransientError("x"))
    assert is_transient(ApiLimitError("x"))
    assert not is_transient(JobFailedError("x"))
    assert not is_transient(TerminalError("x"))
    assert not is_transient(AuthError("x"))
    assert not is_transient(SessionExpiredError("x"))
    assert not is_transient(ValueError("x"))


class Flaky:
    def __init__(self, errors: list[BaseException], result: str = "ok"):
        self.errors = list(errors)
        self.calls = 0
        self.result = result

    async def __call__(self) -> str:
        self.calls += 1
        if self.errors:
            raise self.errors.pop(0)
        return self.result


class Sleeps:
    def __init__(self) -> None:
        self.delays: list[float] = []

    async def __call__(self, delay: float) -> None:
        self.delays.append(delay)


async def test_transient_errors_are_retried_until_success():
    fn, sleeps = Flaky([TransientError("503"), TransientError("timeout")]), Sleeps()
    assert await retry_transient(fn, attempts=5, sleep=sleeps) == "ok"
    assert fn.calls == 3
    assert len(sleeps.delays) == 2
    assert all(0 <= d <= 0.5 * 2**i for i, d in enumerate(sleeps.delays))


async def test_terminal_error_propagates_at_once():
    fn, sleeps = Flaky([TerminalError("400", code="MALFORMED_QUERY")]), Sleeps()
    with pytest.raises(TerminalError):
        await retry_transient(fn, sleep=sleeps)
    assert fn.calls == 1 and sleeps.delays == []


async def test_job_failed_is_not_retried_here():
    fn, sleeps = Flaky([JobFailedError("Failed")]), Sleeps()
    with pytest.raises(JobFailedError):
        await retry_transient(fn, sleep=sleeps)
    assert fn.calls == 1


async def test_other_exceptions_propagate_at_once():
    fn = Flaky([KeyError("bug")])
    with pytest.raises(KeyError):
        await retry_transient(fn, sleep=Sleeps())
    assert fn.calls == 1


async def test_last_transient_error_is_reraised_when_attempts_run_out():
    errors = [TransientError(f"e{i}") for i in range(3)]
    fn, sleeps = Flaky(errors), Sleeps()
    with pytest.raises(TransientError, match="e2"):
        await retry_transient(fn, attempts=3, sleep=sleeps)
    assert fn.calls == 3 and len(sleeps.delays) == 2


async def test_api_limit_waits_on_the_longer_scale():
    fn, sleeps = Flaky([ApiLimitError("limit"), ApiLimitError("limit")]), Sleeps()
    await retry_transient(fn, attempts=3, limit_base=30, limit_cap=600, sleep=sleeps)
    assert 15 <= sleeps.delays[0] <= 30
    assert 30 <= sleeps.delays[1] <= 60


async def test_retry_after_is_honoured():
    fn, sleeps = Flaky([TransientError("503", retry_after=7.0)]), Sleeps()
    await retry_transient(fn, attempts=2, base=0.01, sleep=sleeps)
    assert sleeps.delays == [7.0]


def test_backoff_is_capped_and_full_jitter():
    top = lambda lo, hi: hi  # noqa: E731
    bottom = lambda lo, hi: lo  # noqa: E731
    exc = TransientError("x")
    assert backoff_delay(exc, 1, base=0.5, cap=30, rng=top) == 0.5
    assert backoff_delay(exc, 4, base=0.5, cap=30, rng=top) == 4.0
    assert backoff_delay(exc, 20, base=0.5, cap=30, rng=top) == 30
    assert backoff_delay(exc, 3, rng=bottom) == 0.0
    assert backoff_delay(ApiLimitError("x"), 10, limit_base=30, limit_cap=600, rng=top) == 600


async def test_each_retry_is_logged_with_what_attempt_and_delay():
    fn = Flaky([TransientError("HTTP 503")])
    with structlog.testing.capture_logs() as logs:
        await retry_transient(fn, attempts=2, base=0.01, what="GET /services/data/v62.0/limits", sleep=Sleeps())
    (entry,) = [e for e in logs if e["event"] == "retry"]
    assert entry["what"] == "GET /services/data/v62.0/limits"
    assert entry["attempt"] == 1
    assert "HTTP 503" in entry["error"]
    assert entry["delay"] >= 0


async def test_a_lambda_returning_a_coroutine_is_awaited():
    fn = Flaky([TransientError("once")])
    assert await retry_transient(lambda: fn(), attempts=2, base=0.001, sleep=Sleeps()) == "ok"
    assert fn.calls == 2
