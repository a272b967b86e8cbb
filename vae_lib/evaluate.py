"""Evaluate a trained VAE on a dataset: average ELBO and importance-weighted log-likelihood.

Introduced in book/evaluation.md. All numbers are in nats per image (summed over pixels).
"""

from __future__ import annotations

import torch

from .losses import check_bernoulli_targets, elbo_terms, iwae_bound


def _generator(seed: int | None, device: torch.device) -> torch.Generator | None:
    if seed is None:
        return None
    g = torch.Generator(device=device)
    g.manual_seed(seed)
    return g


@torch.no_grad()
def elbo_per_image(model, x: torch.Tensor, batch_size: int = 1000,
                   likelihood: str = "bernoulli") -> dict[str, torch.Tensor]:
    """One-sample ELBO, reconstruction and KL for every image of x: each a tensor of shape (N,).

    `likelihood` names the decoder's observation model (losses.LIKELIHOODS)."""
    check_bernoulli_targets(x)
    model.eval()
    parts = [elbo_terms(model, x[i:i + batch_size], validate=False, likelihood=likelihood)
             for i in range(0, len(x), batch_size)]
    return {k: torch.cat([p[k] for p in parts]) for k in parts[0]}


@torch.no_grad()
def log_likelihood(model, x: torch.Tensor, k: int = 5000, seed: int | None = 0, batch_size: int = 100,
                   progress: bool = False, likelihood: str = "bernoulli") -> torch.Tensor:
    """L_K for every image of x (shape (N,)): a stochastic lower bound on log p_theta(x).

    With K = 5000 this is the estimate of Burda et al. (2015). Images go through in batches of
    `batch_size`; within a batch, losses.iwae_bound chunks the K samples to bound memory.
    `seed` fixes the importance samples so a table can be reproduced. `likelihood` names the
    decoder's observation model (losses.LIKELIHOODS).
    """
    from tqdm.auto import tqdm

    check_bernoulli_targets(x)
    model.eval()
    g = _generator(seed, x.device)
    starts = range(0, len(x), batch_size)
    out = [iwae_bound(model, x[i:i + batch_size], k, g, likelihood=likelihood)
           for i in tqdm(starts, disable=not progress, leave=False)]
    return torch.cat(out)
