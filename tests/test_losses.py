"""Losses against torch.distributions, Monte Carlo, and analytic gradients (float64)."""

from __future__ import annotations

import math

import pytest
import torch
from torch.distributions import Bernoulli, Normal, kl_divergence

from vae_lib.losses import (
    bernoulli_log_likelihood,
    elbo_terms,
    gaussian_kl,
    iwae_bound,
    log_importance_weights,
)
from vae_lib.model import reparametrize

BATCH_SHAPES = {"single": (), "batch": (5,), "samples_x_batch": (3, 4)}


@pytest.mark.parametrize("batch_shape", BATCH_SHAPES.values(), ids=BATCH_SHAPES.keys())
def test_gaussian_kl_matches_torch_distributions(batch_shape):
    g = torch.Generator().manual_seed(0)
    mu = torch.randn(*batch_shape, 7, generator=g, dtype=torch.float64)
    logvar = torch.randn(*batch_shape, 7, generator=g, dtype=torch.float64)
    q = Normal(mu, torch.exp(0.5 * logvar))
    p = Normal(torch.zeros_like(mu), torch.ones_like(mu))
    expected = kl_divergence(q, p).sum(-1)
    got = gaussian_kl(mu, logvar)
    assert got.shape == batch_shape
    torch.testing.assert_close(got, expected, rtol=1e-12, atol=1e-12)


def test_gaussian_kl_matches_monte_carlo():
    # KL = E_q[log q(z) - log p(z)]; 400k samples, tolerance 4 standard errors.
    g = torch.Generator().manual_seed(1)
    mu = torch.tensor([0.5, -1.0, 2.0], dtype=torch.float64)
    logvar = torch.tensor([-1.0, 0.3, 0.0], dtype=torch.float64)
    z = mu + torch.exp(0.5 * logvar) * torch.randn(400_000, 3, generator=g, dtype=torch.float64)
    q, p = Normal(mu, torch.exp(0.5 * logvar)), Normal(0.0, 1.0)
    samples = (q.log_prob(z) - p.log_prob(z)).sum(-1)
    se = samples.std() / math.sqrt(len(samples))
    assert abs(samples.mean() - gaussian_kl(mu, logvar)) < 4 * se


def test_gaussian_kl_is_zero_only_at_prior():
    zero = torch.zeros(4, dtype=torch.float64)
    assert gaussian_kl(zero, zero) == 0
    assert gaussian_kl(zero + 0.1, zero) > 0 and gaussian_kl(zero, zero + 0.1) > 0


@pytest.mark.parametrize("batch_shape", BATCH_SHAPES.values(), ids=BATCH_SHAPES.keys())
def test_bernoulli_log_likelihood_matches_torch_distributions(batch_shape):
    g = torch.Generator().manual_seed(2)
    logits = 4 * torch.randn(*batch_shape, 11, generator=g, dtype=torch.float64)
    x = (torch.rand(*batch_shape, 11, generator=g, dtype=torch.float64) < 0.5).double()
    expected = Bernoulli(logits=logits).log_prob(x).sum(-1)
    torch.testing.assert_close(bernoulli_log_likelihood(logits, x), expected, rtol=1e-12, atol=1e-12)


def test_bernoulli_log_likelihood_is_x_log_p_plus_one_minus_x_log_one_minus_p():
    logits = torch.tensor([[-2.0, 0.0, 3.0]], dtype=torch.float64)
    x = torch.tensor([[1.0, 0.0, 0.3]], dtype=torch.float64)
    p = torch.sigmoid(logits)
    expected = (x * p.log() + (1 - x) * (1 - p).log()).sum(-1)
    torch.testing.assert_close(bernoulli_log_likelihood(logits, x), expected)


def test_bernoulli_log_likelihood_stays_finite_for_extreme_logits():
    # sigmoid(-200) underflows to 0 in float32, so log(sigmoid) is -inf; the logits form is exact.
    logits = torch.tensor([[-200.0, 200.0]])
    x = torch.tensor([[1.0, 0.0]])
    value = bernoulli_log_likelihood(logits, x)
    assert torch.isfinite(value).all()
    torch.testing.assert_close(value, torch.tensor([-400.0]))


@pytest.mark.parametrize("bad", [torch.tensor([[1.5, 0.0]]), torch.tensor([[-0.1, 1.0]])], ids=["above_one", "negative"])
def test_bernoulli_targets_outside_unit_interval_are_refused(bad):
    with pytest.raises(ValueError, match=r"must lie in \[0, 1\].*binarize"):
        bernoulli_log_likelihood(torch.zeros(1, 2), bad)


def test_bernoulli_targets_with_nan_are_refused():
    with pytest.raises(ValueError, match="NaN"):
        bernoulli_log_likelihood(torch.zeros(1, 2), torch.tensor([[float("nan"), 1.0]]))


def test_bernoulli_shape_mismatch_is_refused():
    with pytest.raises(ValueError, match="pixel dimension"):
        bernoulli_log_likelihood(torch.zeros(2, 5), torch.zeros(2, 4))


