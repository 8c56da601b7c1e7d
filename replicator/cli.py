"""Command line: run | backfill | verify | status | resync | refresh | dead-letters | check | discover | init | config show
| sim | demo.

Exit codes (docs/design.md, Interfaces): 0 done, 1 runtime failure (one clear line on stderr), 2 bad usage or configuration.
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Callable, Coroutine
from typing import Any

import click

from .config import DEFAULT_ORG, Settings, load_settings, require_salesforce
from .model import ConfigError, ReplicatorError
from .observe.logs import fatal, setup_logging

CONFIG_OPTION = click.option(
    "--config", "config_path", type=click.Path(dir_okay=False), default=None,
    help="TOML configuration file (default: $REPLICATOR_CONFIG).",
)


def _fail(code: int, message: str) -> None:
    fatal(message, code)
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


ORG_OPTION = click.option(
    "--org", "org", default=None, metavar="NAME",
    help="Only this org of an [orgs.<name>] configuration (default: every org).",
)


def _settings(config_path: str | None) -> Settings:
    """The deployment's settings (`healthcheck`, `config show`: what is not an org's)."""
    try:
        settings = load_settings(config_path)
    except ConfigError as exc:
        _fail(2, str(exc))
    return settings


def _orgs(config_path: str | None, org: str | None, objects: tuple[str, ...] = (), *, need_salesforce: bool = True,
          need_objects: bool = True) -> list[Settings]:
    """The settings of each org the command works on (`--org`, default every one), each checked."""
    try:
        orgs = load_settings(config_path).for_orgs(org)
        for settings in orgs:
            where = "" if settings.org == DEFAULT_ORG else f"orgs.{settings.org}: "
            try:
                if need_salesforce:
                    require_salesforce(settings, objects=need_objects)
                unknown = [o for o in objects if o not in settings.objects]
                if unknown:
                    raise ConfigError(f"object {unknown[0]!r} is not configured; configured: "
                                      f"{', '.join(settings.objects) or 'none'}")
            except ConfigError as exc:
                raise ConfigError(f"{where}{exc}") from None
    except ConfigError as exc:
        _fail(2, str(exc))
    return orgs


def _one_document(orgs: list[Settings], as_json: bool) -> None:
    """A JSON document is one org's: several orgs with --json need --org."""
    if as_json and len(orgs) > 1:
        _fail(2, f"--json writes one org's document: add --org NAME (one of {', '.join(s.org for s in orgs)})")


async def _each(orgs: list[Settings], command: Callable[[Settings], Coroutine[Any, Any, int]]) -> int:
    """Run a one-shot command for each org in turn (a header line on stderr when there are several); the exit code
    is the worst of theirs."""
    worst = 0
    for settings in orgs:
        if len(orgs) > 1:
            click.echo(f"org {settings.org}:", err=True)
        worst = max(worst, await command(settings))
    return worst


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="replicator", prog_name="replicator", message="%(prog)s %(version)s")
@click.option("--log-level", default="info", type=click.Choice(["debug", "info", "warning", "error"]))
@click.option("--log-json/--log-console", default=None, help="Log format (default: JSON unless stderr is a terminal).")
def main(log_level: str, log_json: bool | None) -> None:
    """replicator: keeps a PostgreSQL copy of Salesforce data current."""
    setup_logging(log_level, json=log_json)


@main.command()
@CONFIG_OPTION
@ORG_OPTION
@click.argument("objects", nargs=-1)
def backfill(config_path: str | None, org: str | None, objects: tuple[str, ...]) -> None:
    """Copy OBJECTS (default: every configured object) into Postgres; resumes an interrupted backfill."""
    orgs = _orgs(config_path, org, objects)
    from .app.commands import backfill_command

    _run(lambda: _each(orgs, lambda s: backfill_command(s, list(objects) or list(s.objects))))


