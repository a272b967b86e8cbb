"""The latent-space tools (book/generation.md, book/beyond.md) and their figures."""

from __future__ import annotations

import json
import math

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

from vae_lib.latent import (  # noqa: E402
    active_units,
    decode_grid,
    interpolate_latents,
    latent_snapshots,
    posterior_means,
)
from vae_lib.model import VAE, VAEConfig  # noqa: E402
from vae_lib.plots import decoded_grid_plot, interpolation_strip, latent_scatter  # noqa: E402
from vae_lib.runs import binarized_test_set, train_vae  # noqa: E402
from vae_lib.train import TrainConfig  # noqa: E402


@pytest.fixture
def vae_z2():
    torch.manual_seed(0)
    return VAE(VAEConfig(x_dim=12, hidden_dims=(8,), z_dim=2)).double()


def test_posterior_means_in_batches_equal_one_pass(tiny_vae):
    x = torch.rand(25, 12, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(posterior_means(tiny_vae, x, batch_size=7), tiny_vae.encode(x)[0].detach())
    with pytest.raises(ValueError, match="2-D tensor"):
        posterior_means(tiny_vae, x[0])


def test_active_units_counts_units_whose_mean_ignores_x(tiny_vae):
    x = torch.rand(400, 12, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    head = tiny_vae.encoder.head  # rows 0..z_dim-1 give mu
    with torch.no_grad():
        head.weight[1].zero_()  # mu_1 no longer depends on x: an inactive unit
        head.bias[1] = 0.7
        head.weight[0].mul_(10.0)  # mu_0 varies a lot over x
        head.weight[2].mul_(1e-3)  # mu_2 varies, but by less than the 0.01 threshold
    result = active_units(tiny_vae, x)
    mu = tiny_vae.encode(x)[0].detach()
    torch.testing.assert_close(result.activity, mu.var(0))
    assert float(result.activity[1]) == 0.0
    assert float(result.activity[0]) > 0.01 > float(result.activity[2])
    assert result.active.tolist() == [True, False, False] and result.n_active == 1
    assert active_units(tiny_vae, x, threshold=0.0).n_active == 2
    with pytest.raises(ValueError, match="at least 2 images"):
        active_units(tiny_vae, x[:1])
    with pytest.raises(ValueError, match="threshold must be"):
        active_units(tiny_vae, x, threshold=-1.0)


def test_decode_grid_layout(vae_z2):
    probs, z = decode_grid(vae_z2, lim=3.0, n=5)
    assert probs.shape == (25, 12) and z.shape == (25, 2)
    # First row: z_2 = +lim (top of the picture), z_1 from -lim to +lim; last image bottom right.
    assert z[0].tolist() == [-3.0, 3.0] and z[4].tolist() == [3.0, 3.0] and z[-1].tolist() == [3.0, -3.0]
    assert z[12].tolist() == [0.0, 0.0]
    torch.testing.assert_close(probs, torch.sigmoid(vae_z2.decode(z)).detach())
    with pytest.raises(ValueError, match="z_dim=2"):
        decode_grid(VAE(VAEConfig(x_dim=12, hidden_dims=(8,), z_dim=3)))
    with pytest.raises(ValueError, match="at least 2 grid points"):
        decode_grid(vae_z2, n=1)


def test_linear_interpolation():
    a, b = torch.tensor([1.0, -2.0, 0.5]), torch.tensor([3.0, 2.0, 0.5])
    path = interpolate_latents(a, b, n_steps=5)
    assert path.shape == (5, 3)
    torch.testing.assert_close(path[0], a)
    torch.testing.assert_close(path[-1], b)
    torch.testing.assert_close(path[2], (a + b) / 2)


def test_spherical_interpolation_keeps_the_norm_and_equal_angles():
    g = torch.Generator().manual_seed(0)
    a = torch.randn(20, generator=g, dtype=torch.float64)
    b = torch.randn(20, generator=g, dtype=torch.float64)
    b = b * a.norm() / b.norm()
    path = interpolate_latents(a, b, n_steps=7, kind="spherical")
    torch.testing.assert_close(path[0], a)
    torch.testing.assert_close(path[-1], b)
    torch.testing.assert_close(path.norm(dim=1), torch.full((7,), float(a.norm()), dtype=torch.float64))
    cosines = (path[:-1] * path[1:]).sum(1) / (path[:-1].norm(dim=1) * path[1:].norm(dim=1))
    torch.testing.assert_close(cosines, cosines[:1].expand(6))
    # The linear path's midpoint is shorter: the norm the prior rarely produces in 20 dimensions.
    assert float(interpolate_latents(a, b, 7)[3].norm()) < float(a.norm())
    # Parallel codes: slerp is undefined and falls back to the straight line.
    torch.testing.assert_close(interpolate_latents(a, 2 * a, 3, "spherical"), interpolate_latents(a, 2 * a, 3))
    with pytest.raises(ValueError, match="unknown interpolation 'cubic'"):
        interpolate_latents(a, b, 3, kind="cubic")
    with pytest.raises(ValueError, match="same size"):
        interpolate_latents(a, b[:5])


def test_latent_scatter(vae_z2):
    mu = torch.randn(50, 2)
    labels = torch.arange(50) % 10
    fig, ax = latent_scatter(mu, labels, lim=3.0, title="t")
    points = ax.collections[0]
    assert points.get_offsets().shape == (50, 2)
    assert [t.get_text() for t in ax.get_legend().get_texts()] == [str(d) for d in range(10)]
    assert ax.get_xlim() == (-3.0, 3.0) and "z_1" in ax.get_xlabel()
    plt.close(fig)
    with pytest.raises(ValueError, match=r"shape \(N, 2\)"):
        latent_scatter(torch.randn(5, 3), labels[:5])
    with pytest.raises(ValueError, match="one digit per point"):
        latent_scatter(mu, labels[:4])


def test_decoded_grid_plot_places_images_by_z():
    n, side = 3, 4
    probs = torch.rand(n * n, side * side)
    fig, ax = decoded_grid_plot(probs, n=n, lim=2.0, side=side)
    canvas = ax.images[0].get_array()
    assert canvas.shape == (n * side, n * side)
    # Image k of the row-major grid sits in block (row k // n, column k % n).
    torch.testing.assert_close(torch.as_tensor(canvas[side:2 * side, 2 * side:]), probs[5].reshape(side, side))
    assert ax.images[0].get_extent() == [-3.0, 3.0, -3.0, 3.0]  # grid step 2, half a step beyond +-lim
    plt.close(fig)
    with pytest.raises(ValueError, match="n\\*n = 9"):
        decoded_grid_plot(probs[:8], n=3, lim=2.0, side=side)


def test_interpolation_strip():
    probs = torch.rand(6, 784)
    fig, ax = interpolation_strip(probs)
    assert len(ax.get_xticks()) == 6 and ax.images[0].get_array().shape == (28, 6 * 28)
    plt.close(fig)
    with pytest.raises(ValueError, match="one value per image"):
        interpolation_strip(probs, ts=torch.zeros(3))


@pytest.mark.slow
def test_latent_snapshots_record_train_vae_and_are_cached(mnist, tmp_path, monkeypatch):
    monkeypatch.setenv("VAE_LIB_CACHE", str(tmp_path))
    config = VAEConfig(hidden_dims=(32,), z_dim=2)
    train = TrainConfig(epochs=2, batch_size=100, seed=3, progress=False)
    x = binarized_test_set(mnist)[:50]
    snaps = latent_snapshots(config, train, x, n_train=600, data=mnist, device="cpu")
    assert snaps.epochs == [0, 1, 2] and snaps.means.shape == (3, 50, 2) and not snaps.info["cached"]
    # Epoch 0 is the untrained encoder; the last snapshot is the model train_vae caches.
    torch.manual_seed(train.seed)
    torch.testing.assert_close(snaps.means[0], posterior_means(VAE(config), x))
    run = train_vae(config, train, n_train=600, data=mnist, device="cpu")
    assert torch.equal(snaps.means[-1], posterior_means(run.model, x))
    assert not torch.equal(snaps.means[1], snaps.means[2])
    assert len(snaps.history["test_elbo"]) == 2
    again = latent_snapshots(config, train, x, n_train=600, data=mnist, device="cpu")
    assert again.info["cached"] and torch.equal(again.means, snaps.means)
    # A corrupted cache file fails its checksum and is recomputed, identically.
    folder = next((tmp_path / "snapshots").iterdir())
    (folder / "snapshots.pt").write_bytes(b"corrupt")
    redone = latent_snapshots(config, train, x, n_train=600, data=mnist, device="cpu")
    assert not redone.info["cached"] and torch.equal(redone.means, snaps.means)
    assert json.loads((folder / "snapshots.json").read_text())["epochs"] == [0, 1, 2]
    # Other images are another fingerprint.
    other = latent_snapshots(config, train, x[:10], n_train=600, data=mnist, device="cpu")
    assert not other.info["cached"] and math.isclose(float((other.means - snaps.means[:, :10]).abs().max()), 0.0)
