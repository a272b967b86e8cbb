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


# -- the latent space (book/generation.md) ---------------------------------------------------

def latent_scatter(mu: torch.Tensor, labels: torch.Tensor, ax=None, title: str | None = None,
                   lim: float | None = None, s: float = 2.0, legend: bool = True):
    """Posterior means in a 2-D latent space, one dot per image, coloured by its digit (0-9).

    `lim` fixes both axes to [-lim, lim] so that panels of several snapshots compare; `legend`
    adds a key from colour to digit. Introduced in book/generation.md.
    """
    mu = torch.as_tensor(mu).detach().cpu()
    labels = torch.as_tensor(labels).detach().cpu()
    if mu.ndim != 2 or mu.shape[1] != 2:
        raise ValueError(f"latent_scatter draws 2-D codes: mu must have shape (N, 2), got {tuple(mu.shape)}")
    if labels.shape != (mu.shape[0],):
        raise ValueError(f"labels must have shape ({mu.shape[0]},), one digit per point, got {tuple(labels.shape)}")
    if ax is None:
        fig, ax = plt.subplots(figsize=(5.2, 4.6))
    else:
        fig = ax.figure
    points = ax.scatter(mu[:, 0].numpy(), mu[:, 1].numpy(), c=labels.numpy(), cmap="tab10",
                        vmin=-0.5, vmax=9.5, s=s, alpha=0.8, linewidths=0)
    if lim is not None:
        ax.set_xlim(-lim, lim)
        ax.set_ylim(-lim, lim)
    ax.set_aspect("equal")
    ax.set_xlabel(r"$z_1$ (posterior mean)")
    ax.set_ylabel(r"$z_2$ (posterior mean)")
    if legend:
        handles, _ = points.legend_elements(num=None)
        digits = sorted(int(d) for d in labels.unique())
        ax.legend(handles, digits, title="digit", loc="center left", bbox_to_anchor=(1.0, 0.5),
                  fontsize=8, markerscale=0.8, frameon=False)
    if title:
        ax.set_title(title)
    return fig, ax


def decoded_grid_plot(probs: torch.Tensor, n: int, lim: float, side: int = 28, ax=None, title: str | None = None):
    """Images decoded on an n x n grid over [-lim, lim]^2 (as latent.decode_grid orders them),
    drawn at their z coordinates: z_1 along the horizontal axis, z_2 up. Introduced in
    book/generation.md.
    """
    probs = torch.as_tensor(probs).detach().float().cpu()
    if probs.shape[0] != n * n:
        raise ValueError(f"expected n*n = {n * n} images for an {n} x {n} grid, got {probs.shape[0]}")
    canvas = probs.reshape(n, n, side, side).permute(0, 2, 1, 3).reshape(n * side, n * side)
    if ax is None:
        fig, ax = plt.subplots(figsize=(6, 6))
    else:
        fig = ax.figure
    half = lim / (n - 1)  # half a grid step: each image is centred on its z value
    ax.imshow(canvas.numpy(), cmap="gray_r", vmin=0, vmax=1, interpolation="nearest",
              extent=(-lim - half, lim + half, -lim - half, lim + half))
    ax.set_xlabel(r"$z_1$")
    ax.set_ylabel(r"$z_2$")
    if title:
        ax.set_title(title)
    return fig, ax


def interpolation_strip(probs: torch.Tensor, ts: torch.Tensor | None = None, side: int = 28, ax=None,
                        title: str | None = None):
    """Decoded points of a latent path in one row, left to right, with t under each image.

    Introduced in book/generation.md.
    """
    probs = torch.as_tensor(probs).detach().float().cpu().reshape(-1, side, side)
    n = probs.shape[0]
    ts = torch.linspace(0, 1, n) if ts is None else torch.as_tensor(ts).cpu()
    if ts.shape != (n,):
        raise ValueError(f"ts must hold one value per image ({n}), got shape {tuple(ts.shape)}")
    if ax is None:
        fig, ax = plt.subplots(figsize=(n * 0.8, 1.3))
    else:
        fig = ax.figure
    ax.imshow(torch.cat(list(probs), dim=1).numpy(), cmap="gray_r", vmin=0, vmax=1,
              interpolation="nearest", extent=(0, n * side, side, 0))
    ax.set_xticks([(i + 0.5) * side for i in range(n)], [f"{float(t):.2f}" for t in ts], fontsize=7)
    ax.set_yticks([])
    ax.set_xlabel("interpolation parameter t")
    if title:
        ax.set_title(title)
    return fig, ax
