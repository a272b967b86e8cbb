"""Every chapter of _toc.yml is paired with a committed notebook book/<name>.ipynb (what the
Colab and Binder buttons open), in sync with its .md source, starting with the Colab cell."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import nbformat
import pytest

from tools.chapters import (COLAB_MARKER, ROOT, chapter_sources, colab_cell_code, paired_notebook,
                            repository)
from tools.notebooks import notebook_from_myst, sync

CHAPTERS = chapter_sources()


def _cells(nb) -> list[tuple[str, str]]:
    return [(cell.cell_type, cell.source) for cell in nb.cells]


def test_the_toc_has_chapters():
    assert any(p.name == "first_vae.md" for p in CHAPTERS), [p.name for p in CHAPTERS]


@pytest.mark.parametrize("md_path", CHAPTERS, ids=lambda p: p.stem)
def test_paired_notebook_matches_its_source(md_path: Path):
    ipynb_path = paired_notebook(md_path)
    assert ipynb_path.is_file(), f"{ipynb_path.relative_to(ROOT)} is missing: run `make notebooks`"
    committed = nbformat.read(ipynb_path, as_version=4)
    expected = notebook_from_myst(md_path.read_text())
    assert _cells(committed) == _cells(expected), (
        f"{ipynb_path.relative_to(ROOT)} is out of date with {md_path.name}: run `make notebooks`")
    for cell in committed.cells:
        if cell.cell_type == "code":
            assert cell.outputs == [] and cell.execution_count is None, "notebooks are committed without outputs"
    nbformat.validate(committed)


@pytest.mark.parametrize("md_path", CHAPTERS, ids=lambda p: p.stem)
def test_chapter_starts_with_the_colab_cell(md_path: Path):
    nb = notebook_from_myst(md_path.read_text())
    code_cells = [cell for cell in nb.cells if cell.cell_type == "code"]
    first = code_cells[0]
    assert first.source.startswith(COLAB_MARKER), f"{md_path.name}: the Colab cell is missing; run `make notebooks`"
    assert first.source == colab_cell_code(), f"{md_path.name}: the Colab cell is out of date; run `make notebooks`"
    # Hidden on the site; visible (and run first) in Colab.
    assert "remove-cell" in first.metadata.get("tags", [])
    # It sits right after the title: nothing but the title comes before it.
    assert nb.cells[0].cell_type == "markdown" and nb.cells[1] is first


def test_colab_cell_installs_from_the_configured_repository():
    repo = repository()
    code = colab_cell_code()
    assert f'"vae_lib @ git+{repo.url}@{repo.branch}"' in code
    assert "google.colab" in code and "enable_custom_widget_manager" in code


def test_colab_cell_does_nothing_outside_colab():
    assert "google.colab" not in sys.modules
    namespace: dict = {}
    exec(compile(colab_cell_code(), "<colab cell>", "exec"), namespace)
    assert "spec" not in namespace and "output" not in namespace, "the install branch ran outside Colab"


def test_sync_check_detects_a_stale_notebook(tmp_path: Path):
    # A copy of the book's sources in which one chapter changed after `make notebooks`.
    for name in ("_config.yml", "_toc.yml"):
        shutil.copy(ROOT / name, tmp_path / name)
    shutil.copytree(ROOT / "book", tmp_path / "book")
    assert sync(tmp_path, check=True) == []
    md_path = tmp_path / "book" / "first_vae.md"
    md_path.write_text(md_path.read_text().replace("## Summary", "## Summary\n\nA new sentence."))
    assert sync(tmp_path, check=True) == [paired_notebook(md_path)]
    assert sync(tmp_path) == [paired_notebook(md_path)]
    assert sync(tmp_path, check=True) == []


@pytest.mark.slow
def test_first_vae_notebook_runs_without_errors(monkeypatch):
    """The .ipynb Colab opens, executed as a reader would run it (smoke budgets)."""
    from nbclient import NotebookClient

    monkeypatch.setenv("VAE_BOOK_SMOKE", "1")
    monkeypatch.setenv("PYTHONPATH", str(ROOT))
    monkeypatch.setenv("MPLBACKEND", "Agg")
    path = ROOT / "book" / "first_vae.ipynb"
    nb = nbformat.read(path, as_version=4)
    client = NotebookClient(nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(path.parent)}})
    client.execute()  # raises CellExecutionError, naming the cell, on the first error
    code_cells = [cell for cell in nb.cells if cell.cell_type == "code"]
    assert all(cell.execution_count is not None for cell in code_cells)
    errors = [out for cell in code_cells for out in cell.outputs if out.output_type == "error"]
    assert errors == []
    assert any("smoke mode: True" in out.get("text", "") for cell in code_cells for out in cell.outputs)
