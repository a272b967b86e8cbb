"""The latent space of a trained VAE: posterior means, decoded grids, interpolations, active units,
and how the encoder's map of the test set forms during training.

Introduced in book/generation.md (means, grids, interpolation, snapshots) and book/beyond.md
(active units). Everything here reads a trained model; only `latent_snapshots` trains one, through
`runs.train_vae`, and caches what it records.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .book import default_device
from .cache import cache_dir, load_checked, save_checked, tensor_digest
from .data import MNISTTensors, load_mnist
from .model import VAE, VAEConfig
from .runs import run_fingerprint, train_vae
from .train import TrainConfig, fingerprint_hash, seed_everything


@torch.no_grad()
def posterior_means(model, x: torch.Tensor, batch_size: int = 1000) -> torch.Tensor:
    """The encoder means mu_phi(x) of every image of x: shape (N, z_dim), no gradients."""
    if x.ndim != 2:
        raise ValueError(f"x must be a 2-D tensor (N, x_dim), got shape {tuple(x.shape)}; flatten the images")
    model.eval()
    return torch.cat([model.encode(x[i:i + batch_size])[0] for i in range(0, len(x), batch_size)])


@dataclass
class ActiveUnits:
    activity: torch.Tensor  # (z_dim,) A_u = Var_x(E_q[u | x]) per latent dimension
    active: torch.Tensor  # (z_dim,) bool, activity > threshold
    threshold: float

    @property
    def n_active(self) -> int:
        return int(self.active.sum())


@torch.no_grad()
def active_units(model, x: torch.Tensor, threshold: float = 0.01, batch_size: int = 1000) -> ActiveUnits:
    """Burda et al. (2015), section 5.2: unit u is active when A_u = Cov_x(E_{q(u|x)}[u]) > threshold.

    E_q[u | x] is the encoder mean mu_u(x); A_u is its variance over the images x (the unbiased
    sample variance). An inactive unit's mean ignores the input: the encoder sends every x to the
    same place along u, and the decoder cannot use u. Burda et al. use threshold 0.01, noting that
    the distribution of A_u is strongly bimodal, so the exact value matters little. Introduced in
    book/beyond.md.
    """
    if not threshold >= 0:
        raise ValueError(f"threshold must be a number >= 0, got {threshold!r}")
    if x.shape[0] < 2:
        raise ValueError(f"active_units needs at least 2 images to compute a variance, got {x.shape[0]}")
    mu = posterior_means(model, x, batch_size).double()  # float64: a variance of 10^4 means
    activity = mu.var(dim=0)
    return ActiveUnits(activity, activity > threshold, float(threshold))


def _check_2d_model(model) -> None:
    z_dim = model.config.z_dim
    if z_dim != 2:
        raise ValueError(f"a decoded grid needs a model with z_dim=2, this one has z_dim={z_dim}; "
                         "use book_model('z2')")


@torch.no_grad()
def decode_grid(model, lim: float = 3.0, n: int = 15) -> tuple[torch.Tensor, torch.Tensor]:
    """Decode an n x n grid of z values over [-lim, lim]^2 (a 2-D latent space only).

    Returns (probs, z): probs (n*n, x_dim) are the decoder's pixel probabilities sigmoid(logits),
    the mean of p_theta(x|z); z (n*n, 2). Row-major with z_2 *decreasing* down the rows and z_1
    increasing along them, so that reshaping to (n, n) reads like a plot with z_2 pointing up.
    Under the prior, [-3, 3]^2 holds 99.5% of the mass. Introduced in book/generation.md.
    """
    _check_2d_model(model)
    if n < 2:
        raise ValueError(f"n must be at least 2 grid points per axis, got {n}")
    if not lim > 0:
        raise ValueError(f"lim must be > 0, got {lim!r}")
    param = next(model.parameters())
    axis = torch.linspace(-lim, lim, n, device=param.device, dtype=param.dtype)
    z2, z1 = torch.meshgrid(axis.flip(0), axis, indexing="ij")
    z = torch.stack([z1.reshape(-1), z2.reshape(-1)], dim=-1)
    model.eval()
    return torch.sigmoid(model.decode(z)), z


def interpolate_latents(z_start: torch.Tensor, z_end: torch.Tensor, n_steps: int = 10,
                        kind: str = "linear") -> torch.Tensor:
    """Points between two latent codes, both ends included: shape (n_steps, z_dim).

    "linear": z(t) = (1 - t) z_start + t z_end. "spherical" (slerp, White 2016): interpolate the
    angle between the two vectors, z(t) = [sin((1-t) w) z_start + sin(t w) z_end] / sin(w) with
    cos w = <z_start, z_end> / (|z_start| |z_end|); when the endpoints have similar norms the path
    keeps that norm, where a Gaussian prior in many dimensions puts its mass, while the
    midpoint of a linear path is shorter. Introduced in book/generation.md.
    """
    if z_start.shape != z_end.shape or z_start.ndim != 1:
        raise ValueError(f"z_start and z_end must be two 1-D codes of the same size, got "
                         f"{tuple(z_start.shape)} and {tuple(z_end.shape)}")
    if n_steps < 2:
        raise ValueError(f"n_steps must be at least 2 (both ends), got {n_steps}")
    t = torch.linspace(0.0, 1.0, n_steps, dtype=z_start.dtype, device=z_start.device)[:, None]
    if kind == "linear":
        return (1 - t) * z_start + t * z_end
    if kind == "spherical":
        cos = torch.dot(z_start, z_end) / (z_start.norm() * z_end.norm())
        omega = torch.arccos(cos.clamp(-1.0, 1.0))
        if float(torch.sin(omega)) < 1e-6:
            # Parallel codes: the great circle is not defined and slerp reduces to lerp.
            return (1 - t) * z_start + t * z_end
        return (torch.sin((1 - t) * omega) * z_start + torch.sin(t * omega) * z_end) / torch.sin(omega)
    raise ValueError(f"unknown interpolation {kind!r}; use 'linear' or 'spherical'")


# -- how the latent map forms during training -------------------------------------------------

@dataclass
class LatentSnapshots:
    epochs: list[int]  # 0 = the initialised, untrained encoder
    means: torch.Tensor  # (len(epochs), N, z_dim) encoder means of the fixed images, on the CPU
    history: dict[str, list[float]]  # the run's per-epoch history, as train_vae records it
    info: dict  # fingerprint, cached (bool), files


def latent_snapshots(
    model_config: VAEConfig,
    train_config: TrainConfig,
    x: torch.Tensor,
    binarization: str = "dynamic",
    n_train: int | None = None,
    data: MNISTTensors | None = None,
    device=None,
    use_cache: bool = True,
) -> LatentSnapshots:
    """Train a VAE as `runs.train_vae` does and record the encoder means of the images x before
    training and after every epoch; cached and checksummed under <cache>/snapshots/<hash>/.

    The training is exactly train_vae's (same seed, same code path), so the last snapshot equals
    the means of the cached run with the same configuration. The fingerprint is train_vae's plus
    a digest of x. The recording uses the Trainer's `callbacks` (callback(trainer) after each
    epoch). Introduced in book/generation.md.
    """
    if x.ndim != 2 or x.shape[-1] != model_config.x_dim:
        raise ValueError(f"x must have shape (N, {model_config.x_dim}), got {tuple(x.shape)}")
    device = torch.device(device) if device is not None else default_device()
    data = (data if data is not None else load_mnist(device)).to(device)
    n_train = n_train or data.x_train.shape[0]
    fp = {"run": run_fingerprint(model_config, train_config, binarization, 1.0, 0, n_train),
          "x": tensor_digest(x), "n_x": int(x.shape[0]), "kind": "latent_snapshots"}
    folder = cache_dir() / "snapshots" / fingerprint_hash(fp)
    tensors_path, info_path = folder / "snapshots.pt", folder / "snapshots.json"
    if use_cache and (entry := load_checked(tensors_path, info_path, map_location="cpu")) is not None:
        saved, info = entry
        return LatentSnapshots(info["epochs"], saved["means"], info["history"], {**info, "cached": True})

    x = x.to(device)
    # The untrained encoder: train_vae seeds and builds the model exactly like this.
    seed_everything(train_config.seed)
    means = [posterior_means(VAE(model_config).to(device), x).cpu()]

    def record(trainer) -> None:
        means.append(posterior_means(trainer.model, x).cpu())
        trainer.model.train()  # posterior_means switched to eval mode; the next epoch trains

    run = train_vae(model_config, train_config, binarization, n_train=n_train, data=data,
                    device=device, use_cache=False, callbacks=[record])
    epochs = list(range(len(means)))
    stacked = torch.stack(means)
    info = {"fingerprint": fp, "epochs": epochs, "history": run.history}
    if use_cache:
        info = save_checked({"means": stacked}, tensors_path, info_path, info)
    return LatentSnapshots(epochs, stacked, run.history, {**info, "cached": False})
