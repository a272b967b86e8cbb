"""The student edition (`make student`): every solution removed, site and notebooks; the
exercises still there."""

from __future__ import annotations

import html
import json
import os
import re
from pathlib import Path

import pytest

from tools.chapters import ROOT, chapter_sources, source_path, toc_files
from tools.smoke_site import JUPYTER_CACHE, build_smoke_site
from tools.student_edition import build, find_solutions, strip_solutions

STUDENT = ROOT / "_build" / "test-student"
# Words as they reach the HTML unchanged (no markup, no quotes that smartquotes would curl).
_PLAIN_WORD = re.compile(r"^[A-Za-z][A-Za-z0-9]*(-[A-Za-z0-9]+)*[,.;:]?$")


def _normalise(text: str) -> str:
    return re.sub(r"\s+", " ", text).strip()


def distinctive_phrases(lines: list[str], min_words: int = 6) -> list[str]:
    """Runs of at least min_words plain words from a solution's text: what a reader would see."""
    words = _normalise(" ".join(lines)).split(" ")
    phrases, run = [], []
    for word in words + [""]:
        if _PLAIN_WORD.match(word):
            run.append(word)
            continue
        if len(run) >= min_words:
            phrases.append(" ".join(run).rstrip(",.;:"))
        run = []
    return phrases


def book_solutions() -> list[tuple[str, list[str]]]:
    """(chapter, phrases) for every solution in the book's sources."""
    found = []
    for doc in toc_files():
        path = source_path(doc)
        if path.suffix != ".md":
            continue
        for _, _, sol in find_solutions(path.read_text()):
            found.append((path.stem, distinctive_phrases(sol.body)))
    return found


def exercise_labels() -> list[str]:
    labels = []
    for path in chapter_sources():
        text = path.read_text()
        labels += re.findall(r"```+\{exercise(?:-start)?\}[^\n]*\n(?:[^\n]*\n)*?\s*:label:\s*(\S+)", text)
    return labels


def text_of(path: Path) -> str:
    raw = path.read_text(errors="replace")
    if path.suffix == ".html":
        raw = html.unescape(re.sub(r"<[^>]+>", " ", raw))
    elif path.suffix == ".ipynb":
        nb = json.loads(raw)
        raw = "\n".join("".join(c["source"]) if isinstance(c["source"], list) else c["source"] for c in nb["cells"])
    return _normalise(raw)


# ---- the stripping itself -----------------------------------------------------------------

SAMPLE = """\
(ch)=
# Chapter

```{exercise}
:label: ex-one

Compute the thing.
```

```{solution} ex-one
:label: sol-one
:class: dropdown

The thing equals forty two, as the printed number shows.
```

````{solution} ex-one
:class: dropdown

Four backticks so that a code block can sit inside:

```python
print("secret code line")
```
````

:::{solution} ex-one
:class: dropdown
Colon fenced solution text here.
:::

```{solution-start} ex-one
:class: dropdown
```

Gated solution prose.

```{code-cell} ipython3
gated_solution_code = 1
```

```{solution-end}
```

See {ref}`the first answer <sol-one>`, {ref}`sol-one` and {ref}`ex-one`.

## Summary
"""


def test_strip_removes_every_kind_of_solution_and_keeps_the_exercise():
    stripped, removed = strip_solutions(SAMPLE)
    assert len(removed) == 4
    for secret in ("forty two", "secret code line", "Colon fenced", "Gated solution prose", "gated_solution_code",
                   "{solution"):
        assert secret in SAMPLE and secret not in stripped
    assert "```{exercise}" in stripped and "Compute the thing." in stripped and "## Summary" in stripped
    # References to the removed solution become text; others are kept.
    assert "See the first answer, the solution (not in this edition) and {ref}`ex-one`." in stripped
    assert removed[0].labels == ["sol-one"]


def test_strip_refuses_an_unclosed_solution():
    with pytest.raises(ValueError, match="never closed"):
        strip_solutions("```{solution} ex\n:class: dropdown\n\ntext\n")
    with pytest.raises(ValueError, match="no \\{solution-end\\}"):
        strip_solutions("```{solution-start} ex\n```\ntext\n")


def test_the_book_has_solutions_with_distinctive_text():
    solutions = book_solutions()
    assert len(solutions) >= 2
    for chapter, phrases in solutions:
        assert phrases, f"a solution in {chapter} has no plain-text phrase this test could look for"


# ---- the built edition --------------------------------------------------------------------

@pytest.fixture(scope="session")
def student_edition() -> Path:
    # Smoke mode, sharing the smoke site's execution cache (same code cells: nothing re-runs).
    build_smoke_site()
    old = os.environ.get("VAE_BOOK_SMOKE")
    os.environ["VAE_BOOK_SMOKE"] = "1"
    try:
        build(STUDENT, JUPYTER_CACHE)
    finally:
        if old is None:
            del os.environ["VAE_BOOK_SMOKE"]
        else:
            os.environ["VAE_BOOK_SMOKE"] = old
    return STUDENT


@pytest.mark.slow
def test_no_solution_text_anywhere_in_the_student_edition(student_edition: Path):
    reader_site = build_smoke_site()
    reader_text = " ".join(text_of(p) for p in reader_site.rglob("*.html"))
    files = [p for p in student_edition.rglob("*") if p.is_file() and p.suffix in (".html", ".ipynb", ".md", ".txt", ".js", ".json")]
    assert any(p.name == "searchindex.js" for p in files)
    student_texts = {p: text_of(p) for p in files}
    for chapter, phrases in book_solutions():
        # The phrases are visible on the reader's site, so their absence below means something.
        assert any(phrase in reader_text for phrase in phrases), f"{chapter}: {phrases} not found on the reader's site"
        for phrase in phrases:
            leaks = [str(p.relative_to(student_edition)) for p, text in student_texts.items() if phrase in text]
            assert not leaks, f"solution text {phrase!r} from {chapter} is in the student edition: {leaks}"


@pytest.mark.slow
def test_student_edition_keeps_the_exercises(student_edition: Path):
    labels = exercise_labels()
    assert len(labels) >= 2
    pages = " ".join((student_edition / "html" / p.relative_to(ROOT)).with_suffix(".html").read_text()
                     for p in chapter_sources())
    for label in labels:
        assert f'id="{label}"' in pages, f"exercise {label} is missing from the student site"
    assert "solution" not in " ".join(re.findall(r'class="([^"]*solution[^"]*)"', pages))


@pytest.mark.slow
def test_student_notebooks_one_per_chapter_without_solutions(student_edition: Path):
    for md_path in chapter_sources():
        nb_path = student_edition / "notebooks" / md_path.with_suffix(".ipynb").name
        assert nb_path.is_file(), f"no student notebook for {md_path.name}"
        text = nb_path.read_text()
        assert "{exercise}" in text and "{solution" not in text
        assert "Set-up for Google Colab" in text  # runs in Colab like the reader's notebooks
