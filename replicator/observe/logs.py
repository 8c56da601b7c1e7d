"""Logging setup (structlog) with secret redaction. Metrics and health endpoints come with the service."""

from __future__ import annotations

import datetime as dt
import logging
import sys
from typing import Any

import orjson
import structlog

_secrets: set[str] = set()
_json_mode = False  # set by setup_logging: how `fatal` writes its line


def register_secret(value: str | None) -> None:
    """Remember a secret so that no log line ever shows it (client secret, tokens, passwords in URLs)."""
    if value and len(value) >= 6:
        _secrets.add(value)


def redact(text: str) -> str:
    for s in _secrets:
        if s in text:
            text = text.replace(s, "***")
    return text


def _redact_processor(_logger: Any, _name: str, event: dict[str, Any]) -> dict[str, Any]:
    if _secrets:
        for k, v in event.items():
            if isinstance(v, str):
                event[k] = redact(v)
            elif isinstance(v, BaseException):
                event[k] = redact(repr(v))
    return event


def setup_logging(level: str = "info", *, json: bool | None = None) -> None:
    """JSON lines on stderr when it is not a terminal, readable console output when it is."""
    global _json_mode
    if json is None:
        json = not sys.stderr.isatty()
    _json_mode = json
    renderer = structlog.processors.JSONRenderer() if json else structlog.dev.ConsoleRenderer(colors=True)
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            _redact_processor,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(logging.getLevelName(level.upper())),
        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=False,
    )


def fatal(message: str, exit_code: int) -> None:
    """The one line a command ends with when it fails: `replicator: <message>` on stderr, or in JSON log mode one JSON
    line like every other (event `replicator.failed`, the message as `error`, and `exit_code`), so that a log
    collector parses the last line too. Secrets are redacted."""
    message = redact(message)
    if _json_mode:
        line = {"event": "replicator.failed", "level": "error", "error": message, "exit_code": exit_code,
                "timestamp": dt.datetime.now(dt.UTC).isoformat()}
        print(orjson.dumps(line).decode(), file=sys.stderr, flush=True)
    else:
        print(f"replicator: {message}", file=sys.stderr, flush=True)
