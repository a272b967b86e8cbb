"""Evaluate a trained VAE on a dataset: average ELBO and importance-weighted log-likelihood.

Introduced in book/evaluation.md. All numbers are in nats per image (summed over pixels).
`log_weights` keeps every importance weight, so one set of samples yields L_K for all K up to
the number drawn and replicates of L_K for its spread over seeds; `cached_log_weights` stores
such expensive evaluations beside the cached runs, with a checksum.
"""

from __future__ import annotations

import math
import time

import torch

from .cache import cache_dir, load_checked, model_digest, save_checked, tensor_digest  # noqa: F401 (digests re-exported)
from .losses import check_bernoulli_targets, elbo_terms, iwae_bound, log_importance_weights


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


# -- the importance-weighted bound for many K at once (book/evaluation.md) ----------------------

# Refuse (N, K) weight matrices beyond 2**28 floats (1 GiB): use log_likelihood, which streams.
MAX_LOG_WEIGHTS = 2**28


@torch.no_grad()
def log_weights(model, x: torch.Tensor, k: int, seed: int = 0, batch_size: int = 100,
                max_elements: int = 2**24) -> torch.Tensor:
    """The log importance weights log w_{n,j} of every image x_n, j = 1..k: shape (N, k).

    log w = log p_theta(x|z) + log p(z) - log q_phi(z|x) with z ~ q_phi(z|x) (Burda et al. 2015,
    eq. 8 before the log-mean-exp). Keeping the weights, instead of only L_k, gives L_K for every
    K <= k from one set of samples (`nested_bounds`) and independent replicates of L_K from
    disjoint groups of samples (`replicate_bounds`). Images go in batches of `batch_size`, samples
    in chunks whose decoder output holds at most `max_elements` numbers. `seed` fixes the samples;
    the draw also depends on batch_size and max_elements (the order in which noise is drawn).
    Introduced in book/evaluation.md.
    """
    if int(k) < 1:
        raise ValueError(f"k must be a positive integer, got {k!r}")
    if x.ndim != 2:
        raise ValueError(f"x must be a 2-D tensor (N, x_dim), got shape {tuple(x.shape)}")
    if x.shape[0] * int(k) > MAX_LOG_WEIGHTS:
        raise ValueError(
            f"{x.shape[0]} images x {k} samples = {x.shape[0] * k} weights exceed {MAX_LOG_WEIGHTS}; "
            "use fewer images, or evaluate.log_likelihood, which keeps only L_k"
        )
    if batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
    check_bernoulli_targets(x)
    model.eval()
    g = _generator(seed, x.device)
    out = []
    for i in range(0, len(x), batch_size):
        xb = x[i:i + batch_size]
        chunk = max(1, min(k, max_elements // max(1, xb.shape[0] * xb.shape[1])))
        parts = [log_importance_weights(model, xb, min(chunk, k - s), g) for s in range(0, k, chunk)]
        out.append(torch.cat(parts).T)  # (B, k)
    return torch.cat(out)


def _check_log_w(log_w: torch.Tensor) -> None:
    if log_w.ndim != 2:
        raise ValueError(f"log_w must have shape (N images, K samples), got {tuple(log_w.shape)}")


def iw_bound(log_w: torch.Tensor) -> torch.Tensor:
    """L_K = log (1/K) sum_j w_j for every row of log_w (N, K): shape (N,), in nats."""
    _check_log_w(log_w)
    return torch.logsumexp(log_w.double(), dim=1) - math.log(log_w.shape[1])


def nested_bounds(log_w: torch.Tensor, ks) -> dict[int, torch.Tensor]:
    """L_K from the first K samples of every image, for each K in ks: {K: (N,)}.

    The bounds share samples, so their differences are far less noisy than those of independent
    estimates, while each one alone is an ordinary L_K estimate.
    """
    _check_log_w(log_w)
    out = {}
    for k in ks:
        if not 1 <= int(k) <= log_w.shape[1]:
            raise ValueError(f"K = {k} needs 1 <= K <= {log_w.shape[1]} (the samples in log_w)")
        out[int(k)] = iw_bound(log_w[:, :int(k)])
    return out


def replicate_bounds(log_w: torch.Tensor, k: int) -> torch.Tensor:
    """Independent replicates of L_K from disjoint groups of K samples: shape (N, K_total // K).

    The samples are i.i.d., so group r is exactly an L_K estimate drawn with another seed.
    """
    _check_log_w(log_w)
    k = int(k)
    if not 1 <= k <= log_w.shape[1]:
        raise ValueError(f"K = {k} needs 1 <= K <= {log_w.shape[1]} (the samples in log_w)")
    r = log_w.shape[1] // k
    groups = log_w[:, :r * k].reshape(log_w.shape[0], r, k)
    return torch.logsumexp(groups.double(), dim=2) - math.log(k)


def bound_table(log_w: torch.Tensor, ks) -> list[dict]:
    """One row per K: the mean L_K over the images, its standard error over images, and its
    spread over seeds (standard deviation of the image-averaged L_K across independent replicates
    from `replicate_bounds`; NaN when there is only one replicate). Values in nats per image.
    """
    nested = nested_bounds(log_w, ks)
    rows = []
    for k, values in nested.items():
        reps = replicate_bounds(log_w, k).mean(0)  # (R,) image-averaged L_K per replicate
        rows.append({
            "K": k,
            "n_images": int(values.shape[0]),
            "mean": float(values.mean()),
            "se_images": float(values.std() / math.sqrt(values.shape[0])) if values.shape[0] > 1 else math.nan,
            "seed_std": float(reps.std()) if reps.shape[0] > 1 else math.nan,
            "n_replicates": int(reps.shape[0]),
        })
    return rows


def format_bound_table(rows: list[dict]) -> str:
    """The rows of `bound_table` as aligned text, with -L_K as the usual NLL bound in nats."""
    lines = [f"{'K':>6} {'images':>7} {'mean L_K':>10} {'SE (images)':>12} {'std (seeds)':>12} {'replicates':>11}"]
    for r in rows:
        lines.append(f"{r['K']:>6} {r['n_images']:>7} {r['mean']:>10.2f} {r['se_images']:>12.2f} "
                     f"{r['seed_std']:>12.3f} {r['n_replicates']:>11}")
    return "\n".join(lines)


# -- caching expensive evaluations (checksummed, beside the cached runs) ------------------------

EVAL_CACHE_VERSION = 1


def cached_log_weights(model, x: torch.Tensor, k: int, seed: int = 0, batch_size: int = 100,
                       max_elements: int = 2**24, use_cache: bool = True) -> torch.Tensor:
    """`log_weights`, stored under <cache>/evals/<hash>/ with a sha256 of the file.

    The hash covers the model's parameters, the images, k, seed, batch_size and max_elements, so
    a result is reused only for the very same computation (e.g. the in-distribution scores of
    book/anomaly.md are those of book/evaluation.md). A file failing its checksum is recomputed.
    """
    from .train import fingerprint_hash

    key = fingerprint_hash({"what": "log_weights", "version": EVAL_CACHE_VERSION, "model": model_digest(model),
                            "x": tensor_digest(x), "k": int(k), "seed": seed, "batch_size": batch_size,
                            "max_elements": max_elements, "device": x.device.type})
    folder = cache_dir() / "evals" / key
    path, info_path = folder / "log_w.pt", folder / "info.json"
    if use_cache and (entry := load_checked(path, info_path, map_location=x.device)) is not None:
        return entry[0]
    start = time.perf_counter()
    log_w = log_weights(model, x, k, seed, batch_size, max_elements)
    if use_cache:
        save_checked(log_w.cpu(), path, info_path, {"k": int(k), "n_images": int(x.shape[0]), "seed": seed,
                                                     "wall_time_s": time.perf_counter() - start})
    return log_w
