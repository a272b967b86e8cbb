"""The book's chapters and settings as the tools see them: _toc.yml, _config.yml, and the
Colab set-up cell every chapter notebook starts with.

Everything is driven by _toc.yml, so a chapter added there is picked up by `make notebooks`,
`make student` and the tests without further changes.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

import yaml

ROOT = Path(__file__).resolve().parents[1]

# The first line of the Colab cell: how the tools recognise (and update) it in a chapter.
COLAB_MARKER = "# Set-up for Google Colab"


def load_config(root: Path = ROOT) -> dict:
    return yaml.safe_load((root / "_config.yml").read_text())


def load_toc(root: Path = ROOT) -> dict:
    return yaml.safe_load((root / "_toc.yml").read_text())


def toc_files(root: Path = ROOT) -> list[str]:
    """Every document of _toc.yml (root first, then in order), as written there: 'book/x'."""
    toc = load_toc(root)
    found: list[str] = []

    def walk(node) -> None:
        if isinstance(node, dict):
            if "file" in node:
                found.append(str(node["file"]))
            for key in ("parts", "chapters", "sections"):
                for child in node.get(key, []) or []:
                    walk(child)
        elif isinstance(node, list):
            for child in node:
                walk(child)

    found.append(str(toc["root"]))
    walk({k: v for k, v in toc.items() if k != "root"})
    return found


def source_path(doc: str, root: Path = ROOT) -> Path:
    """The source file of a _toc.yml entry (its suffix may be omitted there)."""
    path = root / doc
    if path.suffix in (".md", ".ipynb") and path.is_file():
        return path
    for suffix in (".md", ".ipynb", ".rst"):
        if path.with_suffix(suffix).is_file():
            return path.with_suffix(suffix)
    raise FileNotFoundError(f"_toc.yml lists {doc!r} but there is no {doc}.md in {root}")


_FRONT_MATTER = re.compile(r"\A---\n(.*?)\n---\n", re.DOTALL)


def is_notebook(md_path: Path) -> bool:
    """A MyST Markdown notebook: front matter with a jupytext or kernelspec entry."""
    match = _FRONT_MATTER.match(md_path.read_text())
    if not match:
        return False
    meta = yaml.safe_load(match.group(1)) or {}
    return "kernelspec" in meta or "jupytext" in meta


def chapter_sources(root: Path = ROOT) -> list[Path]:
    """The .md notebooks of _toc.yml: the chapters that get a paired .ipynb and launch buttons."""
    paths = [source_path(doc, root) for doc in toc_files(root)]
    return [p for p in paths if p.suffix == ".md" and is_notebook(p)]


def paired_notebook(md_path: Path) -> Path:
    """book/<name>.md -> book/<name>.ipynb: next to its source, because the theme's launch
    buttons link to <page>.ipynb when that file exists beside <page>.md."""
    return md_path.with_suffix(".ipynb")


@dataclass(frozen=True)
class Repository:
    url: str  # https://github.com/<org>/<repo>
    branch: str
    org: str
    name: str

    @property
    def pip_spec(self) -> str:
        return f"vae_lib @ git+{self.url}@{self.branch}"


def repository(root: Path = ROOT) -> Repository:
    """_config.yml's repository: the one place the repository's address is written."""
    repo = load_config(root).get("repository") or {}
    url = str(repo.get("url", "")).rstrip("/")
    parts = urlparse(url).path.strip("/").split("/")
    if not url.startswith("https://github.com/") or len(parts) != 2:
        raise ValueError(f"_config.yml repository.url must be https://github.com/<org>/<repo>, got {url!r}")
    return Repository(url, str(repo.get("branch", "main")), parts[0], parts[1])


def colab_cell_code(root: Path = ROOT) -> str:
    """The code of the set-up cell: installs vae_lib in Colab, does nothing anywhere else."""
    repo = repository(root)
    return f'''{COLAB_MARKER} (does nothing elsewhere): install the book's library, vae_lib,
# from the repository, and enable Colab's widget manager for the interactive figures.
# Written by `make notebooks` from _config.yml's repository: edit it there, not here.
import sys

if "google.colab" in sys.modules:
    import subprocess

    spec = "{repo.pip_spec}"
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", spec], check=True)
    from google.colab import output

    output.enable_custom_widget_manager()'''


def colab_cell_myst(root: Path = ROOT) -> str:
    """The set-up cell as MyST: removed from the rendered page (`remove-cell`), kept in notebooks."""
    return "```{code-cell} ipython3\n:tags: [remove-cell]\n\n" + colab_cell_code(root) + "\n```\n"


_COLAB_CELL = re.compile(
    r"```\{code-cell\}[^\n]*\n(?::[^\n]*\n)*\n?" + re.escape(COLAB_MARKER) + r".*?\n```\n", re.DOTALL
)
_HEADING = re.compile(r"^# .*\n", re.MULTILINE)


def with_colab_cell(text: str, root: Path = ROOT) -> str:
    """The chapter's MyST text with the current set-up cell right after its title (replacing an
    older version of the cell if there is one)."""
    cell = colab_cell_myst(root)
    if _COLAB_CELL.search(text):
        return _COLAB_CELL.sub(lambda _: cell, text, count=1)
    body_start = _FRONT_MATTER.match(text).end() if _FRONT_MATTER.match(text) else 0
    heading = _HEADING.search(text, body_start)
    at = heading.end() if heading else body_start
    return text[:at] + "\n" + cell + text[at:]
