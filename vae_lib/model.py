"""The VAE's two networks: an inference network q_phi(z|x) and a generative network p_theta(x|z).

Introduced in the chapter "A first VAE on MNIST" (book/first_vae.md). Notation, fixed for the
whole book: **phi** parametrises the encoder (inference network) q_phi(z|x); **theta** parametrises
the decoder (generative network) p_theta(x|z). This module imports only torch.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import NamedTuple

import torch
from torch import nn

_ACTIVATIONS = {"relu": nn.ReLU, "tanh": nn.Tanh}


@dataclass(frozen=True)
class VAEConfig:
    """Sizes of the MLP encoder and decoder.

    The defaults are the 784-400-20 model of Kingma & Welling (2013) and of pytorch/examples,
    the model most readers have seen, so the book's numbers can be compared with theirs.
    """

    # 28 x 28 MNIST pixels, flattened.
    x_dim: int = 784
    # One hidden layer of 400 units: the classic tutorial size; Burda et al. (2015) use (200, 200).
    hidden_dims: tuple[int, ...] = (400,)
    # 20 latent dimensions reconstruct MNIST well; use 2 to draw the latent space.
    z_dim: int = 20
    # ReLU trains fastest here; "tanh" is what Kingma & Welling and Burda et al. used.
    activation: str = "relu"

    def __post_init__(self) -> None:
        # Accept lists (from JSON or a CLI) but store a tuple so the config stays hashable.
        object.__setattr__(self, "hidden_dims", tuple(int(h) for h in self.hidden_dims))
        if self.activation not in _ACTIVATIONS:
            raise ValueError(
                f"unknown activation {self.activation!r}; use one of {sorted(_ACTIVATIONS)}"
            )
        for name in ("x_dim", "z_dim"):
            if int(getattr(self, name)) <= 0:
                raise ValueError(f"{name} must be a positive integer, got {getattr(self, name)!r}")
        if any(h <= 0 for h in self.hidden_dims):
            raise ValueError(f"hidden_dims must be positive integers, got {self.hidden_dims!r}")

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["hidden_dims"] = list(self.hidden_dims)
        return d


def _mlp(sizes: list[int], activation: str) -> nn.Sequential:
    """Linear layers with `activation` between them and none after the last."""
    layers: list[nn.Module] = []
    for i, (n_in, n_out) in enumerate(zip(sizes[:-1], sizes[1:])):
        layers.append(nn.Linear(n_in, n_out))
        if i < len(sizes) - 2:
            layers.append(_ACTIVATIONS[activation]())
    return nn.Sequential(*layers)


class Encoder(nn.Module):
    """Inference network q_phi(z|x) = N(mu, diag(exp(logvar)))."""

    def __init__(self, config: VAEConfig):
        super().__init__()
        self.config = config
        self.body = _mlp([config.x_dim, *config.hidden_dims], config.activation)
        self.body.append(_ACTIVATIONS[config.activation]())
        # One layer outputs mu and logvar together: one matmul instead of two.
        self.head = nn.Linear(config.hidden_dims[-1], 2 * config.z_dim)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.body(x)
        mu, logvar = self.head(h).chunk(2, dim=-1)  # each (..., z_dim)
        return mu, logvar


class Decoder(nn.Module):
    """Generative network p_theta(x|z): Bernoulli pixels, returned as logits (not probabilities).

    Logits keep the log-likelihood finite where sigmoid would round to 0 or 1 (see
    book/bernoulli_decoder.md).
    """

    def __init__(self, config: VAEConfig):
        super().__init__()
        self.config = config
        self.net = _mlp(
            [config.z_dim, *reversed(config.hidden_dims), config.x_dim], config.activation
        )

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.net(z)  # (..., x_dim) logits


class VAEOutput(NamedTuple):
    logits: torch.Tensor  # (..., x_dim) decoder logits of p_theta(x|z)
    mu: torch.Tensor  # (..., z_dim)
    logvar: torch.Tensor  # (..., z_dim)
    z: torch.Tensor  # (..., z_dim) one reparametrised sample


def reparametrize(
    mu: torch.Tensor, logvar: torch.Tensor, generator: torch.Generator | None = None
) -> torch.Tensor:
    """z = mu + sigma * eps with sigma = exp(logvar / 2) and eps ~ N(0, I).

    Kingma & Welling (2013), eq. (10). sigma multiplies eps, not sigma**2 (a common tutorial slip).
    """
    eps = torch.randn(mu.shape, dtype=mu.dtype, device=mu.device, generator=generator)
    return mu + torch.exp(0.5 * logvar) * eps


class VAE(nn.Module):
    """Encoder phi and decoder theta with the reparametrised sample between them.

    Introduced in book/first_vae.md.
    """

    def __init__(self, config: VAEConfig | None = None):
        super().__init__()
        self.config = config or VAEConfig()
        self.encoder = Encoder(self.config)
        self.decoder = Decoder(self.config)

    def _check_input(self, x: torch.Tensor) -> None:
        if x.shape[-1] != self.config.x_dim:
            raise ValueError(
                f"expected inputs with last dimension x_dim={self.config.x_dim}, got shape "
                f"{tuple(x.shape)}; flatten images first, e.g. x.view(x.shape[0], -1)"
            )

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        self._check_input(x)
        return self.encoder(x)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        if z.shape[-1] != self.config.z_dim:
            raise ValueError(
                f"expected latents with last dimension z_dim={self.config.z_dim}, "
                f"got shape {tuple(z.shape)}"
            )
        return self.decoder(z)

    def forward(self, x: torch.Tensor, generator: torch.Generator | None = None) -> VAEOutput:
        mu, logvar = self.encode(x)
        z = reparametrize(mu, logvar, generator)
        return VAEOutput(self.decoder(z), mu, logvar, z)

    @torch.no_grad()
    def sample(
        self, n: int, generator: torch.Generator | None = None, device: torch.device | str | None = None
    ) -> torch.Tensor:
        """Pixel probabilities of n images decoded from z ~ N(0, I): shape (n, x_dim)."""
        device = device or next(self.parameters()).device
        z = torch.randn(n, self.config.z_dim, generator=generator, device=device)
        return torch.sigmoid(self.decoder(z))


__all__ = ["VAEConfig", "Encoder", "Decoder", "VAE", "VAEOutput", "reparametrize"]
