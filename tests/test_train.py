"""The trainer and the run cache: determinism, resume, checkpoints, NaN handling, bad inputs."""

from __future__ import annotations

import json

import pytest
import torch

from vae_lib.data import binarize_fixed, binarize_sample
from vae_lib.losses import ELBOLoss
from vae_lib.model import VAE, VAEConfig
from vae_lib.runs import train_vae
from vae_lib.train import (
    CheckpointMismatchError,
    NonFiniteLossError,
    TrainConfig,
    Trainer,
    seed_everything,
)

SMALL = VAEConfig(hidden_dims=(64,), z_dim=4)


@pytest.fixture(scope="module")
def small_data(mnist):
    """2,000 real training images (grey levels) and 500 statically binarized test images."""
    return mnist.x_train[:2000], binarize_fixed(mnist.x_test[:500], seed=1)


def make_trainer(config=SMALL, epochs=3, checkpoint=None, seed=0, **kw):
    seed_everything(seed)
    model = VAE(config)
    tc = TrainConfig(epochs=epochs, batch_size=100, seed=seed, progress=False)
    return Trainer(model, ELBOLoss(), tc, checkpoint_path=checkpoint, epoch_transform=binarize_sample, **kw)


def params(model):
    return torch.cat([p.detach().flatten() for p in model.parameters()])


def test_history_has_train_and_test_curves(small_data):
    result = make_trainer(epochs=2).fit(*small_data)
    for split in ("train", "test"):
        for q in ("elbo", "recon", "kl"):
            assert len(result.history[f"{split}_{q}"]) == 2
    h = result.history
    # ELBO = reconstruction - KL, per epoch, up to float32 summation error.
    for e in range(2):
        assert abs(h["test_elbo"][e] - (h["test_recon"][e] - h["test_kl"][e])) < 1e-3
    assert h["train_elbo"][1] > h["train_elbo"][0], "a second epoch of Adam must improve the ELBO"


def test_seeded_cpu_training_is_deterministic(small_data):
    a = make_trainer(epochs=2).fit(*small_data)
    b = make_trainer(epochs=2).fit(*small_data)
    assert torch.equal(params(a.model), params(b.model))
    assert a.history == b.history
    c = make_trainer(epochs=2, seed=1).fit(*small_data)
    assert not torch.equal(params(a.model), params(c.model))


class Interrupt(Exception):
    pass


def test_interrupted_and_resumed_run_equals_uninterrupted(small_data, tmp_path):
    straight = make_trainer(epochs=3).fit(*small_data)

    def stop_after_two(trainer):
        if trainer.epoch == 2:
            raise Interrupt  # as if the process died right after the epoch-2 checkpoint

    checkpoint = tmp_path / "ckpt.pt"
    with pytest.raises(Interrupt):
        make_trainer(epochs=3, checkpoint=checkpoint, callbacks=[stop_after_two]).fit(*small_data)
    # A new process: fresh objects, a different global RNG state; only the checkpoint carries over.
    torch.manual_seed(999)
    resumed_trainer = make_trainer(epochs=3, checkpoint=checkpoint, seed=0)
    torch.manual_seed(12345)
    resumed = resumed_trainer.fit(*small_data)
    assert resumed.epochs_run == 1
    assert torch.equal(params(resumed.model), params(straight.model))
    assert resumed.history == straight.history


def test_checkpoint_is_written_atomically(small_data, tmp_path):
    checkpoint = tmp_path / "ckpt.pt"
    make_trainer(epochs=1, checkpoint=checkpoint).fit(*small_data)
    assert checkpoint.is_file()
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt.pt"], "no temporary files may remain"
    state = torch.load(checkpoint, weights_only=True)
    assert state["epoch"] == 1


def test_checkpoint_from_another_configuration_is_refused(small_data, tmp_path):
    checkpoint = tmp_path / "ckpt.pt"
    make_trainer(epochs=1, checkpoint=checkpoint).fit(*small_data)
    other = make_trainer(config=VAEConfig(hidden_dims=(64,), z_dim=5), epochs=2, checkpoint=checkpoint)
    with pytest.raises(CheckpointMismatchError, match="another configuration.*z_dim"):
        other.fit(*small_data)
    other_lr = make_trainer(epochs=2, checkpoint=checkpoint, seed=3)
    with pytest.raises(CheckpointMismatchError, match="another configuration"):
        other_lr.fit(*small_data)


