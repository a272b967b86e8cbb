"""An interactive latent-space explorer that decodes in the browser, so it works without a kernel.

Introduced in the chapter "Exploring the latent space" (book/latent_explorer.md). The decoder
p_theta(x|z)'s weights travel in the widget's state as float16 base64 strings, and a small
JavaScript forward pass (vae_lib/static/latent_explorer.js) turns slider values into the image.
Because the state is saved in the notebook, the widget stays interactive on the static site
(the built book), in JupyterLab, Notebook 7 and Colab alike.

The widget has two views: *prior* (sliders for each latent dimension, a 2-D pad when z_dim = 2, a
button to sample z ~ p(z) = N(0, I), a reset) and *posterior* (pick a test digit, see its posterior
mean mu_phi(x) and standard deviation sigma_phi(x) on the sliders and its reconstruction;
interpolate between the posterior means of two digits with one slider).

`decode_with_state` is the Python twin of the JavaScript forward pass: it computes what the browser
draws, from the same float16-rounded weights, so tests can compare the two pixel by pixel.
"""

from __future__ import annotations

import base64
import math
from dataclasses import dataclass
from pathlib import Path

import anywidget
import numpy as np
import torch
import traitlets
from torch import nn

_STATIC = Path(__file__).parent / "static"
# Activations the JavaScript forward pass implements (it must match model._ACTIVATIONS).
_JS_ACTIVATIONS = {nn.ReLU: "relu", nn.Tanh: "tanh"}
_DTYPES = {"float16": "<f2", "float32": "<f4", "uint8": "u1"}
_FLOAT16_MAX = 65504.0


def encode_array(array, dtype: str = "float16") -> dict:
    """A numeric array as {"dtype", "shape", "data"}: little-endian bytes, base64 encoded.

    float16 halves the weights' size (the 784-400-20 decoder is about 0.65 MB) at a relative
    rounding error of at most 2**-11 per weight; values must be finite and within float16's range.
    """
    if dtype not in _DTYPES:
        raise ValueError(f"unsupported dtype {dtype!r}; use one of {sorted(_DTYPES)}")
    if isinstance(array, torch.Tensor):
        array = array.detach().cpu().numpy()
    array = np.asarray(array)
    if array.dtype.kind not in "biuf":
        raise TypeError(f"expected a numeric array, got dtype {array.dtype}")
    if array.dtype.kind == "f" and not np.isfinite(array).all():
        raise ValueError("the array holds NaN or infinite values; the widget can only show finite weights")
    if dtype == "float16" and array.size and np.abs(array).max() > _FLOAT16_MAX:
        raise ValueError(
            f"a value of magnitude {np.abs(array).max():.3g} overflows float16 (max {_FLOAT16_MAX}); "
            "pass dtype='float32'"
        )
    if dtype == "uint8" and array.size and (array.min() < 0 or array.max() > 255):
        raise ValueError("uint8 arrays must hold values in [0, 255]; scale images to 0..255 first")
    data = np.ascontiguousarray(array, dtype=_DTYPES[dtype]).tobytes()
    return {"dtype": dtype, "shape": list(array.shape), "data": base64.b64encode(data).decode("ascii")}


def decode_array(encoded: dict) -> np.ndarray:
    """The inverse of `encode_array` (as the browser reads it): a numpy array of the stored dtype."""
    try:
        dtype, shape, data = encoded["dtype"], encoded["shape"], encoded["data"]
    except (KeyError, TypeError):
        raise ValueError(
            "expected a dict with keys 'dtype', 'shape' and 'data' as made by encode_array"
        ) from None
    if dtype not in _DTYPES:
        raise ValueError(f"unsupported dtype {dtype!r}; use one of {sorted(_DTYPES)}")
    flat = np.frombuffer(base64.b64decode(data), dtype=_DTYPES[dtype])
    if flat.size != math.prod(shape):
        raise ValueError(f"{flat.size} stored values do not fill the shape {shape}")
    return flat.reshape(shape)


def _decoder_net(model) -> nn.Sequential:
    net = getattr(getattr(model, "decoder", model), "net", None)
    if not isinstance(net, nn.Sequential):
        raise TypeError(
            f"expected a vae_lib VAE or Decoder (with .decoder.net, an nn.Sequential), got {type(model).__name__}"
        )
    return net


def decoder_state(model, dtype: str = "float16") -> dict:
    """The decoder p_theta(x|z) of a vae_lib VAE as widget state: its Linear layers and activation.

    The network must be Linear layers separated by one kind of activation (ReLU or tanh), with
    none after the last layer: the output is one logit per pixel.
    """
    layers, activation = [], None
    for module in _decoder_net(model):
        if isinstance(module, nn.Linear):
            if module.bias is None:
                raise ValueError("every decoder Linear layer needs a bias for the browser forward pass")
            layers.append({"weight": encode_array(module.weight, dtype),  # (out, in)
                           "bias": encode_array(module.bias, dtype)})
        elif type(module) in _JS_ACTIVATIONS:
            name = _JS_ACTIVATIONS[type(module)]
            if activation not in (None, name):
                raise ValueError("the decoder mixes activations; the browser forward pass supports one")
            activation = name
        else:
            raise ValueError(
                f"the browser forward pass cannot run a {type(module).__name__} layer; "
                f"it supports Linear, {', '.join(t.__name__ for t in _JS_ACTIVATIONS)}"
            )
    if not layers:
        raise ValueError("the decoder has no Linear layer")
    z_dim = layers[0]["weight"]["shape"][1]
    x_dim = layers[-1]["weight"]["shape"][0]
    side = math.isqrt(x_dim)
    if side * side != x_dim:
        raise ValueError(f"x_dim={x_dim} is not a square image; the explorer draws square images")
    return {"z_dim": z_dim, "x_dim": x_dim, "image_shape": [side, side],
            "activation": activation or "relu", "layers": layers}


