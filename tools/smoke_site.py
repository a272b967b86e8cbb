"""The smoke-mode site the tests read: built once into _build/test-site, reused while fresh.

Used by the `smoke_site` fixture in tests/conftest.py and by the student-edition tests.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

from tools.chapters import ROOT

SITE = ROOT / "_build" / "test-site"
HTML = SITE / "_build" / "html"
JUPYTER_CACHE = SITE / "_build" / ".jupyter_cache"
STAMP = SITE / "built.stamp"
# Everything the built pages depend on; a change to any of them triggers a rebuild.
SITE_INPUTS = ("book", "vae_lib", "_config.yml", "_toc.yml", "references.bib", "web/site", "web/package-lock.json")


def newest_mtime(paths=SITE_INPUTS) -> float:
    newest = 0.0
    for path in paths:
        path = ROOT / path
        files = [path] if path.is_file() else [p for p in path.rglob("*") if p.is_file()]
        newest = max([newest, *(f.stat().st_mtime for f in files if "__pycache__" not in f.parts)])
    return newest


def build_smoke_site() -> Path:
    """Build the site in smoke mode (VAE_BOOK_SMOKE=1, warnings are errors) into
    _build/test-site unless a build newer than every input is there; return its html folder.
    A change to vae_lib also drops the execution cache, because jupyter-cache keys on the
    chapters' code cells only."""
    if STAMP.is_file() and STAMP.stat().st_mtime >= newest_mtime():
        return HTML
    if STAMP.is_file() and newest_mtime(["vae_lib"]) > STAMP.stat().st_mtime:
        shutil.rmtree(SITE)
    # The front-end files the site serves itself (require.js, html-manager, anywidget, MathJax).
    make = subprocess.run(["make", "-C", str(ROOT), "widget-js"], capture_output=True, text=True)
    if make.returncode:
        raise RuntimeError(f"`make widget-js` failed (needs npm):\n{make.stdout[-3000:]}{make.stderr[-3000:]}")
    env = {**os.environ, "VAE_BOOK_SMOKE": "1", "MPLBACKEND": "Agg",
           "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    jupyter_book = Path(sys.executable).with_name("jupyter-book")
    cmd = [str(jupyter_book), "build", str(ROOT), "--path-output", str(SITE),
           "--warningiserror", "--keep-going", "--builder", "html"]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=1800)
    if proc.returncode:
        raise RuntimeError(f"the smoke build of the book failed:\n{proc.stdout[-6000:]}\n{proc.stderr[-3000:]}")
    STAMP.touch()
    return HTML