@main.command()
@CONFIG_OPTION
@ORG_OPTION
def run(config_path: str | None, org: str | None) -> None:
    """Run as a service: backfill each configured object when needed, then stream its changes (every org of an
    [orgs.<name>] configuration in this one process, or --org's)."""
    orgs = _orgs(config_path, org)
    from .app.deployment import run_command

    _run(lambda: run_command(orgs))


@main.command()
@CONFIG_OPTION
@ORG_OPTION
@click.option("--repair", is_flag=True,
              help="Also fix what differs: write missing and different rows from the extract, delete rows "
              "Salesforce does not have (rows changed after the extract began are left alone), then compare again.")
@click.option("--history", "history", is_flag=True,
              help="Also check the history tables: each current version equals its row, and a record's versions "
              "never overlap and leave no hole while it lives.")
@click.argument("objects", nargs=-1)
def verify(config_path: str | None, org: str | None, repair: bool, history: bool, objects: tuple[str, ...]) -> None:
    """Extract OBJECTS again and compare with Postgres row by row; exit 0 only when equal (in every org)."""
    orgs = _orgs(config_path, org, objects)
    from .app.commands import verify_command

    _run(lambda: _each(orgs, lambda s: verify_command(s, list(objects) or list(s.objects), repair, history)))


@main.command("prune-history")
@CONFIG_OPTION
@ORG_OPTION
@click.argument("objects", nargs=-1)
def prune_history(config_path: str | None, org: str | None, objects: tuple[str, ...]) -> None:
    """Delete history versions of OBJECTS (default: all) closed more than history.retention_days ago."""
    orgs = _orgs(config_path, org, objects)
    from .app.commands import prune_command

    _run(lambda: _each(orgs, lambda s: prune_command(s, list(objects) or list(s.objects))))


@main.command()
@CONFIG_OPTION
@ORG_OPTION
@click.option("--json", "as_json", is_flag=True, help="One JSON document instead of a table (rows carry `org`).")
def status(config_path: str | None, org: str | None, as_json: bool) -> None:
    """Per object of every org (or --org's): phase, rows, pages, last error (read from the state tables)."""
    orgs = _orgs(config_path, org, need_salesforce=False)
    from .app.commands import status_command

    _run(lambda: status_command(orgs, as_json))


@main.command()
@CONFIG_OPTION
@click.option("--ready", is_flag=True, help="Check /readyz instead of /healthz.")
@click.option("--host", default="127.0.0.1", show_default=True)
def healthcheck(config_path: str | None, ready: bool, host: str) -> None:
    """Exit 0 when the service on this machine answers /healthz (or /readyz) on its configured port: the
    container's HEALTHCHECK."""
    import httpx

    settings = _settings(config_path)
    path = "/readyz" if ready else "/healthz"
    url = f"http://{host}:{settings.service.port}{path}"
    try:
        response = httpx.get(url, timeout=5)
    except httpx.HTTPError as exc:
        _fail(1, f"{url}: {type(exc).__name__}: {exc}")
    click.echo(f"{url}: {response.status_code} {response.text[:500]}")
    sys.exit(0 if response.status_code == 200 else 1)


@main.command()
@CONFIG_OPTION
@ORG_OPTION
@click.argument("objects", nargs=-1, required=True)
def resync(config_path: str | None, org: str | None, objects: tuple[str, ...]) -> None:
    """Ask for OBJECTS to be extracted again (the table stays readable meanwhile); picked up by the running
    service, or by the next `replicator run`."""
    orgs = _orgs(config_path, org, objects, need_salesforce=False)
    from .app.ops_commands import resync_command

    _run(lambda: _each(orgs, lambda s: resync_command(s, list(objects))))


@main.command()
@CONFIG_OPTION
@ORG_OPTION
@click.option("--object", "objects", multiple=True, help="Only this object (repeatable); default: every configured one.")
def refresh(config_path: str | None, org: str | None, objects: tuple[str, ...]) -> None:
    """Refresh the columns change events never carry (formula fields, LastActivityDate, LastViewedDate) once: a
    Bulk extract of Id and those fields, then one UPDATE of the rows that differ. Safe beside a running service."""
    orgs = _orgs(config_path, org, objects)
    from .app.ops_commands import refresh_command

    _run(lambda: _each(orgs, lambda s: refresh_command(s, list(objects) or list(s.objects))))


