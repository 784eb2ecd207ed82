"""The README and docs/ hold together: links resolve, the README stays short, configs load."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
LINK = re.compile(r"\]\(([^)\s]+)\)")


def _prose_lines(path: Path) -> list[tuple[int, str]]:
    """(number, line) outside fenced code blocks."""
    lines, fenced = [], False
    for number, line in enumerate(path.read_text().splitlines(), 1):
        if line.lstrip().startswith("```"):
            fenced = not fenced
            continue
        if not fenced:
            lines.append((number, line))
    return lines


def _relative_links(path: Path) -> list[tuple[int, str]]:
    return [(number, target) for number, line in _prose_lines(path)
            for target in LINK.findall(line)
            if not re.match(r"^(https?:|mailto:|#)", target)]


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.relative_to(ROOT).as_posix())
def test_every_relative_link_resolves(page):
    missing = [f"{page.name}:{number}: {target}" for number, target in _relative_links(page)
               if not (page.parent / target.split("#")[0]).exists()]
    assert not missing, "\n".join(missing)


def test_the_checker_sees_a_broken_link(tmp_path):
    page = tmp_path / "p.md"
    page.write_text("see [a](missing.md) and [b](https://x.org) and `[c](code.md)`\n"
                    "```\n[d](fenced.md)\n```\n")
    assert [t for _, t in _relative_links(page)] == ["missing.md", "code.md"]


def test_the_readme_is_read_in_five_minutes():
    lines = _prose_lines(ROOT / "README.md")
    assert len((ROOT / "README.md").read_text().splitlines()) <= 250
    wide = [f"README.md:{n} ({len(line)} chars)" for n, line in lines if len(line) > 120]
    assert not wide, wide


def test_every_docs_page_is_linked_from_the_readme():
    linked = {(ROOT / target.split("#")[0]).resolve()
              for _, target in _relative_links(ROOT / "README.md")}
    assert {page.resolve() for page in PAGES[1:]} <= linked


@pytest.mark.timeout(120)
@pytest.mark.parametrize("config", sorted((ROOT / "configs").glob("*.yaml")), ids=lambda p: p.name)
def test_every_shipped_config_dry_runs(config):
    done = subprocess.run([sys.executable, "-c", "from harness.cli import main; main()",
                           "bench", "--config", str(config), "--dry-run"],
                          capture_output=True, text=True, timeout=100, cwd=ROOT)
    assert done.returncode == 0, done.stderr[-800:]
    assert "points" in done.stdout, done.stdout[-800:]
