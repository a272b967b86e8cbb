"""The student edition: the book's site and notebooks with every exercise solution removed.

    python -m tools.student_edition [--out _build/student] [--cache DIR]    (or: make student)

1. copies the book's sources (_config.yml, _toc.yml, *.bib, book/ without its paired notebooks)
   to <out>/src;
2. strips every `{solution}` directive, and every `{solution-start}` ... `{solution-end}` span
   (code cells included), from the MyST sources, and rewrites references to a removed
   solution's label as plain text, so nothing points at a missing target;
3. builds the site there (execution, -W, as `make book`) and puts it in <out>/html;
4. writes each chapter's notebook, stripped the same way, to <out>/notebooks/<name>.ipynb.

Solutions are removed at the source rather than with sphinx-exercise's `hide_solutions`
option, which crashes on the gated syntax (sphinx-exercise#89) and would leave the solutions
in the notebooks. The exercises stay, with their numbers and labels.

Code cells are unchanged, so the build reuses the reader's site's execution cache: by default
`make book`'s (_build/.jupyter_cache), or `make book-smoke`'s when VAE_BOOK_SMOKE is set.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import nbformat
import yaml

from tools.chapters import ROOT, chapter_sources, source_path, toc_files
from tools.notebooks import notebook_from_myst, notebook_text

# Opening line of a MyST directive: fence (``` or ~~~ or :::, 3 or more) then {name}.
_OPENING = re.compile(r"^(?P<indent>[ \t]*)(?P<fence>`{3,}|~{3,}|:{3,})\{(?P<name>[A-Za-z0-9_:-]+)\}(?P<rest>.*)$")
_OPTION_LABEL = re.compile(r"^\s*:label:\s*(\S+)\s*$")
_TARGET = re.compile(r"^\s*\((?P<label>[^()\s]+)\)=\s*$")
_ROLE = re.compile(r"\{(?P<role>ref|numref|solref|prf:ref)\}`(?P<body>[^`]*)`")
_MD_LINK = re.compile(r"\[(?P<text>[^\]]*)\]\(#(?P<label>[^)\s]+)\)")


@dataclass
class Solution:
    """One removed solution: its source lines and the labels it defined."""

    lines: list[str]
    labels: list[str] = field(default_factory=list)

    @property
    def body(self) -> list[str]:
        """The text lines of the solution, without fences, directive options and targets."""
        out = []
        for line in self.lines:
            if _OPENING.match(line) or re.match(r"^\s*(`{3,}|~{3,}|:{3,})\s*$", line):
                continue
            if re.match(r"^\s*:[\w-]+:", line) or _TARGET.match(line):
                continue
            out.append(line)
        return out


def _closing(lines: list[str], start: int) -> int:
    """Index of the line closing the directive opened at lines[start]."""
    match = _OPENING.match(lines[start])
    char, length = match["fence"][0], len(match["fence"])
    closing = re.compile(r"^[ \t]*" + re.escape(char) + "{" + str(length) + r",}\s*$")
    for j in range(start + 1, len(lines)):
        if closing.match(lines[j]):
            return j
    raise ValueError(f"the {{{match['name']}}} directive opened at line {start + 1} is never closed")


def find_solutions(text: str) -> list[tuple[int, int, Solution]]:
    """(first line, last line, Solution) of every solution, gated spans included."""
    lines = text.splitlines()
    found = []
    i = 0
    while i < len(lines):
        match = _OPENING.match(lines[i])
        if match and match["name"] in ("solution", "solution-start"):
            if match["name"] == "solution":
                end = _closing(lines, i)
            else:
                end = None
                for j in range(i + 1, len(lines)):
                    inner = _OPENING.match(lines[j])
                    if inner and inner["name"] == "solution-end":
                        end = _closing(lines, j)
                        break
                if end is None:
                    raise ValueError(f"{{solution-start}} at line {i + 1} has no {{solution-end}}")
            block = lines[i:end + 1]
            labels = [m.group(1) for line in block if (m := _OPTION_LABEL.match(line))]
            labels += [m["label"] for line in block if (m := _TARGET.match(line))]
            found.append((i, end, Solution(block, labels)))
            i = end + 1
        else:
            i += 1
    return found


def strip_solutions(text: str) -> tuple[str, list[Solution]]:
    """`text` without its solutions, and the solutions removed.

    References to a removed solution's label become plain text: `{ref}`Answer <sol-1>`` becomes
    "Answer", a bare `{ref}`sol-1`` "the solution (not in this edition)".
    """
    spans = find_solutions(text)
    if not spans:
        return text, []
    lines = text.splitlines(keepends=True)
    kept: list[str] = []
    previous = 0
    for start, end, _ in spans:
        kept.extend(lines[previous:start])
        previous = end + 1
    kept.extend(lines[previous:])
    out = "".join(kept)
    removed_labels = {label for _, _, sol in spans for label in sol.labels}

    def role(match: re.Match) -> str:
        body = match["body"]
        explicit = re.match(r"^(?P<title>.*?)\s*<(?P<label>[^<>]+)>$", body, re.DOTALL)
        label = explicit["label"] if explicit else body
        if label not in removed_labels:
            return match.group(0)
        return explicit["title"] if explicit and explicit["title"] else "the solution (not in this edition)"

    out = _ROLE.sub(role, out)
    out = _MD_LINK.sub(lambda m: m["text"] if m["label"] in removed_labels else m.group(0), out)
    out = re.sub(r"\n{4,}", "\n\n\n", out)
    return out, [sol for _, _, sol in spans]


def _copy_sources(src: Path) -> None:
    if src.exists():
        shutil.rmtree(src)
    src.mkdir(parents=True)
    for name in ("_config.yml", "_toc.yml"):
        shutil.copy2(ROOT / name, src / name)
    for bib in ROOT.glob("*.bib"):
        shutil.copy2(bib, src / bib.name)
    # The paired notebooks hold the solutions and are not part of the site: left out.
    paired = {p.with_suffix(".ipynb").name for p in chapter_sources()}
    shutil.copytree(ROOT / "book", src / "book",
                    ignore=lambda folder, names: [n for n in names if n in paired or n == ".ipynb_checkpoints"])
    # web/site holds the front-end files the site serves itself (html_extra_path, `make widget-js`).
    for folder in ("_static", "_templates", "images", "figures", "web/site"):
        if (ROOT / folder).is_dir():
            shutil.copytree(ROOT / folder, src / folder)


def _student_config(src: Path, cache: Path | None) -> None:
    path = src / "_config.yml"
    config = yaml.safe_load(path.read_text())
    config["title"] = f"{config.get('title', 'The book')} (student edition)"
    # The launch buttons would open the repository's notebooks, which hold the solutions; the
    # download button offers this edition's notebook instead.
    config["launch_buttons"] = {"binderhub_url": "", "colab_url": ""}
    if cache is not None:
        config.setdefault("execute", {})["cache"] = str(cache.resolve())
    path.write_text("# Generated by tools/student_edition.py from the book's _config.yml.\n"
                    + yaml.safe_dump(config, sort_keys=False))


def strip_tree(src: Path) -> list[Solution]:
    """Strip the solutions of every MyST (and notebook) source under src/book, in place."""
    removed: list[Solution] = []
    for doc in toc_files(src):
        path = source_path(doc, src)
        if path.suffix == ".md":
            text, sols = strip_solutions(path.read_text())
            path.write_text(text)
            removed += sols
        elif path.suffix == ".ipynb":
            nb = nbformat.read(path, as_version=4)
            for cell in nb.cells:
                if cell.cell_type == "markdown":
                    cell.source, sols = strip_solutions(cell.source)
                    removed += sols
            nbformat.write(nb, path)
    return removed


def default_cache() -> Path:
    smoke = os.environ.get("VAE_BOOK_SMOKE", "").strip().lower() not in ("", "0", "false", "no")
    return ROOT / "_build" / ("smoke/_build/.jupyter_cache" if smoke else ".jupyter_cache")


def build(out: Path, cache: Path | None = None) -> dict:
    """Build the student edition into `out`; return what was done (for the caller's report)."""
    out = out if out.is_absolute() else ROOT / out
    src, build_dir = out / "src", out / "build"
    _copy_sources(src)
    _student_config(src, cache)
    removed = strip_tree(src)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    jupyter_book = Path(sys.executable).parent / "jupyter-book"
    cmd = [str(jupyter_book), "build", str(src), "--warningiserror", "--keep-going", "--builder", "html",
           "--path-output", str(build_dir)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"the student edition's build failed:\n{proc.stdout[-6000:]}\n{proc.stderr[-3000:]}")
    html = out / "html"
    if html.exists():
        shutil.rmtree(html)
    shutil.copytree(build_dir / "_build" / "html", html)
    notebooks = out / "notebooks"
    if notebooks.exists():
        shutil.rmtree(notebooks)
    notebooks.mkdir(parents=True)
    written = []
    for md_path in chapter_sources(src):
        target = notebooks / md_path.with_suffix(".ipynb").name
        if target.exists():
            raise ValueError(f"two chapters are named {md_path.stem}; rename one")
        target.write_text(notebook_text(notebook_from_myst(md_path.read_text())))
        written.append(target)
    return {"removed": removed, "html": html, "notebooks": written}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Build the student edition (site and notebooks, no solutions).")
    parser.add_argument("--out", type=Path, default=Path("_build/student"),
                        help="output folder: <out>/html, <out>/notebooks (default: _build/student)")
    parser.add_argument("--cache", type=Path, default=None,
                        help="jupyter-cache folder to share (default: `make book`'s _build/.jupyter_cache, or "
                             "`make book-smoke`'s when VAE_BOOK_SMOKE=1)")
    args = parser.parse_args(argv)
    result = build(args.out, args.cache or default_cache())
    print(f"removed {len(result['removed'])} solutions; site: {result['html']}/index.html; "
          f"{len(result['notebooks'])} notebooks in {result['html'].parent / 'notebooks'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