@main.group("dead-letters")
def dead_letters() -> None:
    """Records and events that could not be applied: list, retry, drop."""


OBJECT_OPTION = click.option("--object", "object_", default=None, help="Only this object's dead letters.")


@dead_letters.command("list")
@CONFIG_OPTION
@ORG_OPTION
@OBJECT_OPTION
@click.option("--json", "as_json", is_flag=True, help="JSON (with payloads) instead of a table.")
@click.option("--limit", default=100, show_default=True, type=click.IntRange(min=1))
def dead_letters_list(config_path: str | None, org: str | None, object_: str | None, as_json: bool,
                      limit: int) -> None:
    """Open dead letters, oldest first."""
    orgs = _orgs(config_path, org, need_salesforce=False)
    _one_document(orgs, as_json)
    from .app.ops_commands import dead_letters_list as command

    _run(lambda: _each(orgs, lambda s: command(s, object_, as_json, limit)))


@dead_letters.command("retry")
@CONFIG_OPTION
@ORG_OPTION
@OBJECT_OPTION
@click.option("--id", "ids", multiple=True, type=int, help="Retry these (repeatable); default: every due one.")
@click.option("--all", "force", is_flag=True, help="Retry every open dead letter, due or not.")
def dead_letters_retry(config_path: str | None, org: str | None, object_: str | None, ids: tuple[int, ...],
                       force: bool) -> None:
    """Fetch each dead letter's record from Salesforce again and apply it; exit 1 if any fails again."""
    orgs = _orgs(config_path, org)
    from .app.ops_commands import dead_letters_retry as command

    _run(lambda: _each(orgs, lambda s: command(s, object_, list(ids), force)))


@dead_letters.command("drop")
@CONFIG_OPTION
@ORG_OPTION
@OBJECT_OPTION
@click.option("--id", "ids", multiple=True, type=int, help="Drop these (repeatable).")
@click.option("--all", "everything", is_flag=True, help="Drop every open dead letter (of --object if given).")
def dead_letters_drop(config_path: str | None, org: str | None, object_: str | None, ids: tuple[int, ...],
                      everything: bool) -> None:
    """Mark dead letters resolved without applying them (they stay in the table as history)."""
    if not ids and not everything and not object_:
        _fail(2, "say which dead letters to drop: --id N, --object NAME or --all")
    orgs = _orgs(config_path, org, need_salesforce=False)
    if ids and len(orgs) > 1:  # ids are one org's dead-letter table's
        _fail(2, f"--id names one org's dead letters: add --org NAME (one of {', '.join(s.org for s in orgs)})")
    from .app.ops_commands import dead_letters_drop as command

    _run(lambda: _each(orgs, lambda s: command(s, object_, list(ids))))


@main.command()
@CONFIG_OPTION
@ORG_OPTION
@click.option("--json", "as_json", is_flag=True, help="One JSON document instead of lines.")
def check(config_path: str | None, org: str | None, as_json: bool) -> None:
    """Check that the configuration is ready to run, one line per check: credentials, API version, Pub/Sub, each
    object's describe, key and change-event topic, Postgres and the privileges the first start needs. Creates
    nothing. Exit 0 all good, 1 a check failed, 2 bad configuration."""
    orgs = _orgs(config_path, org)
    _one_document(orgs, as_json)
    from .app.check import check_command

    _run(lambda: _each(orgs, lambda s: check_command(s, as_json)))


@main.command()
@CONFIG_OPTION
@ORG_OPTION
@click.option("--json", "as_json", is_flag=True, help="A JSON list of rows instead of a table.")
@click.option("--objects", "patterns", multiple=True, metavar="A,B",
              help="Only these objects: API names or shell patterns such as '*__c', comma-separated or repeated, "
              "case-insensitive (default: every replicable object; each one listed costs a describe and a GetTopic).")
