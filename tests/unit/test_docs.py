"""The README's reference tables are generated from the settings and the type map; they must not drift."""

from pathlib import Path

from replicator.docs import render_readme


def test_readme_reference_tables_are_current():
    readme = Path(__file__).resolve().parents[2] / "README.md"
    text = readme.read_text()
    assert render_readme(text) == text, "README is stale: run `python -m replicator.docs`"