def test_reparametrization_gradient_matches_analytic():
    # d/dmu E[z^2] = 2 mu and d/dsigma E[z^2] = 2 sigma for z ~ N(mu, sigma^2); with fixed eps the
    # reparametrised sample mean's gradient is 2 mean(z) and 2 mean(z * eps): compare exactly, and
    # with the analytic expectation within 4 standard errors.
    g = torch.Generator().manual_seed(3)
    mu = torch.tensor(0.7, dtype=torch.float64, requires_grad=True)
    logvar = torch.tensor(math.log(0.5**2), dtype=torch.float64, requires_grad=True)
    z = reparametrize(mu.expand(200_000), logvar.expand(200_000), generator=g)
    (z.pow(2).mean()).backward()
    sigma = 0.5
    # d/dlogvar = d/dsigma * sigma / 2 = sigma^2.
    per_sample_mu = 2 * z.detach()
    se_mu = per_sample_mu.std() / math.sqrt(len(z))
    assert abs(mu.grad - 2 * 0.7) < 4 * se_mu
    eps = (z.detach() - 0.7) / sigma
    per_sample_lv = 2 * z.detach() * eps * sigma / 2
    se_lv = per_sample_lv.std() / math.sqrt(len(z))
    assert abs(logvar.grad - sigma**2) < 4 * se_lv


def test_reparametrize_uses_sigma_not_variance():
    # With logvar = log 9 (sigma = 3), samples must have standard deviation 3, not 9.
    g = torch.Generator().manual_seed(4)
    z = reparametrize(torch.zeros(100_000, dtype=torch.float64), torch.full((100_000,), math.log(9.0), dtype=torch.float64), g)
    assert abs(z.std() - 3.0) < 0.03  # the sd of the sample sd is 3 / sqrt(2n) ~ 0.007


def test_reparametrize_gradcheck():
    mu = torch.randn(3, dtype=torch.float64, requires_grad=True)
    logvar = torch.randn(3, dtype=torch.float64, requires_grad=True)

    def fn(m, lv):
        return reparametrize(m, lv, torch.Generator().manual_seed(5))

    assert torch.autograd.gradcheck(fn, (mu, logvar))


def test_iwae_with_one_sample_equals_elbo_in_expectation(tiny_vae):
    # L_1 = log w with one sample, whose expectation is the ELBO. The closed-form-KL ELBO estimator
    # has the same expectation; compare means over 20k draws within 4 combined standard errors.
    x = (torch.rand(1, 12, generator=torch.Generator().manual_seed(6)) < 0.5).double()
    xs = x.expand(20_000, 12)
    torch.manual_seed(7)
    with torch.no_grad():
        l1 = iwae_bound(tiny_vae, xs, k=1)
        elbo = elbo_terms(tiny_vae, xs)["elbo"]
    se = math.sqrt(l1.var() / len(l1) + elbo.var() / len(elbo))
    assert abs(l1.mean() - elbo.mean()) < 4 * se


def test_iwae_bound_does_not_decrease_with_k(tiny_vae):
    # E[L_K] is non-decreasing in K (Burda et al. 2015, Theorem 1). Averages over 2000 repeats of
    # one image; the increase between successive K is far larger than the noise (checked: > 10 se).
    x = (torch.rand(1, 12, generator=torch.Generator().manual_seed(8)) < 0.5).double()
    xs = x.expand(2000, 12)
    g = torch.Generator().manual_seed(9)
    with torch.no_grad():
        means = [iwae_bound(tiny_vae, xs, k, g).mean().item() for k in (1, 4, 16, 64)]
    assert all(b > a for a, b in zip(means, means[1:])), means


def test_iwae_chunking_gives_the_same_estimator(tiny_vae):
    # Chunks draw the noise in another order, so values differ draw by draw; the estimator must
    # not: compare means over 4000 repeats of one image within 4 combined standard errors, and
    # check the whole-K path is finite and shaped (N,).
    x = (torch.rand(1, 12, generator=torch.Generator().manual_seed(10)) < 0.5).double().expand(4000, 12)
    with torch.no_grad():
        whole = iwae_bound(tiny_vae, x, 50, torch.Generator().manual_seed(11), max_elements=10**9)
        chunked = iwae_bound(tiny_vae, x[:1].expand(4000, 12).contiguous(), 50,
                             torch.Generator().manual_seed(12), max_elements=4000 * 12 * 3)
    assert whole.shape == chunked.shape == (4000,)
    se = math.sqrt(whole.var() / len(whole) + chunked.var() / len(chunked))
    assert abs(whole.mean() - chunked.mean()) < 4 * se


def test_log_importance_weights_shape(tiny_vae):
    x = torch.zeros(5, 12, dtype=torch.float64)
    assert log_importance_weights(tiny_vae, x, 7).shape == (7, 5)


def test_iwae_bound_with_the_encoders_q_given_explicitly_is_the_same(tiny_vae):
    # q=(mu, logvar) from the encoder must reproduce the default path draw for draw.
    x = (torch.rand(4, 12, generator=torch.Generator().manual_seed(13)) < 0.5).double()
    with torch.no_grad():
        default = iwae_bound(tiny_vae, x, 30, torch.Generator().manual_seed(14))
        explicit = iwae_bound(tiny_vae, x, 30, torch.Generator().manual_seed(14), q=tiny_vae.encode(x))
        shifted = iwae_bound(tiny_vae, x, 30, torch.Generator().manual_seed(14),
                             q=(tiny_vae.encode(x)[0] + 1.0, tiny_vae.encode(x)[1]))
    torch.testing.assert_close(default, explicit, rtol=0, atol=0)
    assert not torch.allclose(default, shifted), "another proposal must change the weights"
