"""The smoke-mode site the tests read: built once into _build/test-site, reused while fresh.

(conftest's `smoke_site` fixture builds into the same folder; the lead may merge the two.)
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from tools.chapters import ROOT

SITE = ROOT / "_build" / "test-site"
HTML = SITE / "_build" / "html"
JUPYTER_CACHE = SITE / "_build" / ".jupyter_cache"


def newest_source_mtime(root: Path = ROOT) -> float:
    paths = [root / "_config.yml", root / "_toc.yml", *root.glob("*.bib")]
    for folder in ("book", "vae_lib"):
        paths += [p for p in (root / folder).rglob("*") if p.is_file() and "__pycache__" not in p.parts]
    return max(p.stat().st_mtime for p in paths if p.exists())


def build_smoke_site() -> Path:
    """Build the site in smoke mode (VAE_BOOK_SMOKE=1, -W) into _build/test-site unless a build
    newer than every source is there; return its html folder."""
    index = HTML / "index.html"
    if index.is_file() and index.stat().st_mtime > newest_source_mtime():
        return HTML
    env = {**os.environ, "VAE_BOOK_SMOKE": "1", "PYTHONPATH": str(ROOT), "MPLBACKEND": "Agg"}
    jupyter_book = Path(sys.executable).parent / "jupyter-book"
    cmd = [str(jupyter_book), "build", str(ROOT), "--warningiserror", "--keep-going", "--builder", "html",
           "--path-output", str(SITE)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=1800)
    if proc.returncode != 0:
        raise RuntimeError(f"smoke build failed:\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}")
    index.touch()  # a build that reused cached pages still counts as newer than the sources
    return HTML
