"""The trainer's speed settings: fused Adam, bfloat16 autocast, and their effect on results."""

from __future__ import annotations

import pytest
import torch

from vae_lib.data import binarization_transform
from vae_lib.losses import ELBOLoss
from vae_lib.model import VAE, VAEConfig
from vae_lib.train import TrainConfig, Trainer, denormals_flushed, flush_denormals, make_adam, seed_everything

SMALL = VAEConfig(hidden_dims=(64,), z_dim=4)


def _train(mnist, x_test=None, **config):
    x0, transform = binarization_transform(mnist.x_train[:1000], "dynamic")
    seed_everything(0)
    model = VAE(SMALL)
    trainer = Trainer(model, ELBOLoss(), TrainConfig(epochs=2, batch_size=100, progress=False, **config),
                      epoch_transform=transform)
    result = trainer.fit(x0, x_test)
    return torch.cat([p.detach().flatten() for p in model.parameters()]), result.history, trainer


def test_unknown_precision_is_refused_with_the_choices():
    with pytest.raises(ValueError, match="precision must be one of"):
        TrainConfig(precision="fp16")


def test_default_fingerprint_is_unchanged_and_speed_settings_enter_it():
    # Runs cached before the speed settings existed keep their key; bf16 / compile runs get their own.
    assert TrainConfig().fingerprint() == {"batch_size": 128, "lr": 1e-3, "seed": 0}
    assert TrainConfig(precision="bf16").fingerprint()["precision"] == "bf16"
    assert TrainConfig(compile=True).fingerprint()["compile"] is True


def test_fused_adam_matches_the_default_implementation():
    # Same gradients, 20 steps: agreement to float32 rounding (measured 6e-8 after 100 steps).
    params = {}
    for fused in (False, True):
        torch.manual_seed(0)
        model = VAE(SMALL)
        opt = make_adam(model.parameters(), 1e-3) if fused else torch.optim.Adam(model.parameters(), lr=1e-3)
        g = torch.Generator().manual_seed(1)
        for _ in range(20):
            for p in model.parameters():
                p.grad = torch.randn(p.shape, generator=g)
            opt.step()
        params[fused] = torch.cat([p.detach().flatten() for p in model.parameters()])
    diff = (params[True] - params[False]).abs().max().item()
    assert 0 <= diff < 1e-6
    moved = (params[False] - torch.cat([p.detach().flatten() for p in VAE(SMALL).parameters()])).abs().max()
    assert moved > 1e-3  # the optimizer did move the parameters


def test_evaluating_on_a_test_set_does_not_change_training(mnist):
    x_test = (mnist.x_test[:300] > 0.5).float()
    with_test, history, _ = _train(mnist, x_test)
    without, _, _ = _train(mnist)
    assert "test_elbo" in history
    assert torch.equal(with_test, without)


def test_bf16_autocast_trains_like_float32(mnist):
    x_test = (mnist.x_test[:500] > 0.5).float()
    p32, h32, _ = _train(mnist, x_test)
    p16, h16, _ = _train(mnist, x_test, precision="bf16")
    assert not torch.equal(p32, p16)  # bf16 matmuls really ran
    assert torch.isfinite(p16).all()
    # Same seed, same batches and noise: the runs differ only by rounding. After 20 steps the test
    # ELBOs (about -300 nats, evaluated in float32) agree to well under 1 nat (measured 0.03).
    gap = abs(h16["test_elbo"][-1] - h32["test_elbo"][-1])
    print(f"test ELBO float32 {h32['test_elbo'][-1]:.3f}, bf16 {h16['test_elbo'][-1]:.3f} nats")
    assert gap < 1.0


def test_flush_denormals_reaches_every_thread_and_is_undone():
    # torch.set_flush_denormal alone changes only the calling thread: half of a 2-thread multiply
    # of denormals would still produce denormals. vae_lib's version reaches the OpenMP pool.
    torch.set_num_threads(2)
    torch.ones(1 << 20) * 2.0  # start the thread pool before the setting changes
    assert denormals_flushed() == 0.0
    with flush_denormals():
        assert denormals_flushed() == 1.0
    assert denormals_flushed() == 0.0
    with flush_denormals(False):
        assert denormals_flushed() == 0.0


def test_training_with_flushed_denormals_matches_and_restores_the_setting(mnist):
    x_test = (mnist.x_test[:300] > 0.5).float()
    flushed, h1, _ = _train(mnist, x_test)
    assert denormals_flushed() == 0.0
    plain, h2, _ = _train(mnist, x_test, flush_denormal=False)
    # Only numbers below 1.2e-38 change: the parameters agree to float32 rounding.
    assert (flushed - plain).abs().max() < 1e-5
    assert abs(h1["test_elbo"][-1] - h2["test_elbo"][-1]) < 1e-3
    assert TrainConfig(flush_denormal=False).fingerprint()["flush_denormal"] is False


def test_burda_learning_rate_schedule():
    # Burda et al. (2015): stage i = 0..7 runs 3**i of 3,280 epochs at 1e-3 * 10**(-i/7).
    paper = TrainConfig(epochs=3280, lr=1e-3, lr_schedule="burda")
    starts = [0, 1, 4, 13, 40, 121, 364, 1093]
    for i, start in enumerate(starts):
        assert paper.lr_at(start) == pytest.approx(1e-3 * 10 ** (-i / 7), rel=1e-12)
        if start:
            assert paper.lr_at(start - 1) == pytest.approx(1e-3 * 10 ** (-(i - 1) / 7), rel=1e-12)
    assert paper.lr_at(3279) == pytest.approx(1e-4, rel=1e-12)
    short = TrainConfig(epochs=50, lr=1e-3, lr_schedule="burda")
    rates = [short.lr_at(e) for e in range(50)]
    assert rates == sorted(rates, reverse=True) and rates[-1] == pytest.approx(1e-4)
    assert TrainConfig(lr=2e-3).lr_at(7) == 2e-3
    # The compressed schedule depends on the run's length, so the length enters the fingerprint.
    assert short.fingerprint()["epochs"] == 50 and "epochs" not in TrainConfig().fingerprint()
    with pytest.raises(ValueError, match="lr_schedule must be one of"):
        TrainConfig(lr_schedule="cosine")


def test_trainer_follows_the_learning_rate_schedule(mnist):
    seen = []
    x0, transform = binarization_transform(mnist.x_train[:300], "dynamic")
    config = TrainConfig(epochs=4, batch_size=100, progress=False, lr_schedule="burda")
    trainer = Trainer(VAE(SMALL), ELBOLoss(), config, epoch_transform=transform,
                      callbacks=[lambda t: seen.append(t.optimizer.param_groups[0]["lr"])])
    trainer.fit(x0)
    assert seen == [config.lr_at(e) for e in range(4)] and seen[-1] == pytest.approx(1e-4)
