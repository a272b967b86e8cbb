"""Interrupt and resume (book/training.md), and test curves on part of the test set (runs.n_test)."""

from __future__ import annotations

import pytest
import torch

from vae_lib.data import binarization_transform
from vae_lib.losses import ELBOLoss
from vae_lib.model import VAE, VAEConfig
from vae_lib.runs import run_fingerprint, train_vae
from vae_lib.train import TrainConfig, Trainer, fingerprint_hash, seed_everything

CONFIG = VAEConfig(hidden_dims=(32,), z_dim=4)


class Interrupt(Exception):
    pass


def _trainer(model, x, path, epochs, callbacks=()):
    _, transform = binarization_transform(x, "dynamic")
    return Trainer(model, ELBOLoss(), TrainConfig(epochs=epochs, batch_size=64, progress=False),
                   checkpoint_path=path, epoch_transform=transform, callbacks=list(callbacks))


def test_interrupted_and_resumed_run_equals_uninterrupted(mnist, tmp_path):
    x = mnist.x_train[:500]
    seed_everything(0)
    straight = VAE(CONFIG)
    _trainer(straight, x, tmp_path / "a.pt", 4).fit(x)

    def stop_after_two(trainer):
        if trainer.epoch == 2:
            raise Interrupt

    seed_everything(0)
    with pytest.raises(Interrupt):
        _trainer(VAE(CONFIG), x, tmp_path / "b.pt", 4, [stop_after_two]).fit(x)
    seed_everything(99)  # another initialisation and RNG state: the checkpoint must restore all
    resumed = VAE(CONFIG)
    result = _trainer(resumed, x, tmp_path / "b.pt", 4).fit(x)
    assert result.epochs_run == 2 and len(result.history["train_elbo"]) == 4
    for (name, a), (_, b) in zip(straight.state_dict().items(), resumed.state_dict().items()):
        assert torch.equal(a, b), name


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
