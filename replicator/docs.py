"""Generates the documentation's reference tables from the code that defines them (`python -m replicator.docs`).

Each block lives in one page of docs/ (`PAGES`), between its `<!-- NAME:start -->` and `<!-- NAME:end -->` markers.
A test (tests/unit/test_docs.py) checks every page holds exactly this text, so the documentation cannot drift from
the settings.
"""

from __future__ import annotations

from pydantic import BaseModel

from .config import (
    BackfillSettings,
    HistorySettings,
    ObjectSettings,
    PollSettings,
    PostgresSettings,
    SalesforceSettings,
    ServiceSettings,
    Settings,
    StreamSettings,
)
from .lifecycle import diagram, handoff_table
from .pipeline.schema import PG_TYPES, SKIPPED_TYPES

SECTIONS: list[tuple[str, type[BaseModel]]] = [
    ("salesforce", SalesforceSettings),
    ("postgres", PostgresSettings),
    ("backfill", BackfillSettings),
    ("stream", StreamSettings),
    ("service", ServiceSettings),
    ("poll", PollSettings),
    ("history", HistorySettings),
    ("objects.NAME", ObjectSettings),
]


def _default(field) -> str:
    d = field.get_default(call_default_factory=True)
    if d is None or d == "":
        return "—"
    if hasattr(d, "value"):
        d = d.value
    return f"`{d}`"


def config_table() -> str:
    lines = ["| key | default | environment | meaning |", "|---|---|---|---|"]
    for section, model in SECTIONS:
        for name, field in model.model_fields.items():
            key = field.alias or name
            env = (
                f"`REPLICATOR_{section.upper()}__{key.upper()}`"
                if section != "objects.NAME"
                else f"`REPLICATOR_OBJECTS__NAME__{key.upper()}`"
            )
            if section == "postgres" and key == "url":
                env = "`DATABASE_URL` or " + env
            desc = (field.description or "").replace("|", "\\|")
            lines.append(f"| `{section}.{key}` | {_default(field)} | {env} | {desc} |")
    orgs = (Settings.model_fields["orgs"].description or "").replace("|", "\\|")
    lines.append(f"| `orgs.NAME` | — | — | {orgs} |")
    return "\n".join(lines)


def type_table() -> str:
    lines = ["| Salesforce describe type | Postgres type |", "|---|---|"]
    for sf, pg in PG_TYPES.items():
        lines.append(f"| `{sf}` | `{pg}` |")
    lines.append(f"| {', '.join(f'`{t}`' for t in sorted(SKIPPED_TYPES))} | not replicated (compound fields arrive as "
                 "their components; Bulk queries reject them) |")
    lines.append("| any other type | `text` |")
    return "\n".join(lines)


def metrics_table() -> str:
    from .observe.metrics import CATALOGUE

    lines = ["| metric | type | labels | meaning |", "|---|---|---|---|"]
    for name, kind, labels, doc in CATALOGUE:
        doc = doc.replace("|", "\\|")
        lines.append(f"| `{name}` | {kind} | {labels or '—'} | {doc} |")
    return "\n".join(lines)


BLOCKS = {"config": config_table, "types": type_table, "metrics": metrics_table, "lifecycle": diagram,
          "handoffs": handoff_table}

# The page (relative to the repository root) that holds each generated block.
PAGES: dict[str, tuple[str, ...]] = {
    "docs/configuration.md": ("config",),
    "docs/tables.md": ("types",),
    "docs/operating.md": ("metrics",),
    "docs/lifecycle.md": ("lifecycle", "handoffs"),
}


def render(text: str, names: tuple[str, ...]) -> str:
    """`text` with each named generated block (between its start and end markers) rewritten. A block whose markers
    are missing, or appear more than once, is an error: the page must hold it exactly once."""
    for name in names:
        make = BLOCKS[name]
        start, end = f"<!-- {name}:start -->", f"<!-- {name}:end -->"
        if text.count(start) != 1 or text.count(end) != 1:
            raise ValueError(f"the markers of block {name!r} must appear exactly once ({start} … {end})")
        head, rest = text.split(start, 1)
        _, tail = rest.split(end, 1)
        text = f"{head}{start}\n{make()}\n{end}{tail}"
    return text


def main() -> None:
    """Rewrite every page that holds a generated block, in place (run from the repository root)."""
    from pathlib import Path

    for page, names in PAGES.items():
        path = Path(page)
        text = path.read_text()
        rendered = render(text, names)
        if rendered != text:
            path.write_text(rendered)


if __name__ == "__main__":
    main()