def discover(config_path: str | None, org: str | None, as_json: bool, patterns: tuple[str, ...]) -> None:
    """The org's replicable objects (queryable and replicateable): for each, whether it publishes change events (its
    topic exists: selected for Change Data Capture), SystemModstamp, candidate keys (External ID and Unique fields),
    its record count, a suggested mode and its mode in this configuration. Needs [salesforce] only. A table on a
    terminal, tab-separated lines when piped. Exit 0, 1 the org unreachable, 2 bad configuration."""
    orgs = _orgs(config_path, org, need_objects=False)
    _one_document(orgs, as_json)
    from .app.discover import discover_command

    names = [n.strip() for p in patterns for n in p.split(",") if n.strip()]
    _run(lambda: _each(orgs, lambda s: discover_command(s, as_json, names)))


@main.command()
@click.option("--from-sim", is_flag=True,
              help="Fill it from the ready line of `replicator sim` on stdin (replicator sim | replicator init "
              "--from-sim); its client secret is printed as an export line on stdout.")
@click.option("--output", "-o", default="replicator.toml", show_default=True, type=click.Path(dir_okay=False),
              help="The file to write.")
@click.option("--force", is_flag=True, help="Replace the file if it exists.")
def init(from_sim: bool, output: str, force: bool) -> None:
    """Write a commented starter configuration: every section to fill, secrets named by their environment
    variables, never written. Exit 0, 2 when the file exists (without --force) or the ready line is not one."""
    from .app.init import init_command

    try:
        code = init_command(from_sim, output, force)
    except ConfigError as exc:
        _fail(2, str(exc))
    sys.exit(code)


@main.group("config")
def config_group() -> None:
    """The configuration: show what is in effect."""


@config_group.command("show")
@CONFIG_OPTION
@click.option("--json", "as_json", is_flag=True, help="JSON instead of TOML.")
def config_show(config_path: str | None, as_json: bool) -> None:
    """The effective configuration (defaults, the file, then the environment, which wins), secrets hidden: TOML in
    the file's shape, each value set from the environment followed by the variable's name."""
    settings = _settings(config_path)
    from .app.config_show import config_show as command

    sys.exit(command(settings, as_json))


@main.command(add_help_option=False, context_settings={"ignore_unknown_options": True, "allow_extra_args": True})
@click.pass_context
def sim(ctx: click.Context) -> None:
    """Run the local Salesforce org simulator in the foreground: OAuth, REST, Bulk API 2.0, Pub/Sub API."""
    # Every argument, --help included, goes to the simulator's own parser: it alone knows the options.
    from .sim.__main__ import main as sim_main

    sys.exit(sim_main(list(ctx.args)))


@main.command()
@click.option("--records", default=20_000, show_default=True, help="Records per object in the simulated org.")
@click.option("--seed", default=1, show_default=True)
@click.option("--duration", default=60.0, show_default=True, type=click.FloatRange(min=1),
              help="Seconds to stream live changes before stopping.")
@click.option("--rate", default=200.0, show_default=True, type=click.FloatRange(min=0),
              help="Changes per second the simulated org makes.")
@click.option("--stop-postgres", is_flag=True, help="Stop the Postgres a previous demo started, and exit.")
@click.pass_context
def demo(ctx: click.Context, records: int, seed: int, duration: float, rate: float, stop_postgres: bool) -> None:
    """Start the simulator with live traffic, backfill and stream its objects into Postgres with a live view,
    stop after --duration, compare every table with the org and print a summary and a psql line."""
    from .app.demo import demo_command

    if stop_postgres:
        from .postgres.server import stop_kept_server

        click.echo("stopped" if stop_kept_server() else "no demo Postgres is running")
        return

    log_json = bool(ctx.parent and ctx.parent.params.get("log_json"))
    _run(lambda: demo_command(records=records, seed=seed, duration=duration, rate=rate, log_json=log_json))


if __name__ == "__main__":
    main()
