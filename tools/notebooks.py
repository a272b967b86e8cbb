"""Pair every chapter of _toc.yml with a committed notebook: `make notebooks`.

For each MyST chapter book/<name>.md this

1. puts the standard Colab set-up cell (tools.chapters.colab_cell_code, derived from
   _config.yml's repository) right after the title, or updates it, and
2. writes book/<name>.ipynb from the .md with jupytext: no outputs, deterministic cell ids,
   so re-running it on unchanged chapters changes no file.

The .md files are the sources; the .ipynb files exist so that Colab (which opens only notebooks)
and Binder have something to open, and the site's launch buttons link to them.

    python -m tools.notebooks           # update the notebooks (and the Colab cells)
    python -m tools.notebooks --check   # exit 1, listing them, if any is out of date
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import jupytext
import nbformat

from tools.chapters import ROOT, chapter_sources, paired_notebook, with_colab_cell


def notebook_from_myst(text: str) -> nbformat.NotebookNode:
    """The notebook form of a MyST chapter: cells and kernelspec only, no outputs."""
    nb = jupytext.reads(text, fmt="md:myst")
    nb.metadata = {
        "kernelspec": nb.metadata.get("kernelspec", {"name": "python3", "display_name": "Python 3", "language": "python"}),
        "language_info": {"name": "python"},
    }
    nb.nbformat, nb.nbformat_minor = 4, 5
    for i, cell in enumerate(nb.cells):
        # Deterministic ids: regenerating an unchanged chapter gives a byte-identical file.
        cell["id"] = f"cell-{i}"
        if cell.cell_type == "code":
            cell.outputs, cell.execution_count = [], None
    return nb


def notebook_text(nb: nbformat.NotebookNode) -> str:
    return nbformat.writes(nb) + "\n"


def sync(root: Path = ROOT, check: bool = False) -> list[Path]:
    """Bring every chapter's Colab cell and paired notebook up to date; return the files that
    were (or, with check=True, would be) changed."""
    changed: list[Path] = []
    for md_path in chapter_sources(root):
        text = md_path.read_text()
        new_text = with_colab_cell(text, root)
        if new_text != text:
            changed.append(md_path)
            if not check:
                md_path.write_text(new_text)
        ipynb_path = paired_notebook(md_path)
        nb_text = notebook_text(notebook_from_myst(new_text))
        if not ipynb_path.is_file() or ipynb_path.read_text() != nb_text:
            changed.append(ipynb_path)
            if not check:
                ipynb_path.write_text(nb_text)
    return changed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true",
                        help="change nothing; exit 1 and list the files `make notebooks` would change")
    args = parser.parse_args(argv)
    changed = sync(check=args.check)
    for path in changed:
        print(f"{'out of date' if args.check else 'updated'}: {path.relative_to(ROOT)}")
    if args.check and changed:
        print("run `make notebooks` and commit the result", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
