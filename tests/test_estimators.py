"""Score-function and reparametrization gradient estimators against analytic gradients (float64)."""

from __future__ import annotations

import math

import pytest
import torch

from vae_lib.estimators import (
    ESTIMATORS,
    GAUSSIAN_TEST_FUNCTIONS,
    analytic_gradient,
    estimator_variance,
    reparametrization_gradients,
    score_function_gradients,
    summarize,
)

MU, SIGMA = 0.3, 0.8
HAND_GRADIENTS = {  # written out by hand, independently of the closed forms in the module
    "square": lambda m, s: (2 * m, 2 * s),
    "exp": lambda m, s: (math.exp(m + s * s / 2), s * math.exp(m + s * s / 2)),
    "sin": lambda m, s: (math.cos(m) * math.exp(-s * s / 2), -s * math.sin(m) * math.exp(-s * s / 2)),
}


@pytest.mark.parametrize("name", sorted(GAUSSIAN_TEST_FUNCTIONS))
def test_analytic_gradient_matches_hand_derivation(name):
    torch.testing.assert_close(analytic_gradient(name, MU, SIGMA),
                               torch.tensor(HAND_GRADIENTS[name](MU, SIGMA), dtype=torch.float64))


@pytest.mark.parametrize("name", sorted(GAUSSIAN_TEST_FUNCTIONS))
def test_closed_form_expectations_pass_gradcheck(name):
    expectation = GAUSSIAN_TEST_FUNCTIONS[name][1]
    params = (torch.tensor(MU, dtype=torch.float64, requires_grad=True),
              torch.tensor(SIGMA, dtype=torch.float64, requires_grad=True))
    assert torch.autograd.gradcheck(expectation, params)


@pytest.mark.parametrize("name", sorted(GAUSSIAN_TEST_FUNCTIONS))
def test_closed_form_expectations_match_monte_carlo(name):
    f, expectation = GAUSSIAN_TEST_FUNCTIONS[name]
    z = MU + SIGMA * torch.randn(200_000, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    est = summarize(f(z))
    exact = expectation(torch.tensor(MU, dtype=torch.float64), torch.tensor(SIGMA, dtype=torch.float64))
    # Four standard errors: a false failure has probability about 6e-5.
    assert abs(est.mean - exact) < 4 * est.stderr


@pytest.mark.parametrize("estimator", sorted(ESTIMATORS))
@pytest.mark.parametrize("name", sorted(GAUSSIAN_TEST_FUNCTIONS))
def test_estimators_are_unbiased(estimator, name):
    f = GAUSSIAN_TEST_FUNCTIONS[name][0]
    g = torch.Generator().manual_seed(1)
    est = summarize(ESTIMATORS[estimator](f, MU, SIGMA, 200_000, g))
    exact = analytic_gradient(name, MU, SIGMA)
    # Four standard errors per component (the estimate is a mean of 200k i.i.d. terms).
    assert torch.all((est.mean - exact).abs() < 4 * est.stderr), (est.mean, exact, est.stderr)


def test_reparametrization_per_sample_gradients_are_exact():
    # For f(z) = z^2: d/dmu f(mu + sigma eps) = 2 z and d/dsigma = 2 z eps, sample by sample.
    g1, g2 = torch.Generator().manual_seed(2), torch.Generator().manual_seed(2)
    grads = reparametrization_gradients(lambda z: z**2, MU, SIGMA, 10, g1)
    eps = torch.randn(10, dtype=torch.float64, generator=g2)
    z = MU + SIGMA * eps
    torch.testing.assert_close(grads, torch.stack([2 * z, 2 * z * eps], -1))


def test_score_function_works_for_a_step_function():
    # f(z) = 1[z > 0] has no useful derivative; d/dmu P(z > 0) = N(0; mu, sigma^2) = phi(mu/sigma)/sigma.
    f = lambda z: (z > 0).to(z.dtype)  # noqa: E731
    est = summarize(score_function_gradients(f, MU, SIGMA, 200_000, torch.Generator().manual_seed(3)))
    exact = math.exp(-0.5 * (MU / SIGMA) ** 2) / (SIGMA * math.sqrt(2 * math.pi))
    assert abs(float(est.mean[0]) - exact) < 4 * float(est.stderr[0])


def test_reparametrization_has_lower_variance_for_square():
    # Per-sample variances in closed form for f(z) = z^2, mu = 0.3, sigma = 0.8 are far apart
    # (reparam: Var(2z) = 4 sigma^2 = 2.56 for d/dmu); check the measured ordering and the 1/n law.
    f = GAUSSIAN_TEST_FUNCTIONS["square"][0]
    g = torch.Generator().manual_seed(4)
    var_rep = estimator_variance(reparametrization_gradients, f, MU, SIGMA, [1, 16], 4000, g)
    var_sf = estimator_variance(score_function_gradients, f, MU, SIGMA, [1, 16], 4000, g)
    assert torch.all(var_rep < var_sf)
    # Var(2z) = 4 sigma^2 exactly; a variance measured from 4000 Gaussian draws has a relative
    # standard error of sqrt(2 / 4000) = 2.2%, so 10% is 4.5 standard errors.
    assert abs(float(var_rep[0, 0]) - 4 * SIGMA**2) < 0.1 * 4 * SIGMA**2
    # Averaging 16 draws divides the variance by 16 (a ratio of two such estimates: about 3.2%
    # relative standard error, so 15% is over 4 of them).
    ratio = var_rep[0] / var_rep[1]
    assert torch.all((ratio / 16 - 1).abs() < 0.15), ratio


def test_same_seed_same_numbers():
    f = torch.exp
    a = score_function_gradients(f, MU, SIGMA, 5, torch.Generator().manual_seed(5))
    b = score_function_gradients(f, MU, SIGMA, 5, torch.Generator().manual_seed(5))
    torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_bad_inputs_give_clear_errors():
    with pytest.raises(ValueError, match="sigma must be positive"):
        score_function_gradients(torch.exp, 0.0, -1.0, 10)
    with pytest.raises(ValueError, match="positive integer"):
        reparametrization_gradients(torch.exp, 0.0, 1.0, 0)
    with pytest.raises(ValueError, match="unknown test function"):
        analytic_gradient("cube", 0.0, 1.0)
    with pytest.raises(ValueError, match="must map z"):
        reparametrization_gradients(lambda z: z.sum(), 0.0, 1.0, 3)
    with pytest.raises(ValueError, match="scalars"):
        score_function_gradients(torch.exp, torch.zeros(2), 1.0, 3)
