"""The importance-weighted bound L_K and its evaluation helpers (book/evaluation.md)."""

from __future__ import annotations

import math

import pytest
import torch

from vae_lib.data import binarize_fixed
from vae_lib.evaluate import (bound_table, cached_log_weights, elbo_per_image, format_bound_table, iw_bound,
                              log_likelihood, log_weights, model_digest, nested_bounds, replicate_bounds)
from vae_lib.losses import ELBOLoss, gaussian_kl
from vae_lib.model import VAE, VAEConfig
from vae_lib.train import TrainConfig, Trainer, seed_everything


@pytest.fixture(scope="module")
def small_trained(mnist):
    """A 784-64-8 VAE trained for two epochs on 2,000 real digits (a second of CPU), and test images."""
    seed_everything(0)
    model = VAE(VAEConfig(hidden_dims=(64,), z_dim=8))
    x_train = binarize_fixed(mnist.x_train[:2000], 0)
    Trainer(model, ELBOLoss(), TrainConfig(epochs=2, batch_size=100, progress=False)).fit(x_train)
    model.eval()
    return model, binarize_fixed(mnist.x_test[:100], 1234)


def test_l1_equals_elbo_in_expectation(tiny_vae):
    # L_1 = log w with one sample uses a Monte Carlo KL; the ELBO estimator uses the closed-form
    # KL. Same expectation: compare the means of M draws per image within 4 standard errors.
    g = torch.Generator().manual_seed(0)
    x = (torch.rand(5, 12, generator=g, dtype=torch.float64) < 0.4).double()
    m = 20000
    l1 = log_weights(tiny_vae, x, m, seed=1, batch_size=5)  # (5, m): m independent L_1 per image
    torch.manual_seed(2)
    elbo = elbo_per_image(tiny_vae, x.repeat(m, 1), batch_size=m)["elbo"].reshape(m, 5).T  # (5, m)
    diff = l1.mean(1) - elbo.mean(1)
    se = torch.sqrt(l1.var(1) / m + elbo.var(1) / m)
    assert torch.all(diff.abs() < 4 * se), (diff, se)
    # Not a vacuous check: the two estimators differ draw by draw.
    assert float((l1[:, :100] - elbo[:, :100]).abs().max()) > 1e-3


def test_lk_does_not_decrease_with_k(small_trained):
    model, x = small_trained
    # Independent estimates for each K (fixed seed), averaged over 100 real test digits.
    means = [float(log_likelihood(model, x, k=k, seed=0).mean()) for k in (1, 10, 100, 500)]
    assert all(b >= a for a, b in zip(means, means[1:])), means
    # And through the nested bounds of one set of weights.
    nested = nested_bounds(log_weights(model, x, 500, seed=3), (1, 10, 100, 500))
    nested_means = [float(v.mean()) for v in nested.values()]
    assert all(b >= a for a, b in zip(nested_means, nested_means[1:])), nested_means


def test_lk_is_a_lower_bound_in_expectation_on_an_exact_model():
    # A decoder that ignores z (zero weights): p(x) = prod_d Bernoulli(x_d; sigmoid(b_d)) exactly,
    # so every L_K must average to log p(x) - (gap >= 0); with an encoder equal to the prior the
    # weights are constant and L_K = log p(x) exactly for every K.
    model = VAE(VAEConfig(x_dim=6, hidden_dims=(4,), z_dim=2)).double()
    with torch.no_grad():
        for p in model.parameters():
            p.zero_()
        model.decoder.net[-1].bias.copy_(torch.tensor([0.5, -1.0, 2.0, 0.0, -0.3, 1.2]))
    x = torch.tensor([[1.0, 0.0, 1.0, 1.0, 0.0, 1.0], [0.0, 0.0, 1.0, 0.0, 1.0, 1.0]], dtype=torch.float64)
    p = torch.sigmoid(torch.tensor([0.5, -1.0, 2.0, 0.0, -0.3, 1.2], dtype=torch.float64))
    log_px = (x * p.log() + (1 - x) * (1 - p).log()).sum(1)
    for k in (1, 7, 100):
        assert torch.allclose(log_likelihood(model, x, k=k, seed=0), log_px, atol=1e-10)


def test_log_weights_match_streaming_bound(small_trained):
    model, x = small_trained
    lw = log_weights(model, x, 300, seed=5, batch_size=40)
    assert lw.shape == (100, 300)
    streamed = log_likelihood(model, x, k=300, seed=5, batch_size=40)
    assert torch.allclose(iw_bound(lw).float(), streamed, atol=1e-3)
    assert torch.equal(lw, log_weights(model, x, 300, seed=5, batch_size=40))


