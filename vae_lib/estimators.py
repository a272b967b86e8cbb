"""Two Monte Carlo estimators of the gradient of an expectation, for a Gaussian.

Introduced in book/gradients.md. Both estimate

    g(mu, sigma) = (d/dmu, d/dsigma) E_{z ~ N(mu, sigma^2)}[f(z)]

from n draws and return the n per-sample estimates (shape (n, 2)), so their mean and standard error
can be reported:

- the score-function (REINFORCE) estimator, f(z) d/d(mu, sigma) log N(z; mu, sigma^2)
  (Williams 1992; Glynn 1990); it needs only the values of f;
- the reparametrization estimator, d/d(mu, sigma) f(mu + sigma eps) with eps ~ N(0, 1), computed by
  autograd (Kingma & Welling 2013, Sec. 2.4); it needs f differentiable.

Everything runs in float64 unless the caller passes other tensors.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch

Fn = Callable[[torch.Tensor], torch.Tensor]


def _as_params(mu: float | torch.Tensor, sigma: float | torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    mu = torch.as_tensor(mu, dtype=torch.float64).detach()
    sigma = torch.as_tensor(sigma, dtype=mu.dtype).detach()
    if mu.ndim or sigma.ndim:
        raise ValueError("mu and sigma must be scalars (one Gaussian); loop or vmap over several")
    if not float(sigma) > 0:
        raise ValueError(f"sigma must be positive, got {float(sigma)}; pass the standard deviation, not logvar")
    return mu, sigma


def _eps(n: int, dtype: torch.dtype, generator: torch.Generator | None) -> torch.Tensor:
    if n < 1:
        raise ValueError(f"the number of samples must be a positive integer, got {n}")
    return torch.randn(n, dtype=dtype, generator=generator)


def score_function_gradients(f: Fn, mu, sigma, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """Per-sample score-function estimates of (d/dmu, d/dsigma) E_{N(mu, sigma^2)}[f(z)]: shape (n, 2).

    d/dmu log N(z) = (z - mu) / sigma^2 and d/dsigma log N(z) = ((z - mu)^2 - sigma^2) / sigma^3.
    f is only evaluated, never differentiated.
    """
    mu, sigma = _as_params(mu, sigma)
    z = mu + sigma * _eps(n, mu.dtype, generator)
    fz = f(z)
    score_mu = (z - mu) / sigma**2
    score_sigma = ((z - mu) ** 2 - sigma**2) / sigma**3
    return torch.stack([fz * score_mu, fz * score_sigma], dim=-1)


def reparametrization_gradients(f: Fn, mu, sigma, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """Per-sample reparametrization estimates of (d/dmu, d/dsigma) E_{N(mu, sigma^2)}[f(z)]: shape (n, 2).

    z_i = mu_i + sigma_i eps_i with one copy (mu_i, sigma_i) of the parameters per sample, so one
    backward pass through f gives every per-sample gradient (f'(z_i), f'(z_i) eps_i).
    """
    mu, sigma = _as_params(mu, sigma)
    eps = _eps(n, mu.dtype, generator)
    mu_i = mu.expand(n).clone().requires_grad_(True)
    sigma_i = sigma.expand(n).clone().requires_grad_(True)
    with torch.enable_grad():
        fz = f(mu_i + sigma_i * eps)
        if fz.shape != (n,):
            raise ValueError(f"f must map z of shape ({n},) to values of shape ({n},), got {tuple(fz.shape)}")
        d_mu, d_sigma = torch.autograd.grad(fz.sum(), (mu_i, sigma_i))
    return torch.stack([d_mu, d_sigma], dim=-1)


ESTIMATORS = {"score function": score_function_gradients, "reparametrization": reparametrization_gradients}


@dataclass(frozen=True)
class MCEstimate:
    """A Monte Carlo mean with its standard error sd / sqrt(n) (sd with Bessel's correction)."""

    mean: torch.Tensor
    stderr: torch.Tensor
    n: int


def summarize(samples: torch.Tensor) -> MCEstimate:
    """Mean and standard error over the first dimension of per-sample estimates."""
    n = samples.shape[0]
    if n < 2:
        raise ValueError("a standard error needs at least 2 samples")
    return MCEstimate(samples.mean(0), samples.std(0) / math.sqrt(n), n)


# Test functions whose Gaussian expectation is known in closed form: (f, E_{N(mu, sigma^2)}[f]).
GAUSSIAN_TEST_FUNCTIONS: dict[str, tuple[Fn, Callable[[torch.Tensor, torch.Tensor], torch.Tensor]]] = {
    # E[z^2] = mu^2 + sigma^2
    "square": (lambda z: z**2, lambda mu, sigma: mu**2 + sigma**2),
    # E[exp z] = exp(mu + sigma^2 / 2), the log-normal mean
    "exp": (torch.exp, lambda mu, sigma: torch.exp(mu + sigma**2 / 2)),
    # E[sin z] = sin(mu) exp(-sigma^2 / 2), the imaginary part of the characteristic function
    "sin": (torch.sin, lambda mu, sigma: torch.sin(mu) * torch.exp(-(sigma**2) / 2)),
}


def analytic_gradient(name: str, mu, sigma) -> torch.Tensor:
    """(d/dmu, d/dsigma) of the closed-form expectation of GAUSSIAN_TEST_FUNCTIONS[name], by autograd."""
    if name not in GAUSSIAN_TEST_FUNCTIONS:
        raise ValueError(f"unknown test function {name!r}; use one of {sorted(GAUSSIAN_TEST_FUNCTIONS)}")
    mu, sigma = _as_params(mu, sigma)
    mu, sigma = mu.clone().requires_grad_(True), sigma.clone().requires_grad_(True)
    with torch.enable_grad():
        value = GAUSSIAN_TEST_FUNCTIONS[name][1](mu, sigma)
        return torch.stack(torch.autograd.grad(value, (mu, sigma)))


def estimator_variance(estimator: Callable, f: Fn, mu, sigma, n_samples: list[int], n_repeats: int,
                       generator: torch.Generator | None = None) -> torch.Tensor:
    """Variance of the n-sample gradient estimate, measured over n_repeats independent repeats.

    Returns shape (len(n_samples), 2): one row per n, columns (d/dmu, d/dsigma). For independent
    draws it equals the per-sample variance divided by n.
    """
    if n_repeats < 2:
        raise ValueError("n_repeats must be at least 2 to measure a variance")
    rows = []
    for n in n_samples:
        per_sample = estimator(f, mu, sigma, n * n_repeats, generator).reshape(n_repeats, n, 2)
        rows.append(per_sample.mean(1).var(0))
    return torch.stack(rows)


__all__ = [
    "score_function_gradients", "reparametrization_gradients", "ESTIMATORS", "MCEstimate", "summarize",
    "GAUSSIAN_TEST_FUNCTIONS", "analytic_gradient", "estimator_variance",
]
