"""Figures the chapters draw, each returning (fig, ax) so a chapter can adjust it.

Introduced in book/first_vae.md. One idea per figure; ELBO-type quantities are labelled in nats.
"""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
import torch


def plot_history(history: dict[str, list[float]], quantities=("elbo", "recon", "kl")):
    """One panel per quantity, train and test curves against the epoch."""
    titles = {"elbo": "ELBO", "recon": "reconstruction  E_q[log p(x|z)]", "kl": "KL(q(z|x) || p(z))"}
    fig, axes = plt.subplots(1, len(quantities), figsize=(4.2 * len(quantities), 3.2), squeeze=False)
    for ax, q in zip(axes[0], quantities):
        for split, style in (("train", "-"), ("test", "--")):
            values = history.get(f"{split}_{q}")
            if values:
                ax.plot(np.arange(1, len(values) + 1), values, style, marker="o", ms=3, label=split)
        ax.set_xlabel("epoch")
        ax.set_ylabel("nats per image")
        ax.set_title(titles.get(q, q))
        ax.legend()
    fig.tight_layout()
    return fig, axes[0]


def image_grid(images: torch.Tensor | np.ndarray, n_cols: int = 10, side: int = 28, ax=None, title: str | None = None):
    """Show (N, side*side) or (N, side, side) images in [0, 1] as one grid, grey on white."""
    images = torch.as_tensor(images).detach().float().cpu().reshape(-1, side, side)
    n = images.shape[0]
    n_rows = int(np.ceil(n / n_cols))
    canvas = torch.ones(n_rows * (side + 2), n_cols * (side + 2))
    for i in range(n):
        r, c = divmod(i, n_cols)
        canvas[r * (side + 2) + 1:r * (side + 2) + 1 + side, c * (side + 2) + 1:c * (side + 2) + 1 + side] = images[i]
    if ax is None:
        fig, ax = plt.subplots(figsize=(n_cols * 0.6, n_rows * 0.6 + (0.4 if title else 0)))
    else:
        fig = ax.figure
    ax.imshow(canvas.numpy(), cmap="gray_r", vmin=0, vmax=1, interpolation="nearest")
    ax.set_axis_off()
    if title:
        ax.set_title(title)
    return fig, ax


@torch.no_grad()
def reconstruction_grid(model, x: torch.Tensor, n: int = 10):
    """Top row: n inputs; bottom row: the decoder's pixel probabilities at the posterior mean."""
    model.eval()
    mu, _ = model.encode(x[:n])
    recon = torch.sigmoid(model.decode(mu))
    return image_grid(torch.cat([x[:n], recon]), n_cols=n, title="inputs (top) and reconstructions (bottom)")
