"""A latent-variable model whose evidence and posterior are exact: the linear-Gaussian model.

    z ~ N(0, I_k),    x | z ~ N(W z + b, s^2 I_d).

Introduced in book/elbo.md (and used in book/two_views.md). Because everything is Gaussian,
log p(x), the posterior p(z|x) and the ELBO of any Gaussian q(z) are available in closed form, so
the identity log p(x) = ELBO(q) + KL(q || p(z|x)) can be checked to floating-point precision.
This is probabilistic PCA (Tipping & Bishop 1999, eqs. 3-6); the posterior is their eq. (7) with
M = W^T W + s^2 I, written here as Sigma = (I + W^T W / s^2)^{-1} = s^2 M^{-1}.

Everything works in the dtype of W (use float64 for the exact checks). `x` may carry leading batch
dimensions; Gaussians carry a mean (..., k) and a full covariance (..., k, k), broadcast together.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

LOG_2PI = math.log(2.0 * math.pi)


def _cholesky(cov: torch.Tensor, what: str) -> torch.Tensor:
    chol, info = torch.linalg.cholesky_ex(cov)
    if bool((info != 0).any()):
        raise ValueError(
            f"{what} is not symmetric positive definite; build it as A @ A.mT + c * I with c > 0 "
            "(or interpolate between two valid covariances)"
        )
    return chol


def _logdet_from_chol(chol: torch.Tensor) -> torch.Tensor:
    return 2.0 * torch.log(torch.diagonal(chol, dim1=-2, dim2=-1)).sum(-1)


@dataclass(frozen=True)
class Gaussian:
    """N(mean, cov) with a full covariance: mean (..., k), cov (..., k, k)."""

    mean: torch.Tensor
    cov: torch.Tensor

    def __post_init__(self) -> None:
        k = self.mean.shape[-1]
        if self.cov.shape[-2:] != (k, k):
            raise ValueError(
                f"cov must end in ({k}, {k}) to match a mean of dimension {k}, got shape {tuple(self.cov.shape)}"
            )
        if not torch.allclose(self.cov, self.cov.mT):
            raise ValueError("cov must be symmetric; symmetrise it with (cov + cov.mT) / 2")

    @property
    def dim(self) -> int:
        return self.mean.shape[-1]

    def log_prob(self, z: torch.Tensor) -> torch.Tensor:
        """log N(z; mean, cov), reduced over the last dimension."""
        chol = _cholesky(self.cov, "cov")
        diff = (z - self.mean).unsqueeze(-1)
        chol = chol.expand(*diff.shape[:-2], self.dim, self.dim)
        y = torch.linalg.solve_triangular(chol, diff, upper=False).squeeze(-1)
        return -0.5 * (self.dim * LOG_2PI + _logdet_from_chol(chol) + y.pow(2).sum(-1))

    def sample(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """n draws mean + L eps (L the Cholesky factor of cov): shape (n, ..., k)."""
        chol = _cholesky(self.cov, "cov")
        batch = torch.broadcast_shapes(self.mean.shape, self.cov.shape[:-1])
        eps = torch.randn((n, *batch), dtype=self.mean.dtype, device=self.mean.device, generator=generator)
        return self.mean + (chol @ eps.unsqueeze(-1)).squeeze(-1)


def gaussian_kl_full(q: Gaussian, p: Gaussian) -> torch.Tensor:
    """KL(q || p) between two full-covariance Gaussians, in nats.

    1/2 [ tr(S_p^{-1} S_q) + (m_p - m_q)^T S_p^{-1} (m_p - m_q) - k + log det S_p - log det S_q ].
    Introduced in book/elbo.md.
    """
    if q.dim != p.dim:
        raise ValueError(f"q and p live in different dimensions: {q.dim} vs {p.dim}")
    lq, lp = _cholesky(q.cov, "q.cov"), _cholesky(p.cov, "p.cov")
    shape = torch.broadcast_shapes(lq.shape, lp.shape)
    lq, lp = lq.expand(shape), lp.expand(shape)
    a = torch.linalg.solve_triangular(lp, lq, upper=False)  # L_p^{-1} L_q: tr(S_p^{-1} S_q) = ||a||_F^2
    diff = (p.mean - q.mean).unsqueeze(-1)
    diff = diff.expand(*torch.broadcast_shapes(diff.shape[:-2], shape[:-2]), q.dim, 1)
    y = torch.linalg.solve_triangular(lp.expand(*diff.shape[:-2], q.dim, q.dim), diff, upper=False)
    trace = a.pow(2).sum((-2, -1))
    return 0.5 * (trace + y.pow(2).sum((-2, -1)) - q.dim + _logdet_from_chol(lp) - _logdet_from_chol(lq))


def interpolate(q0: Gaussian, q1: Gaussian, t: float | torch.Tensor) -> Gaussian:
    """The Gaussian with mean and covariance (1 - t) q0 + t q1 (a valid covariance for t in [0, 1]).

    t may be a float or a 1-D tensor of T values; then the result is a batch of T Gaussians
    (mean (T, k), cov (T, k, k)), so a whole path is evaluated in one call.
    """
    t = torch.as_tensor(t, dtype=q0.mean.dtype)
    if t.ndim > 1:
        raise ValueError(f"t must be a number or a 1-D tensor, got shape {tuple(t.shape)}")
    if bool(((t < 0) | (t > 1)).any()):
        raise ValueError(f"t must lie in [0, 1] so the covariance stays positive definite, got {t.tolist()}")
    tm, tc = (t, t) if t.ndim == 0 else (t[:, None], t[:, None, None])
    return Gaussian((1 - tm) * q0.mean + tm * q1.mean, (1 - tc) * q0.cov + tc * q1.cov)


@dataclass(frozen=True)
class LinearGaussian:
    """z ~ N(0, I_k), x | z ~ N(W z + b, noise_std^2 I_d); W is (x_dim, z_dim), b is (x_dim,).

    Introduced in book/elbo.md. Here W, b and noise_std play the role of the decoder's theta.
    """

    W: torch.Tensor
    b: torch.Tensor
    noise_std: float

    def __post_init__(self) -> None:
        if self.W.ndim != 2:
            raise ValueError(f"W must be a matrix (x_dim, z_dim), got shape {tuple(self.W.shape)}")
        if self.b.shape != (self.W.shape[0],):
            raise ValueError(f"b must have shape ({self.W.shape[0]},) to match W, got {tuple(self.b.shape)}")
        if not self.noise_std > 0:
            raise ValueError(f"noise_std must be positive, got {self.noise_std}")

    @classmethod
    def random(cls, x_dim: int, z_dim: int, noise_std: float = 0.5, seed: int = 0,
               dtype: torch.dtype = torch.float64) -> "LinearGaussian":
        """A model with standard-normal W and b, drawn with its own seed (float64 by default)."""
        g = torch.Generator().manual_seed(seed)
        W = torch.randn(x_dim, z_dim, generator=g, dtype=dtype)
        b = torch.randn(x_dim, generator=g, dtype=dtype)
        return cls(W, b, float(noise_std))

    @property
    def x_dim(self) -> int:
        return self.W.shape[0]

    @property
    def z_dim(self) -> int:
        return self.W.shape[1]

    def _check_x(self, x: torch.Tensor) -> None:
        if x.shape[-1] != self.x_dim:
            raise ValueError(f"x must end in x_dim={self.x_dim}, got shape {tuple(x.shape)}")

    def prior(self) -> Gaussian:
        return Gaussian(torch.zeros(self.z_dim, dtype=self.W.dtype), torch.eye(self.z_dim, dtype=self.W.dtype))

    def sample(self, n: int, generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """n draws from the joint: (z (n, z_dim), x (n, x_dim))."""
        z = torch.randn(n, self.z_dim, dtype=self.W.dtype, generator=generator)
        noise = torch.randn(n, self.x_dim, dtype=self.W.dtype, generator=generator)
        return z, z @ self.W.T + self.b + self.noise_std * noise

    def log_likelihood(self, x: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        """log p(x|z) = log N(x; W z + b, s^2 I), reduced over pixels; x and z broadcast."""
        self._check_x(x)
        r = x - (z @ self.W.T + self.b)
        return -0.5 * (self.x_dim * (LOG_2PI + 2 * math.log(self.noise_std)) + r.pow(2).sum(-1) / self.noise_std**2)

    def log_prior(self, z: torch.Tensor) -> torch.Tensor:
        return -0.5 * (self.z_dim * LOG_2PI + z.pow(2).sum(-1))

    def log_joint(self, x: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        """log p(x, z) = log p(x|z) + log p(z)."""
        return self.log_likelihood(x, z) + self.log_prior(z)

    def marginal(self) -> Gaussian:
        """p(x) = N(b, W W^T + s^2 I): the evidence, exact."""
        cov = self.W @ self.W.T + self.noise_std**2 * torch.eye(self.x_dim, dtype=self.W.dtype)
        return Gaussian(self.b, cov)

    def log_marginal(self, x: torch.Tensor) -> torch.Tensor:
        """log p(x), exact (Tipping & Bishop 1999, eq. 4)."""
        self._check_x(x)
        return self.marginal().log_prob(x)

    def posterior(self, x: torch.Tensor) -> Gaussian:
        """p(z|x) = N(Sigma W^T (x - b) / s^2, Sigma), Sigma = (I + W^T W / s^2)^{-1}: exact."""
        self._check_x(x)
        s2 = self.noise_std**2
        precision = torch.eye(self.z_dim, dtype=self.W.dtype) + self.W.T @ self.W / s2
        cov = torch.linalg.inv(precision)
        cov = 0.5 * (cov + cov.T)  # inv() leaves rounding-level asymmetry
        mean = ((x - self.b) @ self.W / s2) @ cov
        return Gaussian(mean, cov)

    def expected_log_likelihood(self, x: torch.Tensor, q: Gaussian) -> torch.Tensor:
        """E_q[log p(x|z)] in closed form for q = N(m, S):

        -d/2 log(2 pi s^2) - ( ||x - W m - b||^2 + tr(W S W^T) ) / (2 s^2).
        """
        self._check_x(x)
        if q.dim != self.z_dim:
            raise ValueError(f"q must be a Gaussian over z_dim={self.z_dim} dimensions, got {q.dim}")
        r = x - (q.mean @ self.W.T + self.b)
        trace = torch.einsum("ij,...jk,ik->...", self.W, q.cov, self.W)
        s2 = self.noise_std**2
        return -0.5 * (self.x_dim * (LOG_2PI + math.log(s2)) + (r.pow(2).sum(-1) + trace) / s2)

    def elbo(self, x: torch.Tensor, q: Gaussian) -> torch.Tensor:
        """ELBO(q) = E_q[log p(x|z)] - KL(q || p(z)), closed form, in nats."""
        return self.expected_log_likelihood(x, q) - gaussian_kl_full(q, self.prior())

    def kl_to_posterior(self, x: torch.Tensor, q: Gaussian) -> torch.Tensor:
        """KL(q || p(z|x)): the gap log p(x) - ELBO(q), computed independently of both."""
        return gaussian_kl_full(q, self.posterior(x))


__all__ = ["Gaussian", "LinearGaussian", "gaussian_kl_full", "interpolate"]