def test_corrupt_checkpoint_is_refused_clearly(small_data, tmp_path):
    checkpoint = tmp_path / "ckpt.pt"
    checkpoint.write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointMismatchError, match="cannot read checkpoint.*Delete it"):
        make_trainer(epochs=1, checkpoint=checkpoint).fit(*small_data)
    assert checkpoint.read_bytes() == b"not a checkpoint", "a bad checkpoint is reported, not overwritten"


class NaNAtStep:
    """ELBOLoss, except that the loss becomes NaN at one global step (a real divergence's effect)."""

    def __init__(self, step):
        self.inner, self.step, self.calls = ELBOLoss(), step, 0

    def check_data(self, x):
        self.inner.check_data(x)

    def __call__(self, model, x):
        loss, metrics = self.inner(model, x)
        if model.training:
            self.calls += 1
            if self.calls == self.step:
                loss = loss * float("nan")
        return loss, metrics


def test_nan_loss_stops_with_epoch_step_and_last_checkpoint(small_data, tmp_path):
    checkpoint = tmp_path / "ckpt.pt"
    seed_everything(0)
    trainer = Trainer(VAE(SMALL), NaNAtStep(20 + 7), TrainConfig(epochs=3, batch_size=100, progress=False),
                      checkpoint_path=checkpoint, epoch_transform=binarize_sample)
    with pytest.raises(NonFiniteLossError, match=rf"epoch 2, step 7; the last good checkpoint is {checkpoint}"):
        trainer.fit(*small_data)
    assert torch.load(checkpoint, weights_only=True)["epoch"] == 1


@pytest.mark.parametrize(
    "bad, message",
    [
        (lambda x: x.reshape(-1, 28, 28), "2-D tensor"),
        (lambda x: torch.where(torch.arange(x.shape[1]) == 3, float("nan"), x), "NaN"),
        (lambda x: x * 255, r"\[0, 1\]"),
    ],
    ids=["images_not_flattened", "nan_pixel", "unscaled_pixels"],
)
def test_bad_training_data_is_refused(small_data, bad, message):
    with pytest.raises(ValueError, match=message):
        make_trainer(epochs=1).fit(bad(small_data[0]), small_data[1])


def test_model_refuses_wrong_input_width():
    with pytest.raises(ValueError, match="x_dim=784.*flatten"):
        VAE().encode(torch.zeros(2, 28, 28))


def test_bad_configs_are_refused():
    with pytest.raises(ValueError, match="activation"):
        VAEConfig(activation="gelu")
    with pytest.raises(ValueError, match="lr"):
        TrainConfig(lr=0)
    with pytest.raises(ValueError, match="batch_size"):
        TrainConfig(batch_size=0)


def test_run_cache_reuses_and_verifies_checksums(mnist, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("VAE_LIB_CACHE", str(tmp_path))
    config, tc = VAEConfig(hidden_dims=(32,), z_dim=2), TrainConfig(epochs=1, progress=False)
    first = train_vae(config, tc, n_train=1000, data=mnist, device="cpu")
    again = train_vae(config, tc, n_train=1000, data=mnist, device="cpu")
    assert not first.info["cached"] and again.info["cached"]
    assert torch.equal(params(first.model), params(again.model))
    (run_dir,) = (tmp_path / "runs").iterdir()
    info = json.loads((run_dir / "run.json").read_text())
    assert info["fingerprint"]["n_train"] == 1000 and info["history"] == first.history
    # Tamper with the weights: the checksum catches it and the run is trained again.
    weights = torch.load(run_dir / "model.pt", weights_only=True)
    next(iter(weights.values())).add_(1.0)
    torch.save(weights, run_dir / "model.pt")
    redone = train_vae(config, tc, n_train=1000, data=mnist, device="cpu")
    assert not redone.info["cached"] and "fails its checksum" in capsys.readouterr().out
    assert torch.equal(params(redone.model), params(first.model))
