"""Out-of-distribution inputs built from MNIST itself, and the ROC AUC of a detector.

Introduced in book/anomaly.md. A likelihood-based detector flags an input as anomalous when its
(estimated) log p_theta(x) is low; `roc_auc` measures how well a score separates in-distribution
inputs from out-of-distribution ones, whatever the score is.
"""

from __future__ import annotations

import math

import torch

# Each kind keeps MNIST's format (784 binary pixels) so the only change is what the images show.
OOD_KINDS = ("noise", "inverted", "rotated", "flipped", "blank")


def _side(x: torch.Tensor) -> int:
    side = math.isqrt(x.shape[-1])
    if side * side != x.shape[-1]:
        raise ValueError(f"images must be square, flattened to side*side pixels; got {x.shape[-1]} pixels")
    return side


def make_ood(kind: str, x: torch.Tensor, seed: int = 0) -> torch.Tensor:
    """Out-of-distribution images of the same shape as x (N, side*side), values in [0, 1].

    "noise": every pixel an independent fair coin (uniform noise binarized at 1/2; x only gives
    the shape); "inverted": 1 - x (white digit on black becomes black on white); "rotated": each
    image turned by 90 degrees counter-clockwise; "flipped": mirrored left-right; "blank": all
    pixels 0. `seed` fixes the noise.
    """
    if kind not in OOD_KINDS:
        raise ValueError(f"unknown out-of-distribution kind {kind!r}; choose one of {OOD_KINDS}")
    if x.ndim != 2:
        raise ValueError(f"x must be a 2-D tensor (N, side*side), got shape {tuple(x.shape)}")
    if not torch.is_floating_point(x):
        raise TypeError(f"x must be a floating tensor with values in [0, 1], got dtype {x.dtype}; use x.float()")
    if x.numel() and (float(x.min()) < 0 or float(x.max()) > 1):
        raise ValueError("x must hold pixel values in [0, 1]; scale it (x / 255) first")
    side = _side(x)
    if kind == "noise":
        g = torch.Generator(device=x.device)
        g.manual_seed(seed)
        u = torch.rand(x.shape, dtype=x.dtype, device=x.device, generator=g)
        return (u < 0.5).to(x.dtype)
    if kind == "inverted":
        return 1.0 - x
    if kind == "blank":
        return torch.zeros_like(x)
    images = x.reshape(-1, side, side)
    if kind == "rotated":
        images = torch.rot90(images, k=1, dims=(1, 2))
    else:  # flipped
        images = torch.flip(images, dims=(2,))
    return images.reshape(x.shape).contiguous()


def _as_1d(scores, name: str) -> torch.Tensor:
    t = torch.as_tensor(scores).detach().cpu().double().reshape(-1)
    if t.numel() == 0:
        raise ValueError(f"{name} is empty; the AUC needs at least one score on each side")
    if not torch.isfinite(t).all():
        raise ValueError(f"{name} contains NaN or inf; remove or fix those scores first")
    return t


def _midranks(values: torch.Tensor) -> torch.Tensor:
    """Ranks 1..n of values, ties sharing the mean of the ranks they occupy."""
    order = torch.argsort(values, stable=True)
    sorted_v = values[order]
    n = values.numel()
    # Boundaries of runs of equal values in sorted order.
    new_run = torch.ones(n, dtype=torch.bool)
    new_run[1:] = sorted_v[1:] != sorted_v[:-1]
    run_id = torch.cumsum(new_run.long(), 0) - 1
    starts = torch.nonzero(new_run).reshape(-1)
    ends = torch.cat([starts[1:], torch.tensor([n])])
    mean_rank = (starts + 1 + ends).double() / 2  # mean of ranks start+1 .. end
    ranks = torch.empty(n, dtype=torch.float64)
    ranks[order] = mean_rank[run_id]
    return ranks


def roc_auc(scores_in, scores_out) -> float:
    """Area under the ROC curve for "in-distribution scores higher": P(S_in > S_out) + P(tie)/2.

    Computed from ranks as the Mann-Whitney statistic U_in / (n_in n_out), with
    U_in = (sum of the midranks of scores_in in the pooled sample) - n_in (n_in + 1) / 2, in
    O(n log n). 1: every in-distribution input scores higher; 0.5: chance; below 0.5: the
    out-of-distribution inputs score *higher*, i.e. the detector is worse than chance.
    """
    s_in, s_out = _as_1d(scores_in, "scores_in"), _as_1d(scores_out, "scores_out")
    n_in, n_out = s_in.numel(), s_out.numel()
    ranks = _midranks(torch.cat([s_in, s_out]))
    u_in = float(ranks[:n_in].sum()) - n_in * (n_in + 1) / 2
    return u_in / (n_in * n_out)


def roc_curve(scores_in, scores_out) -> tuple[torch.Tensor, torch.Tensor]:
    """(false-positive rate, true-positive rate) over all thresholds, from (0, 0) to (1, 1).

    A positive is an input flagged as out-of-distribution (score <= threshold); the trapezoid
    area under this curve equals `roc_auc`.
    """
    s_in, s_out = _as_1d(scores_in, "scores_in"), _as_1d(scores_out, "scores_out")
    thresholds = torch.unique(torch.cat([s_in, s_out]))  # sorted ascending
    # Flag everything with score <= t, t rising: out-of-distribution flagged = true positives.
    # Counting through searchsorted on sorted scores keeps memory O(n), not O(n^2).
    tpr = torch.searchsorted(torch.sort(s_out).values, thresholds, right=True).double() / s_out.numel()
    fpr = torch.searchsorted(torch.sort(s_in).values, thresholds, right=True).double() / s_in.numel()
    zero = torch.zeros(1, dtype=torch.float64)
    return torch.cat([zero, fpr]), torch.cat([zero, tpr])
