"""Test curves on part of the test set (runs.n_test). Resume equality is in test_train.py."""

from __future__ import annotations

import pytest

from vae_lib.model import VAEConfig
from vae_lib.runs import run_fingerprint, train_vae
from vae_lib.train import TrainConfig, fingerprint_hash

CONFIG = VAEConfig(hidden_dims=(32,), z_dim=4)


def test_n_test_enters_the_fingerprint_only_when_given():
    args = (CONFIG, TrainConfig(), "static", 1.0, 0, 1000)
    assert "n_test" not in run_fingerprint(*args)
    assert fingerprint_hash(run_fingerprint(*args, 500)) != fingerprint_hash(run_fingerprint(*args))


def test_train_vae_with_n_test(mnist, tmp_path, monkeypatch):
    monkeypatch.setenv("VAE_LIB_CACHE", str(tmp_path))
    config = TrainConfig(epochs=1, batch_size=100, progress=False)
    run = train_vae(CONFIG, config, "static", n_train=200, n_test=50, data=mnist, device="cpu")
    assert run.info["fingerprint"]["n_test"] == 50 and len(run.history["test_elbo"]) == 1
    assert train_vae(CONFIG, config, "static", n_train=200, n_test=50, data=mnist, device="cpu").info["cached"]
    with pytest.raises(ValueError, match="n_test"):
        train_vae(CONFIG, config, "static", n_train=200, n_test=0, data=mnist, device="cpu")
