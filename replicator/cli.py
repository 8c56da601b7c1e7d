"""Command line: backfill | verify | status | sim | demo.

Exit codes (DESIGN.md §5): 0 done, 1 runtime failure (one clear line on stderr), 2 bad usage or configuration.
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Callable, Coroutine
from typing import Any

import click

from .config import Settings, load_settings, require_salesforce
from .model import ConfigError, ReplicatorError
from .observe import redact, setup_logging

CONFIG_OPTION = click.option(
    "--config", "config_path", type=click.Path(dir_okay=False), default=None,
    help="TOML configuration file (default: $REPLICATOR_CONFIG).",
)


def _fail(code: int, message: str) -> None:
    click.echo(f"replicator: {redact(message)}", err=True)
    sys.exit(code)


def _run(factory: Callable[[], Coroutine[Any, Any, int]]) -> None:
    """Run a command's coroutine; map our errors to one line and an exit code."""
    try:
        code = asyncio.run(factory())
    except ConfigError as exc:
        _fail(2, str(exc))
    except ReplicatorError as exc:
        _fail(1, str(exc))
    except KeyboardInterrupt:
        _fail(130, "interrupted")
    except OSError as exc:
        _fail(1, f"{type(exc).__name__}: {exc}")
    sys.exit(code)


def _settings(config_path: str | None, objects: tuple[str, ...], *, need_salesforce: bool = True) -> Settings:
    try:
        settings = load_settings(config_path)
        if need_salesforce:
            require_salesforce(settings)
        unknown = [o for o in objects if o not in settings.objects]
        if unknown:
            raise ConfigError(
                f"object {unknown[0]!r} is not configured; configured: {', '.join(settings.objects) or 'none'}"
            )
    except ConfigError as exc:
        _fail(2, str(exc))
    return settings


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--log-level", default="info", type=click.Choice(["debug", "info", "warning", "error"]))
@click.option("--log-json/--log-console", default=None, help="Log format (default: JSON unless stderr is a terminal).")
def main(log_level: str, log_json: bool | None) -> None:
    """replicator: keeps a PostgreSQL copy of Salesforce data current."""
    setup_logging(log_level, json=log_json)


@main.command()
@CONFIG_OPTION
@click.argument("objects", nargs=-1)
def backfill(config_path: str | None, objects: tuple[str, ...]) -> None:
    """Copy OBJECTS (default: every configured object) into Postgres; resumes an interrupted backfill."""
    settings = _settings(config_path, objects)
    from .pipeline.commands import backfill_command

    _run(lambda: backfill_command(settings, list(objects) or list(settings.objects)))


@main.command()
@CONFIG_OPTION
def run(config_path: str | None) -> None:
    """Run as a service: backfill each configured object when needed, then stream its changes."""
    settings = _settings(config_path, ())
    from .pipeline.service import run_command

    _run(lambda: run_command(settings))


@main.command()
@CONFIG_OPTION
@click.argument("objects", nargs=-1)
def verify(config_path: str | None, objects: tuple[str, ...]) -> None:
    """Extract OBJECTS again and compare with Postgres row by row; exit 0 only when equal."""
    settings = _settings(config_path, objects)
    from .pipeline.commands import verify_command

    _run(lambda: verify_command(settings, list(objects) or list(settings.objects)))


@main.command()
@CONFIG_OPTION
@click.option("--json", "as_json", is_flag=True, help="One JSON document instead of a table.")
def status(config_path: str | None, as_json: bool) -> None:
    """Per object: phase, rows, pages, last error (read from the state tables)."""
    settings = _settings(config_path, (), need_salesforce=False)
    from .pipeline.commands import status_command

    _run(lambda: status_command(settings, as_json))


@main.command(context_settings={"ignore_unknown_options": True, "allow_extra_args": True})
@click.pass_context
def sim(ctx: click.Context) -> None:
    """Run the Salesforce org simulator in the foreground (see `replicator sim --help`)."""
    from .sim.__main__ import main as sim_main

    sys.exit(sim_main(list(ctx.args)))


@main.command()
@click.option("--records", default=20_000, show_default=True, help="Records per object in the simulated org.")
@click.option("--seed", default=1, show_default=True)
@click.option("--stop-postgres", is_flag=True, help="Stop the Postgres a previous demo started, and exit.")
@click.pass_context
def demo(ctx: click.Context, records: int, seed: int, stop_postgres: bool) -> None:
    """Start the simulator, backfill its objects into Postgres, print rows and rows/s per object."""
    from .pipeline.demo import demo_command

    if stop_postgres:
        from .postgres.server import stop_kept_server

        click.echo("stopped" if stop_kept_server() else "no demo Postgres is running")
        return

    log_json = bool(ctx.parent and ctx.parent.params.get("log_json"))
    _run(lambda: demo_command(records=records, seed=seed, log_json=log_json))


if __name__ == "__main__":
    main()
