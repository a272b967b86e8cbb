"""The numerical claims of book/bernoulli_decoder.md and book/gaussian_kl.md, as tests."""

from __future__ import annotations

import math

import pytest
import torch
from torch.distributions import Bernoulli, Normal, kl_divergence

from vae_lib.data import binarize_fixed, binarize_sample
from vae_lib.losses import bernoulli_log_likelihood, diag_gaussian_log_prob, gaussian_kl, standard_normal_log_prob


@pytest.mark.parametrize("batch_shape", [(3,), (2, 3)], ids=["B", "KxB"])
def test_bernoulli_log_likelihood_matches_torch_distributions(batch_shape):
    g = torch.Generator().manual_seed(0)
    logits = 4 * torch.randn(*batch_shape, 10, dtype=torch.float64, generator=g)
    x = (torch.rand(batch_shape[-1], 10, dtype=torch.float64, generator=g) < 0.5).double()
    expected = Bernoulli(logits=logits).log_prob(x.expand_as(logits)).sum(-1)
    torch.testing.assert_close(bernoulli_log_likelihood(logits, x), expected, rtol=0, atol=1e-10)


def test_logits_form_is_finite_where_sigmoid_then_log_underflows():
    # float32: sigmoid(-200) rounds to 0 and sigmoid(20) to 1, so the naive form gives -inf.
    logits = torch.tensor([[-200.0, 20.0]], dtype=torch.float32)
    x = torch.tensor([[1.0, 0.0]])
    p = torch.sigmoid(logits)
    naive = (x * torch.log(p) + (1 - x) * torch.log(1 - p)).sum(-1)
    assert torch.isinf(naive).all()
    # The exact value is log sigmoid(-200) + log(1 - sigmoid(20)) = -200 - 20 up to ~2e-9.
    stable = bernoulli_log_likelihood(logits, x)
    assert abs(stable.item() + 220.0) < 1e-4


def test_dynamic_binarization_is_unbiased(mnist):
    grey = mnist.x_test[0].double()
    n = 4000
    draws = binarize_sample(grey.expand(n, -1), torch.Generator().manual_seed(1))
    assert set(draws.unique().tolist()) <= {0.0, 1.0}
    se = torch.sqrt(grey * (1 - grey) / n)
    inside = (grey > 0) & (grey < 1)
    # 5 binomial standard errors per pixel: a false failure among 784 pixels has probability < 1e-3.
    assert torch.all(((draws.mean(0) - grey).abs() < 5 * se)[inside])
    assert torch.equal(draws.mean(0)[~inside], grey[~inside]), "pixels at exactly 0 or 1 never change"


def test_static_binarization_is_reproducible_and_seed_dependent(mnist):
    x = mnist.x_test[:16]
    assert torch.equal(binarize_fixed(x, 3), binarize_fixed(x, 3))
    assert not torch.equal(binarize_fixed(x, 3), binarize_fixed(x, 4))


def test_gaussian_kl_matches_torch_and_monte_carlo():
    g = torch.Generator().manual_seed(2)
    mu = torch.randn(4, 5, dtype=torch.float64, generator=g)
    logvar = torch.randn(4, 5, dtype=torch.float64, generator=g)
    sigma = torch.exp(0.5 * logvar)
    reference = kl_divergence(Normal(mu, sigma), Normal(torch.zeros_like(mu), torch.ones_like(mu))).sum(-1)
    torch.testing.assert_close(gaussian_kl(mu, logvar), reference, rtol=1e-12, atol=0)
    z = mu + sigma * torch.randn(200_000, 4, 5, dtype=torch.float64, generator=g)
    log_ratio = diag_gaussian_log_prob(z, mu, logvar) - standard_normal_log_prob(z)
    mean, se = log_ratio.mean(0), log_ratio.std(0) / math.sqrt(z.shape[0])
    # Four standard errors of the 200k-sample mean.
    assert torch.all((mean - gaussian_kl(mu, logvar)).abs() < 4 * se)


def test_mean_over_pixels_is_a_beta_784_vae(tiny_vae):
    # Dividing only the reconstruction by x_dim multiplies the KL weight by x_dim.
    x = (torch.rand(6, tiny_vae.config.x_dim, dtype=torch.float64, generator=torch.Generator().manual_seed(3)) < 0.5).double()
    out = tiny_vae(x)
    recon = bernoulli_log_likelihood(out.logits, x)
    kl = gaussian_kl(out.mu, out.logvar)
    d = tiny_vae.config.x_dim
    params = list(tiny_vae.parameters())
    g_mean = torch.autograd.grad((-recon).mean() / d + kl.mean(), params, retain_graph=True)
    g_beta = torch.autograd.grad((-recon + d * kl).mean(), params)
    for a, b in zip(g_mean, g_beta):
        torch.testing.assert_close(d * a, b, rtol=1e-10, atol=1e-12)
