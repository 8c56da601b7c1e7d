"""The one retry policy of the project: transient errors retry with backoff and jitter, terminal ones do not.

Every edge (Salesforce HTTP, Postgres) maps its own exceptions to `model.TransientError` / `model.TerminalError`
once (docs/design.md, principle 4); this module only asks "transient or terminal?" and never imports a driver.

Backoff is exponential with *full jitter* (delay drawn from [0, min(cap, base * 2**n)]), which spreads the
retries of many concurrent workers instead of having them hit a recovering server in lock step. API-limit
errors (403 REQUEST_LIMIT_EXCEEDED) wait on a longer scale: the org's allowance is a rolling 24 h window
(docs/bulk-rest-oauth.md §2.1), so a retry after half a second only burns another call against an exhausted allowance.

Every wait here ends at once on a stop: a step run under `waits_end_on(stop)` (the service's units, the backfill
command) raises `Stopped` from a wait when `stop` is set, instead of finishing a wait of up to minutes first.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import random
from collections.abc import Awaitable, Callable, Coroutine, Iterator
from contextvars import ContextVar
from typing import Any, Concatenate, ParamSpec, TypeVar

import structlog
from tenacity import AsyncRetrying, RetryCallState, retry_if_exception, stop_after_attempt

from replicator.model import ApiLimitError, JobFailedError, SessionExpiredError, Stopped, TransientError


async def wait_event(event: asyncio.Event, seconds: float | None) -> bool:
    """True once `event` is set, False when `seconds` pass first. With `asyncio.timeout`, never
    `asyncio.wait_for`: on Python 3.11 wait_for returns normally when its task is cancelled in the very step the
    awaited event is set (a stop's event set and the task cancelled together), so the cancellation is lost and the
    task goes on (CPython issue "AsyncIO's wait_for can hide cancellation in a rare race condition",
    https://github.com/python/cpython/issues/86296; wait_for is rebuilt on timeout from 3.12)."""
    try:
        async with asyncio.timeout(seconds):
            await event.wait()
    except TimeoutError:
        return False
    return True

T = TypeVar("T")
P = ParamSpec("P")
S = TypeVar("S")

log = structlog.get_logger(__name__)

# The stop that ends the waits of the current task (and of the tasks it starts, which copy its context). A context
# variable rather than a parameter: the waits are deep inside the edges (a REST call's retry, a Bulk job's status
# polls, a Subscribe's reconnect), which know nothing of the service.
_stop: ContextVar[asyncio.Event | None] = ContextVar("replicator_stop", default=None)


@contextlib.contextmanager
def waits_end_on(stop: asyncio.Event) -> Iterator[None]:
    """Within this block (and in tasks started from it), `pause` raises `Stopped` as soon as `stop` is set."""
    token = _stop.set(stop)
    try:
        yield
    finally:
        _stop.reset(token)


def stop_ends_waits(
    fn: Callable[Concatenate[S, asyncio.Event | None, P], Coroutine[Any, Any, T]],
) -> Callable[Concatenate[S, asyncio.Event | None, P], Coroutine[Any, Any, T]]:
    """A method `run(self, stop, ...)` whose waits (and those of everything it calls) end at once on `stop`."""

    @functools.wraps(fn)
    async def run(self: S, stop: asyncio.Event | None = None, *args: P.args, **kwargs: P.kwargs) -> T:
        if stop is None:
            return await fn(self, stop, *args, **kwargs)
        with waits_end_on(stop):
            return await fn(self, stop, *args, **kwargs)

    return run


async def pause(seconds: float) -> None:
    """Wait `seconds`; raise `Stopped` at once when the stop bound by `waits_end_on` is set, before or during the
    wait. The wait of every retry and poll interval at the edges."""
    stop = _stop.get()
    if stop is None:
        await asyncio.sleep(seconds)
        return
    if not stop.is_set() and not await wait_event(stop, seconds):
        return
    raise Stopped()


def is_transient(exc: BaseException) -> bool:
    """True when retrying the same call may succeed.

    Two `TransientError`s are not retried here because the same call would fail the same way: `JobFailedError`
    (the pipeline starts a *new* job a bounded number of times) and `SessionExpiredError` (the edge refreshes
    the token once and calls again with the new one).
    """
    return isinstance(exc, TransientError) and not isinstance(exc, JobFailedError | SessionExpiredError)


def backoff_delay(
    exc: BaseException,
    attempt: int,
    *,
    base: float = 0.5,
    cap: float = 30.0,
    limit_base: float = 30.0,
    limit_cap: float = 600.0,
    rng: Callable[[float, float], float] = random.uniform,
) -> float:
    """Seconds to wait after failed attempt number `attempt` (1-based). Pure apart from `rng`."""
    if isinstance(exc, ApiLimitError):
        ceiling = min(limit_cap, limit_base * 2 ** (attempt - 1))
        # Half-jitter on the limit scale: at least half the ceiling, so a limit error never retries at once.
        delay = rng(ceiling / 2, ceiling)
        hint_cap = limit_cap
    else:
        ceiling = min(cap, base * 2 ** (attempt - 1))
        delay = rng(0.0, ceiling)
        # A server's Retry-After may exceed our own cap (503 during maintenance); honour it up to the limit cap.
        hint_cap = max(cap, limit_cap)
    retry_after = getattr(exc, "retry_after", None)
    if retry_after:
        delay = max(delay, min(float(retry_after), hint_cap))
    return delay


def restart_delay(exc: BaseException, failures: int, *, rng: Callable[[float, float], float] = random.uniform) -> float:
    """Seconds before the service runs a failed object again after its `failures`-th failure in a row: the same
    policy on the supervisor's scale, 1 s doubling to a 60 s ceiling with full jitter (API-limit errors on their
    own longer scale, a server's Retry-After honoured). A minute bounds how long a recovered dependency waits
    to be used again."""
    return backoff_delay(exc, failures, base=1.0, cap=60.0, rng=rng)


async def retry_transient(
    fn: Callable[[], Awaitable[T]],
    *,
    attempts: int = 6,
    base: float = 0.5,
    cap: float = 30.0,
    limit_base: float = 30.0,
    limit_cap: float = 600.0,
    what: str = "",
    sleep: Callable[[float], Awaitable[None]] = pause,
) -> T:
    """Call `fn()` until it returns, retrying `TransientError` (see `is_transient`) up to `attempts` calls in all.

    The last transient error is re-raised when the attempts are used up; `TerminalError` and any other
    exception propagate at once; so does `Stopped` when a stop ends a wait (`pause`). `sleep` is injectable so
    tests can record delays without waiting.
    """

    def wait(state: RetryCallState) -> float:
        exc = state.outcome.exception() if state.outcome else None
        return backoff_delay(
            exc, state.attempt_number, base=base, cap=cap, limit_base=limit_base, limit_cap=limit_cap
        )

    def before_sleep(state: RetryCallState) -> None:
        exc = state.outcome.exception() if state.outcome else None
        log.warning(
            "retry",
            what=what,
            attempt=state.attempt_number,
            attempts=attempts,
            delay=round(state.next_action.sleep, 3) if state.next_action else None,
            error=f"{type(exc).__name__}: {exc}",
        )

    retrying = AsyncRetrying(
        retry=retry_if_exception(is_transient),
        stop=stop_after_attempt(max(1, attempts)),
        wait=wait,
        before_sleep=before_sleep,
        reraise=True,
        sleep=sleep,
    )

    async def call() -> T:
        # tenacity awaits only coroutine *functions*; a lambda returning a coroutine must be awaited here.
        return await fn()

    return await retrying(call)
