"""Amortized versus per-datapoint (mean-field) inference, and the gaps between them.

Introduced in book/amortization.md. The encoder q_phi(z|x) is *amortized*: one network gives the
Gaussian posterior approximation of every x. Here each image instead gets its own free
parameters (mu_i, logvar_i), fitted by gradient ascent on its ELBO with the decoder theta fixed.
Cremer, Li & Duvenaud (2018) split the gap between log p_theta(x) and the encoder's ELBO into

    log p(x) - ELBO(q_phi)  =  [log p(x) - ELBO(q*)]  +  [ELBO(q*) - ELBO(q_phi)]
                               approximation gap         amortization gap

where q* is the best Gaussian for that x. Every quantity here is per image, in nats, summed over
pixels and latent dimensions.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

from .losses import check_bernoulli_targets, gaussian_kl, get_log_likelihood, iwae_bound


def _check_q(x: torch.Tensor, mu: torch.Tensor, logvar: torch.Tensor) -> None:
    if mu.shape != logvar.shape or mu.ndim != 2 or mu.shape[0] != x.shape[0]:
        raise ValueError(f"mu and logvar must both have shape (N, z_dim) with N = {x.shape[0]} images, "
                         f"got {tuple(mu.shape)} and {tuple(logvar.shape)}")


def _chunk(n_images: int, x_dim: int, max_elements: int) -> int:
    return max(1, max_elements // max(1, n_images * x_dim))


def _targets(x: torch.Tensor, m: int) -> torch.Tensor:
    # binary_cross_entropy_with_logits is much slower on broadcast (stride-0) targets than on a
    # materialised copy (measured with torch 2.15 on the CPU: ~2x in float32, ~1000x in float64),
    # so the m samples get their own copy of x; it is no larger than the decoder's output.
    return x.expand(m, *x.shape).contiguous()


def elbo_given_q(model, x: torch.Tensor, mu: torch.Tensor, logvar: torch.Tensor, n_samples: int = 1,
                 generator: torch.Generator | None = None, likelihood: str = "bernoulli",
                 max_elements: int = 2**24) -> torch.Tensor:
    """ELBO of each image under q = N(mu, diag(exp(logvar))) instead of the encoder's q: shape (N,).

    E_q[log p_theta(x|z)] is averaged over n_samples reparametrised draws z = mu + sigma * eps
    (differentiable in mu and logvar); KL(q || N(0, I)) is exact (Kingma & Welling 2013,
    Appendix B). Draws go through the decoder in chunks of at most `max_elements` pixel values.
    """
    if n_samples < 1:
        raise ValueError(f"n_samples must be a positive integer, got {n_samples}")
    _check_q(x, mu, logvar)
    log_lik = get_log_likelihood(likelihood)
    chunk = _chunk(x.shape[0], x.shape[-1], max_elements)
    sigma = torch.exp(0.5 * logvar)
    recon = 0.0
    for start in range(0, n_samples, chunk):
        m = min(chunk, n_samples - start)
        eps = torch.randn((m, *mu.shape), dtype=mu.dtype, device=mu.device, generator=generator)
        recon = recon + log_lik(model.decode(mu + sigma * eps), _targets(x, m), validate=False).sum(0)
    return recon / n_samples - gaussian_kl(mu, logvar)


@torch.no_grad()
def iwae_given_q(model, x: torch.Tensor, mu: torch.Tensor, logvar: torch.Tensor, k: int,
                 generator: torch.Generator | None = None, likelihood: str = "bernoulli",
                 max_elements: int = 2**24) -> torch.Tensor:
    """L_K = log (1/K) sum_k p_theta(x, z_k) / q(z_k) with z_k ~ q = N(mu, diag(exp(logvar))): shape (N,).

    Burda et al. (2015), eq. (8), with any Gaussian proposal, e.g. the per-image q* of
    `fit_local_posteriors`. A lower bound on log p_theta(x) in expectation for every proposal,
    tending to log p_theta(x) as K grows. Combined over chunks with a running logsumexp.
    """
    _check_q(x, mu, logvar)
    return iwae_bound(model, x, k, generator, max_elements, likelihood, q=(mu, logvar))


@dataclass
class LocalPosteriors:
    mu: torch.Tensor  # (N, z_dim) fitted per-image means
    logvar: torch.Tensor  # (N, z_dim) fitted per-image log-variances
    steps: list[int] = field(default_factory=list)  # steps at which `elbo` was recorded
    elbo: list[float] = field(default_factory=list)  # mean training ELBO estimate over the images


def fit_local_posteriors(model, x: torch.Tensor, steps: int = 500, lr: float = 1e-2, n_samples: int = 8,
                         init: str = "encoder", seed: int = 0, likelihood: str = "bernoulli",
                         record_every: int = 10) -> LocalPosteriors:
    """Fit free Gaussian parameters (mu_i, logvar_i) for every image by maximising its ELBO.

    The decoder theta (and the encoder) stay fixed; only the N x z_dim means and log-variances
    move. Each step is an Adam step on -sum_i ELBO_i, the ELBOs estimated with `n_samples`
    reparametrised draws; the images do not interact, so this is N independent optimisations
    run as one batch. `init="encoder"` starts from the encoder's q_phi(z|x) (Cremer et al. 2018
    do the same), "prior" from N(0, I). The learning rate follows a cosine schedule down to 0:
    with a constant one, the Monte Carlo gradient noise keeps the parameters jittering around the
    optimum; annealing lets them settle. `seed` fixes the noise, so a run is reproducible.
    """
    if x.ndim != 2:
        raise ValueError(f"x must be a 2-D tensor (N, x_dim), got shape {tuple(x.shape)}")
    if steps < 1 or n_samples < 1 or record_every < 1:
        raise ValueError(f"steps, n_samples and record_every must be positive integers, got "
                         f"{steps}, {n_samples}, {record_every}")
    if not lr > 0:
        raise ValueError(f"lr must be > 0, got {lr!r}")
    check_bernoulli_targets(x)
    get_log_likelihood(likelihood)
    params = list(model.parameters())
    was_training, needs_grad = model.training, [p.requires_grad for p in params]
    model.eval()
    g = torch.Generator(device=x.device)
    g.manual_seed(seed)
    with torch.no_grad():
        if init == "encoder":
            mu0, logvar0 = model.encode(x)
        elif init == "prior":
            mu0 = torch.zeros(x.shape[0], model.config.z_dim, dtype=x.dtype, device=x.device)
            logvar0 = torch.zeros_like(mu0)
        else:
            raise ValueError(f"unknown init {init!r}; use 'encoder' or 'prior'")
    mu = mu0.clone().requires_grad_(True)
    logvar = logvar0.clone().requires_grad_(True)
    optimizer = torch.optim.Adam([mu, logvar], lr=lr)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=steps)
    result = LocalPosteriors(mu, logvar)
    try:
        # Gradients for the decoder's weights would be computed and thrown away: switch them off.
        for p in params:
            p.requires_grad_(False)
        for step in range(1, steps + 1):
            elbo = elbo_given_q(model, x, mu, logvar, n_samples, g, likelihood)
            optimizer.zero_grad(set_to_none=True)
            (-elbo.sum()).backward()
            optimizer.step()
            schedule.step()
            if step == 1 or step % record_every == 0 or step == steps:
                value = float(elbo.detach().mean())
                if not math.isfinite(value):
                    raise FloatingPointError(f"the ELBO became {value} at step {step}; lower lr (now {lr})")
                result.steps.append(step)
                result.elbo.append(value)
    finally:
        for p, flag in zip(params, needs_grad):
            p.requires_grad_(flag)
        model.train(was_training)
    result.mu, result.logvar = mu.detach(), logvar.detach()
    return result


@torch.no_grad()
def gap_decomposition(model, x: torch.Tensor, local: LocalPosteriors, k: int = 1000, n_elbo_samples: int = 100,
                      seed: int = 0, likelihood: str = "bernoulli") -> dict[str, torch.Tensor]:
    """Per-image terms of Cremer et al. (2018)'s decomposition, each of shape (N,), in nats.

    elbo_encoder, elbo_local: ELBOs of the encoder's q_phi and of the fitted q* (`local`), each
    averaged over n_elbo_samples draws. lk_encoder, lk_local: L_K with either as the proposal.
    log_px: the estimate of log p_theta(x), L_K from whichever proposal gives the larger mean
    over the images (both are lower bounds in expectation, so the larger is the tighter).
    approximation = log_px - elbo_local; amortization = elbo_local - elbo_encoder; their sum is
    log_px - elbo_encoder.
    """
    model.eval()
    g = torch.Generator(device=x.device)
    g.manual_seed(seed)
    mu_enc, logvar_enc = model.encode(x)
    out = {
        "elbo_encoder": elbo_given_q(model, x, mu_enc, logvar_enc, n_elbo_samples, g, likelihood),
        "elbo_local": elbo_given_q(model, x, local.mu, local.logvar, n_elbo_samples, g, likelihood),
        "lk_encoder": iwae_given_q(model, x, mu_enc, logvar_enc, k, g, likelihood),
        "lk_local": iwae_given_q(model, x, local.mu, local.logvar, k, g, likelihood),
    }
    better = "lk_local" if out["lk_local"].mean() >= out["lk_encoder"].mean() else "lk_encoder"
    out["log_px"] = out[better]
    out["approximation"] = out["log_px"] - out["elbo_local"]
    out["amortization"] = out["elbo_local"] - out["elbo_encoder"]
    return out