def test_l1_weights_average_to_elbo_on_real_digits(small_trained):
    model, x = small_trained
    x = x[:50]
    lw = log_weights(model, x, 400, seed=0)  # 400 single-sample L_1 per image
    torch.manual_seed(0)
    elbo = elbo_per_image(model, x.repeat(100, 1))["elbo"].reshape(100, 50).T  # (50, 100)
    diff = lw.mean(1).double() - elbo.mean(1).double()
    se = torch.sqrt(lw.double().var(1) / 400 + elbo.double().var(1) / 100)
    # Average over the 50 images: mean difference within 4 of its standard errors.
    assert abs(float(diff.mean())) < 4 * float(se.pow(2).sum().sqrt() / 50)


def test_nested_and_replicate_bounds():
    g = torch.Generator().manual_seed(0)
    lw = torch.randn(4, 12, generator=g, dtype=torch.float64) * 3
    nested = nested_bounds(lw, (1, 5, 12))
    assert torch.equal(nested[1], lw[:, 0])
    assert torch.allclose(nested[12], torch.log(lw.exp().mean(1)))
    reps = replicate_bounds(lw, 4)
    assert reps.shape == (4, 3)
    assert torch.allclose(reps[:, 1], torch.log(lw[:, 4:8].exp().mean(1)))
    assert replicate_bounds(lw, 5).shape == (4, 2)  # the last 2 samples are left out
    with pytest.raises(ValueError, match="K = 13"):
        nested_bounds(lw, (13,))
    with pytest.raises(ValueError, match="shape"):
        replicate_bounds(lw[0], 2)


def test_bound_table_rows():
    g = torch.Generator().manual_seed(1)
    lw = torch.randn(50, 100, generator=g, dtype=torch.float64)
    rows = bound_table(lw, (1, 10, 100))
    assert [r["K"] for r in rows] == [1, 10, 100]
    assert [r["n_replicates"] for r in rows] == [100, 10, 1]
    assert rows[0]["mean"] == pytest.approx(float(lw[:, 0].mean()))
    assert rows[0]["se_images"] == pytest.approx(float(lw[:, 0].std()) / math.sqrt(50))
    assert rows[0]["seed_std"] == pytest.approx(float(lw.mean(0).std()))
    assert math.isnan(rows[2]["seed_std"])
    text = format_bound_table(rows)
    assert len(text.splitlines()) == 4 and "mean L_K" in text


def test_log_weights_rejects_bad_input(tiny_vae):
    x = torch.zeros(3, 12, dtype=torch.float64)
    with pytest.raises(ValueError, match="positive integer"):
        log_weights(tiny_vae, x, 0)
    with pytest.raises(ValueError, match="2-D"):
        log_weights(tiny_vae, x[0], 5)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        log_weights(tiny_vae, x + 2, 5)
    with pytest.raises(ValueError, match="exceed"):
        log_weights(tiny_vae, x, 2**27)


def test_cached_log_weights(tmp_path, monkeypatch, tiny_vae, capsys):
    monkeypatch.setenv("VAE_LIB_CACHE", str(tmp_path))
    x = (torch.rand(6, 12, generator=torch.Generator().manual_seed(0), dtype=torch.float64) < 0.5).double()
    first = cached_log_weights(tiny_vae, x, 20, seed=3)
    files = list((tmp_path / "evals").glob("*/log_w.pt"))
    assert len(files) == 1
    assert torch.equal(first, log_weights(tiny_vae, x, 20, seed=3))
    assert torch.equal(cached_log_weights(tiny_vae, x, 20, seed=3), first)
    # A corrupted file fails its checksum and is recomputed, never used.
    files[0].write_bytes(b"corrupt")
    assert torch.equal(cached_log_weights(tiny_vae, x, 20, seed=3), first)
    assert "fails its checksum" in capsys.readouterr().out
    # Another seed, other images or other parameters are other computations.
    cached_log_weights(tiny_vae, x, 20, seed=4)
    cached_log_weights(tiny_vae, x[:3], 20, seed=3)
    digest = model_digest(tiny_vae)
    with torch.no_grad():
        tiny_vae.decoder.net[-1].bias.add_(0.1)
    assert model_digest(tiny_vae) != digest
    assert not torch.equal(cached_log_weights(tiny_vae, x, 20, seed=3), first)
    assert len(list((tmp_path / "evals").glob("*/log_w.pt"))) == 4


def test_closed_form_kl_used_by_elbo(tiny_vae):
    # elbo_per_image's KL is the closed form of the encoder's Gaussian (a guard for the L_1 check).
    x = torch.ones(2, 12, dtype=torch.float64)
    mu, logvar = tiny_vae.encode(x)
    assert torch.allclose(elbo_per_image(tiny_vae, x)["kl"], gaussian_kl(mu, logvar))
