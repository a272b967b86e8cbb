"""Every chapter follows the book's skeleton (STYLE.md): checked on the MyST sources."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
# Pages that are not chapters: the landing page and the reference pages.
NOT_CHAPTERS = {"book/index", "book/glossary", "book/references"}


def toc_files() -> list[str]:
    toc = yaml.safe_load((ROOT / "_toc.yml").read_text())
    files = [toc["root"]]
    for part in toc.get("parts", []):
        files += [c["file"] for c in part.get("chapters", [])]
    return files


CHAPTERS = [f for f in toc_files() if f not in NOT_CHAPTERS]


def test_toc_files_exist_and_every_book_page_is_listed():
    listed = set(toc_files())
    for f in listed:
        assert (ROOT / f"{f}.md").is_file(), f"{f}.md is in _toc.yml but missing"
    on_disk = {str(p.relative_to(ROOT).with_suffix("")) for p in (ROOT / "book").glob("*.md")}
    assert on_disk <= listed, f"pages not in _toc.yml: {sorted(on_disk - listed)}"


@pytest.mark.parametrize("chapter", CHAPTERS)
def test_chapter_skeleton(chapter):
    text = (ROOT / f"{chapter}.md").read_text()
    assert text.startswith("---\njupytext:"), "jupytext header first"
    assert re.search(r"kernelspec:\n(  .*\n)*  name: python3", text), "kernelspec python3"
    headings = re.findall(r"^## (.+)$", text, flags=re.M)
    assert headings[0] == "Overview", f"first section must be Overview, got {headings[:1]}"
    assert "Exercises" in headings and headings[-1] == "Summary", headings
    assert text.count("```{code-cell}") >= 1


@pytest.mark.parametrize("chapter", CHAPTERS)
def test_chapter_has_two_exercises_with_dropdown_solutions(chapter):
    text = (ROOT / f"{chapter}.md").read_text()
    labels = re.findall(r"```{exercise}[^\n]*\n:label: ([\w-]+)", text)
    assert len(labels) >= 2, f"{chapter}: at least two exercises, found {len(labels)}"
    for label in labels:
        m = re.search(rf"```{{solution}} {label}\n((?::[^\n]*\n)*)", text)
        assert m, f"{chapter}: exercise {label} has no solution"
        assert ":class: dropdown" in m.group(1), f"{chapter}: solution of {label} must be a dropdown"
    # sphinx-exercise's gated syntax crashes with hide_solutions (sphinx-exercise#89).
    assert "exercise-start" not in text and "solution-start" not in text