def decode_with_state(state: dict, z) -> np.ndarray:
    """Pixel probabilities sigmoid(logits) for latents z (..., z_dim), computed in float64 from the
    weights stored in `state` (float16-rounded): what the browser's forward pass draws."""
    z = np.asarray(z, dtype=np.float64)
    if z.shape[-1:] != (state["z_dim"],):
        raise ValueError(f"expected latents with last dimension z_dim={state['z_dim']}, got shape {z.shape}")
    h = z
    for i, layer in enumerate(state["layers"]):
        w = decode_array(layer["weight"]).astype(np.float64)
        h = h @ w.T + decode_array(layer["bias"]).astype(np.float64)
        if i < len(state["layers"]) - 1:
            h = np.maximum(h, 0.0) if state["activation"] == "relu" else np.tanh(h)
    return 1.0 / (1.0 + np.exp(-h))


@torch.no_grad()
def posterior_digits(model, x: torch.Tensor, labels=None) -> dict:
    """Posterior means mu_phi(x) and standard deviations sigma_phi(x) = exp(logvar / 2) of a few
    images x (n, x_dim) with values in [0, 1], plus the images themselves (as 0..255), as state."""
    if not isinstance(x, torch.Tensor) or x.dim() != 2:
        raise ValueError("expected the digits as a (n, x_dim) tensor; flatten images first")
    if x.shape[0] == 0 or x.shape[0] > 100:
        raise ValueError(f"pass between 1 and 100 digits (each travels in the page), got {x.shape[0]}")
    if float(x.min()) < 0 or float(x.max()) > 1:
        raise ValueError("digit pixels must lie in [0, 1]")
    device = next(model.parameters()).device
    dtype = next(model.parameters()).dtype
    mu, logvar = model.encode(x.to(device=device, dtype=dtype))
    sigma = torch.exp(0.5 * logvar)
    labels = [] if labels is None else [int(v) for v in labels]
    if labels and len(labels) != x.shape[0]:
        raise ValueError(f"got {len(labels)} labels for {x.shape[0]} digits")
    return {"n": int(x.shape[0]), "labels": labels,
            "mu": encode_array(mu.float(), "float32"), "sigma": encode_array(sigma.float(), "float32"),
            "images": encode_array(torch.round(x.cpu() * 255).to(torch.uint8), "uint8")}


@dataclass(frozen=True)
class ExplorerConfig:
    """How the explorer looks; defaults suit MNIST and a standard normal prior."""

    # Sliders span [-z_range, z_range]: under N(0, 1), 99.7% of the prior mass lies within 3.
    z_range: float = 3.0
    # Displayed size of the 28 x 28 image in CSS pixels (the canvas itself stays 28 x 28): 5 screen
    # pixels per image pixel, and two images beside the controls fit the book's text column.
    image_px: int = 140
    # Weight precision in the page: float16 halves the page size; "float32" for exactness.
    dtype: str = "float16"

    def __post_init__(self) -> None:
        if not (math.isfinite(self.z_range) and self.z_range > 0):
            raise ValueError(f"z_range must be a positive number, got {self.z_range!r}")
        if int(self.image_px) < 28:
            raise ValueError(f"image_px must be at least 28, got {self.image_px!r}")
        if self.dtype not in ("float16", "float32"):
            raise ValueError(f"dtype must be 'float16' or 'float32', got {self.dtype!r}")


class LatentExplorer(anywidget.AnyWidget):
    """Sliders over z, the decoded image p_theta(x|z) drawn by the browser, and a posterior view.

    `z` is synced both ways: moving a slider updates `explorer.z` in the kernel (on release), and
    setting `explorer.z = [...]` in Python moves the sliders. Introduced in book/latent_explorer.md.
    """

    _esm = _STATIC / "latent_explorer.js"
    _css = _STATIC / "latent_explorer.css"

    decoder = traitlets.Dict().tag(sync=True)
    digits = traitlets.Dict().tag(sync=True)
    z = traitlets.List(traitlets.Float()).tag(sync=True)
    z_range = traitlets.Float(3.0).tag(sync=True)
    image_px = traitlets.Int(140).tag(sync=True)
    title = traitlets.Unicode("").tag(sync=True)

    def __init__(self, model, digits: torch.Tensor | None = None, labels=None, title: str = "",
                 config: ExplorerConfig = ExplorerConfig(), **kwargs):
        state = decoder_state(model, config.dtype)
        digit_state = posterior_digits(model, digits, labels) if digits is not None else {}
        super().__init__(decoder=state, digits=digit_state, z=[0.0] * state["z_dim"],
                         z_range=float(config.z_range), image_px=int(config.image_px),
                         title=title, **kwargs)

    @traitlets.validate("z")
    def _check_z(self, proposal):
        z = proposal["value"]
        z_dim = self.decoder.get("z_dim") if self.decoder else None
        if z_dim is not None and len(z) != z_dim:
            raise traitlets.TraitError(f"z must have z_dim={z_dim} entries, got {len(z)}")
        if not all(math.isfinite(v) for v in z):
            raise traitlets.TraitError("z must hold finite numbers")
        return [float(v) for v in z]

    def image(self) -> np.ndarray:
        """The image the browser shows for the current z: pixel probabilities, (side, side)."""
        return decode_with_state(self.decoder, self.z).reshape(self.decoder["image_shape"])


__all__ = ["LatentExplorer", "ExplorerConfig", "encode_array", "decode_array", "decoder_state",
           "decode_with_state", "posterior_digits"]
