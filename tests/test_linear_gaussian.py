"""The linear-Gaussian model: exact evidence, exact posterior, closed-form ELBO (float64)."""

from __future__ import annotations

import math

import pytest
import torch
from torch.distributions import MultivariateNormal, kl_divergence

from vae_lib.linear_gaussian import Gaussian, LinearGaussian, gaussian_kl_full, interpolate

X_DIM, Z_DIM = 5, 3


@pytest.fixture
def model():
    return LinearGaussian.random(X_DIM, Z_DIM, noise_std=0.7, seed=1)


def random_gaussian(k: int, seed: int, batch: tuple[int, ...] = ()) -> Gaussian:
    g = torch.Generator().manual_seed(seed)
    a = torch.randn(*batch, k, k, generator=g, dtype=torch.float64)
    cov = a @ a.mT + 0.1 * torch.eye(k, dtype=torch.float64)
    return Gaussian(torch.randn(*batch, k, generator=g, dtype=torch.float64), cov)


@pytest.fixture
def x(model):
    return model.sample(4, torch.Generator().manual_seed(2))[1]  # (4, X_DIM)


def test_log_marginal_matches_torch_distributions(model, x):
    m = model.marginal()
    expected = MultivariateNormal(m.mean, covariance_matrix=m.cov).log_prob(x)
    torch.testing.assert_close(model.log_marginal(x), expected, rtol=0, atol=1e-10)


def test_log_marginal_is_the_integral_of_the_joint(model, x):
    # p(x) = E_{p(z)}[p(x|z)]: a Monte Carlo estimate with 200k prior draws; the tolerance is four
    # standard errors of the mean of the likelihood ratios p(x|z)/p(x).
    g = torch.Generator().manual_seed(3)
    z = torch.randn(200_000, 1, Z_DIM, dtype=torch.float64, generator=g)
    ratio = torch.exp(model.log_likelihood(x, z) - model.log_marginal(x))  # (n, 4), mean 1
    mean, se = ratio.mean(0), ratio.std(0) / math.sqrt(ratio.shape[0])
    assert torch.all((mean - 1).abs() < 4 * se), (mean, se)


def test_bayes_rule_holds_at_any_z(model, x):
    z = torch.randn(7, 1, Z_DIM, dtype=torch.float64, generator=torch.Generator().manual_seed(4))
    lhs = model.posterior(x).log_prob(z)
    rhs = model.log_joint(x, z) - model.log_marginal(x)
    torch.testing.assert_close(lhs, rhs, rtol=0, atol=1e-10)


@pytest.mark.parametrize("seed", [5, 6, 7])
def test_elbo_plus_kl_is_log_evidence_for_any_q(model, x, seed):
    q = random_gaussian(Z_DIM, seed, batch=(x.shape[0],))
    total = model.elbo(x, q) + model.kl_to_posterior(x, q)
    torch.testing.assert_close(total, model.log_marginal(x), rtol=0, atol=1e-9)
    assert torch.all(model.elbo(x, q) < model.log_marginal(x))


def test_elbo_is_tight_at_the_posterior(model, x):
    post = model.posterior(x)
    torch.testing.assert_close(model.elbo(x, post), model.log_marginal(x), rtol=0, atol=1e-10)
    torch.testing.assert_close(model.kl_to_posterior(x, post), torch.zeros(x.shape[0], dtype=torch.float64),
                               rtol=0, atol=1e-10)


def test_closed_form_elbo_matches_monte_carlo(model, x):
    # ELBO = E_q[log p(x, z) - log q(z)]; tolerance: four standard errors of the 100k-sample mean.
    q = random_gaussian(Z_DIM, 8, batch=(x.shape[0],))
    z = q.sample(100_000, torch.Generator().manual_seed(9))  # (n, 4, Z_DIM)
    terms = model.log_joint(x, z) - q.log_prob(z)
    mean, se = terms.mean(0), terms.std(0) / math.sqrt(terms.shape[0])
    assert torch.all((mean - model.elbo(x, q)).abs() < 4 * se), (mean, model.elbo(x, q), se)


def test_gaussian_matches_torch_distributions():
    q = random_gaussian(Z_DIM, 10, batch=(2,))
    z = torch.randn(6, 2, Z_DIM, dtype=torch.float64, generator=torch.Generator().manual_seed(11))
    ref = MultivariateNormal(q.mean, covariance_matrix=q.cov)
    torch.testing.assert_close(q.log_prob(z), ref.log_prob(z), rtol=0, atol=1e-10)
    p = random_gaussian(Z_DIM, 12, batch=(2,))
    ref_kl = kl_divergence(ref, MultivariateNormal(p.mean, covariance_matrix=p.cov))
    torch.testing.assert_close(gaussian_kl_full(q, p), ref_kl, rtol=0, atol=1e-10)


def test_gaussian_samples_have_the_right_moments():
    # 200k draws: the sample mean's standard error is sqrt(diag(cov) / n); allow 4 of them.
    q = random_gaussian(Z_DIM, 13)
    z = q.sample(200_000, torch.Generator().manual_seed(14))
    se = torch.sqrt(torch.diagonal(q.cov) / z.shape[0])
    assert torch.all((z.mean(0) - q.mean).abs() < 4 * se)
    torch.testing.assert_close(torch.cov(z.T), q.cov, rtol=0.03, atol=0.03)


def test_interpolation_ends_and_bad_t():
    q0, q1 = random_gaussian(Z_DIM, 15), random_gaussian(Z_DIM, 16)
    torch.testing.assert_close(interpolate(q0, q1, 0.0).cov, q0.cov)
    torch.testing.assert_close(interpolate(q0, q1, 1.0).mean, q1.mean)
    with pytest.raises(ValueError, match="t must lie in"):
        interpolate(q0, q1, 1.5)
    # A 1-D tensor of t gives the batch of the same Gaussians.
    ts = torch.tensor([0.0, 0.25, 1.0], dtype=torch.float64)
    path = interpolate(q0, q1, ts)
    for i, t in enumerate(ts.tolist()):
        torch.testing.assert_close(path.cov[i], interpolate(q0, q1, t).cov)
        torch.testing.assert_close(path.mean[i], interpolate(q0, q1, t).mean)


def test_batched_q_gives_the_same_numbers_as_a_loop(model, x):
    qs = random_gaussian(Z_DIM, 17, batch=(6,))
    batched = model.elbo(x[0], qs)
    looped = torch.stack([model.elbo(x[0], Gaussian(qs.mean[i], qs.cov[i])) for i in range(6)])
    torch.testing.assert_close(batched, looped, rtol=0, atol=1e-12)


def test_bad_inputs_give_clear_errors(model):
    with pytest.raises(ValueError, match="noise_std must be positive"):
        LinearGaussian(model.W, model.b, 0.0)
    with pytest.raises(ValueError, match="b must have shape"):
        LinearGaussian(model.W, model.b[:-1], 1.0)
    with pytest.raises(ValueError, match="x must end in"):
        model.log_marginal(torch.zeros(X_DIM + 1, dtype=torch.float64))
    with pytest.raises(ValueError, match="not symmetric positive definite"):
        Gaussian(torch.zeros(2, dtype=torch.float64), -torch.eye(2, dtype=torch.float64)).log_prob(
            torch.zeros(2, dtype=torch.float64))
    with pytest.raises(ValueError, match="symmetric"):
        Gaussian(torch.zeros(2), torch.tensor([[1.0, 0.5], [0.0, 1.0]]))
