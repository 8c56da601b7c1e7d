"""The documentation's reference tables are generated from the settings, the type map, the metrics catalogue and
the lifecycle; they must not drift (replicator/docs.py writes them into the docs/ pages that hold them)."""

import re
from pathlib import Path

import pytest

from replicator.docs import BLOCKS, PAGES, render

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("page", sorted(PAGES))
def test_generated_blocks_are_current(page):
    text = (ROOT / page).read_text()
    assert render(text, PAGES[page]) == text, f"{page} is stale: run `python -m replicator.docs`"


def test_every_block_has_one_page_and_no_other_file_holds_markers():
    placed = [name for names in PAGES.values() for name in names]
    assert sorted(placed) == sorted(BLOCKS), "each generated block lives in exactly one page"
    for path in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]:
        rel = path.relative_to(ROOT).as_posix()
        found = set(re.findall(r"<!-- (\w+):start -->", path.read_text()))
        assert found == set(PAGES.get(rel, ())), f"{rel} holds generated blocks {sorted(found)}"


def test_render_refuses_a_page_without_its_markers():
    with pytest.raises(ValueError, match="config"):
        render("no markers here", ("config",))
