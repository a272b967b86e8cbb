"""Per-datapoint variational inference and the amortization gap (book/amortization.md).

Exact checks use a model with one latent dimension, where every expectation over a Gaussian q is
a Gauss-Hermite sum and log p(x) a one-dimensional integral; the real-data checks train a small
VAE on real MNIST for one epoch.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from vae_lib.inference import LocalPosteriors, elbo_given_q, fit_local_posteriors, gap_decomposition, iwae_given_q
from vae_lib.losses import bernoulli_log_likelihood, gaussian_kl
from vae_lib.model import VAE, VAEConfig
from vae_lib.runs import binarized_test_set, train_vae
from vae_lib.train import TrainConfig

# 60 Gauss-Hermite nodes integrate these smooth integrands to ~1e-12.
_NODES, _WEIGHTS = (torch.as_tensor(a, dtype=torch.float64) for a in np.polynomial.hermite.hermgauss(60))


@pytest.fixture
def vae_z1():
    torch.manual_seed(4)
    model = VAE(VAEConfig(x_dim=12, hidden_dims=(16,), z_dim=1, activation="tanh")).double()
    with torch.no_grad():
        # A sharper decoder than the initialisation gives: p(x|z) depends strongly on z, so the
        # posterior is narrow and not Gaussian (an approximation gap of ~0.06 nats) and the
        # untrained encoder is far from it (an amortization gap of several nats).
        model.decoder.net[0].weight.mul_(4.0)
        model.decoder.net[2].weight.mul_(3.0)
    return model


@pytest.fixture
def x_z1(vae_z1):
    g = torch.Generator().manual_seed(5)
    with torch.no_grad():
        probs = torch.sigmoid(vae_z1.decode(torch.tensor([[-1.0], [0.4], [1.7]], dtype=torch.float64)))
    return torch.bernoulli(probs, generator=g)


@torch.no_grad()
def exact_elbo(model, x, mu, logvar):
    """ELBO of one image under N(mu, exp(logvar)) by Gauss-Hermite: mu, logvar broadcastable, z_dim 1."""
    sigma = torch.exp(0.5 * logvar)
    z = mu[..., None] + math.sqrt(2.0) * sigma[..., None] * _NODES  # (..., nodes)
    log_lik = bernoulli_log_likelihood(model.decode(z[..., None]), x)  # (..., nodes)
    recon = (log_lik * _WEIGHTS).sum(-1) / math.sqrt(math.pi)
    return recon - gaussian_kl(mu[..., None], logvar[..., None])


@torch.no_grad()
def exact_log_px(model, x):
    """log p(x) = log int p(x|z) N(z; 0, 1) dz by the trapezoidal rule on [-12, 12] (tails < e^-72)."""
    z = torch.linspace(-12, 12, 24001, dtype=torch.float64)
    log_joint = bernoulli_log_likelihood(model.decode(z[:, None]), x) - 0.5 * (z**2 + math.log(2 * math.pi))
    return float(torch.logsumexp(log_joint, 0) + math.log(float(z[1] - z[0])))


@torch.no_grad()
def best_gaussian(model, x):
    """The ELBO-optimal Gaussian by a coarse grid over (mu, logvar) refined twice around its best point."""
    mu_axis, lv_axis = torch.linspace(-4, 4, 161, dtype=torch.float64), torch.linspace(-8, 2, 101, dtype=torch.float64)
    for _ in range(3):
        mu, lv = torch.meshgrid(mu_axis, lv_axis, indexing="ij")
        values = exact_elbo(model, x, mu, lv)
        i = int(values.argmax())
        m0, l0 = float(mu.reshape(-1)[i]), float(lv.reshape(-1)[i])
        dm, dl = float(mu_axis[1] - mu_axis[0]), float(lv_axis[1] - lv_axis[0])
        mu_axis = torch.linspace(m0 - 2 * dm, m0 + 2 * dm, 41, dtype=torch.float64)
        lv_axis = torch.linspace(l0 - 2 * dl, l0 + 2 * dl, 41, dtype=torch.float64)
    return m0, l0, float(values.max())


def test_elbo_given_q_matches_quadrature(vae_z1, x_z1):
    mu = torch.tensor([[0.3], [-0.5], [1.2]], dtype=torch.float64)
    logvar = torch.tensor([[-1.0], [0.2], [-2.5]], dtype=torch.float64)
    exact = torch.stack([exact_elbo(vae_z1, x_z1[i], mu[i, 0], logvar[i, 0]) for i in range(3)])
    n = 20000
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        estimate = elbo_given_q(vae_z1, x_z1, mu, logvar, n_samples=n, generator=g, max_elements=12 * 3 * 1000)
        # The standard error from the per-sample spread of log p(x|z), estimated on a fresh draw.
        eps = torch.randn((n, 3, 1), dtype=torch.float64, generator=g)
        spread = bernoulli_log_likelihood(vae_z1.decode(mu + torch.exp(0.5 * logvar) * eps), x_z1).std(0)
    assert bool(((estimate - exact).abs() < 4 * spread / math.sqrt(n)).all()), (estimate, exact)


def test_local_fit_reaches_the_best_gaussian_and_stays_below_log_px(vae_z1, x_z1):
    fit = fit_local_posteriors(vae_z1, x_z1, steps=400, lr=3e-2, n_samples=16, seed=0)
    with torch.no_grad():
        mu_enc, logvar_enc = vae_z1.encode(x_z1)
    for i in range(3):
        _, _, best = best_gaussian(vae_z1, x_z1[i])
        reached = float(exact_elbo(vae_z1, x_z1[i], fit.mu[i, 0], fit.logvar[i, 0]))
        start = float(exact_elbo(vae_z1, x_z1[i], mu_enc[i, 0], logvar_enc[i, 0]))
        log_px = exact_log_px(vae_z1, x_z1[i])
        # The grid optimum is exact to ~1e-6 nats; stochastic gradients with an annealed step
        # land within 1e-3 nats of it (the ELBO is flat, quadratic, at its maximum).
        assert best - 1e-3 < reached <= best + 1e-6, (i, reached, best)
        assert reached >= start - 1e-9
        # The approximation gap KL(q* || p(z|x)) is positive.
        assert reached < log_px


def test_iwae_given_q_approaches_log_px(vae_z1, x_z1):
    fit = fit_local_posteriors(vae_z1, x_z1, steps=300, lr=3e-2, n_samples=8, seed=0)
    g = torch.Generator().manual_seed(1)
    exact = torch.tensor([exact_log_px(vae_z1, x_z1[i]) for i in range(3)], dtype=torch.float64)
    # q* itself is narrower than the skewed posterior, so its weights are heavy-tailed; twice its
    # standard deviation makes a safer proposal. Its weights' relative standard deviation is
    # about 0.7 (measured), so L_K's standard error is about 0.7 / sqrt(K) = 0.003 at K = 50000,
    # and its bias (~ half the relative variance / K) is negligible: 4 standard errors.
    k = 50000
    lk = iwae_given_q(vae_z1, x_z1, fit.mu, fit.logvar + math.log(4.0), k=k, generator=g)
    torch.testing.assert_close(lk, exact, rtol=0, atol=4 * 0.7 / math.sqrt(k))
    # With q* as the proposal, L_K still exceeds the ELBO of q* (L_K >= L_1 in expectation) by
    # about the approximation gap, 0.06 nats here, many times L_K's noise.
    lk_narrow = iwae_given_q(vae_z1, x_z1, fit.mu, fit.logvar, k=k, generator=g)
    elbo_star = torch.stack([exact_elbo(vae_z1, x_z1[i], fit.mu[i, 0], fit.logvar[i, 0]) for i in range(3)])
    assert bool((lk_narrow > elbo_star).all()), (lk_narrow, elbo_star)


def test_fit_leaves_the_model_untouched_and_is_reproducible(vae_z1, x_z1):
    before = {k: v.clone() for k, v in vae_z1.state_dict().items()}
    a = fit_local_posteriors(vae_z1, x_z1, steps=20, seed=3)
    b = fit_local_posteriors(vae_z1, x_z1, steps=20, seed=3)
    for k, v in vae_z1.state_dict().items():
        assert torch.equal(v, before[k]), k
    assert all(p.requires_grad for p in vae_z1.parameters())
    assert vae_z1.training  # restored
    assert torch.equal(a.mu, b.mu) and torch.equal(a.logvar, b.logvar)
    assert a.steps[0] == 1 and a.steps[-1] == 20 and len(a.elbo) == len(a.steps)


def test_bad_arguments_have_clear_messages(vae_z1, x_z1):
    with pytest.raises(ValueError, match="unknown init 'zeros'"):
        fit_local_posteriors(vae_z1, x_z1, steps=1, init="zeros")
    with pytest.raises(ValueError, match="positive integers"):
        fit_local_posteriors(vae_z1, x_z1, steps=0)
    with pytest.raises(ValueError, match="lr must be > 0"):
        fit_local_posteriors(vae_z1, x_z1, lr=0.0)
    with pytest.raises(ValueError, match=r"shape \(N, z_dim\) with N = 3"):
        elbo_given_q(vae_z1, x_z1, torch.zeros(2, 1, dtype=torch.float64), torch.zeros(2, 1, dtype=torch.float64))
    with pytest.raises(ValueError, match="K must be a positive integer"):
        iwae_given_q(vae_z1, x_z1, torch.zeros(3, 1), torch.zeros(3, 1), k=0)


@pytest.mark.slow
def test_optimised_elbo_beats_the_encoder_on_real_mnist(mnist):
    run = train_vae(VAEConfig(hidden_dims=(64,), z_dim=5), TrainConfig(epochs=1, batch_size=100, seed=0, progress=False),
                    n_train=2000, data=mnist, device="cpu", use_cache=False)
    x = binarized_test_set(mnist)[:64]
    fit = fit_local_posteriors(run.model, x, steps=100, lr=3e-2, n_samples=4, seed=0)
    gaps = gap_decomposition(run.model, x, fit, k=100, n_elbo_samples=100, seed=1)
    gain = gaps["amortization"]
    se = float(gain.std() / math.sqrt(len(gain)))
    # The fitted q is at least as good as the encoder's on average, by many standard errors
    # (an encoder trained for one epoch is far from each image's optimum).
    assert float(gain.mean()) > 3 * se > 0, (float(gain.mean()), se)
    torch.testing.assert_close(gaps["approximation"] + gaps["amortization"], gaps["log_px"] - gaps["elbo_encoder"])
    assert float(gaps["log_px"].mean()) > float(gaps["elbo_local"].mean())
    assert isinstance(fit, LocalPosteriors) and fit.elbo[-1] > fit.elbo[0]
