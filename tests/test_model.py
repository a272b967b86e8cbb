"""Shapes and structure of the encoder and decoder."""

from __future__ import annotations

import pytest
import torch

from vae_lib.model import VAE, VAEConfig

SHAPES = {"batch": (5,), "samples_x_batch": (3, 5)}
CONFIGS = {
    "classic_784_400_20_relu": VAEConfig(),
    "burda_784_200_200_50_tanh": VAEConfig(hidden_dims=(200, 200), z_dim=50, activation="tanh"),
    "two_d": VAEConfig(z_dim=2),
}


@pytest.mark.parametrize("config", CONFIGS.values(), ids=CONFIGS.keys())
@pytest.mark.parametrize("lead", SHAPES.values(), ids=SHAPES.keys())
def test_shapes(config, lead):
    model = VAE(config)
    x = torch.rand(*lead, config.x_dim)
    out = model(x)
    assert out.logits.shape == (*lead, config.x_dim)
    assert out.mu.shape == out.logvar.shape == out.z.shape == (*lead, config.z_dim)
    assert model.sample(4).shape == (4, config.x_dim)
    assert 0 <= model.sample(4).min() and model.sample(4).max() <= 1


def test_layer_sizes_follow_config():
    model = VAE(VAEConfig(hidden_dims=(200, 100), z_dim=7, activation="tanh"))
    linear = [m for m in model.encoder.modules() if isinstance(m, torch.nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linear] == [(784, 200), (200, 100), (100, 14)]
    linear = [m for m in model.decoder.modules() if isinstance(m, torch.nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linear] == [(7, 100), (100, 200), (200, 784)]
    assert any(isinstance(m, torch.nn.Tanh) for m in model.modules())
    assert not any(isinstance(m, torch.nn.ReLU) for m in model.modules())


def test_decoder_returns_logits_not_probabilities():
    torch.manual_seed(0)
    model = VAE(VAEConfig(z_dim=2))
    logits = model.decode(torch.randn(100, 2) * 3)
    assert logits.min() < 0 or logits.max() > 1, "logits are unbounded, probabilities are not"


def test_decode_refuses_wrong_latent_width():
    with pytest.raises(ValueError, match="z_dim=20"):
        VAE().decode(torch.zeros(3, 2))
