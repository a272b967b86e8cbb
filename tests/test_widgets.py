"""The Python side of vae_lib.widgets.LatentExplorer: state encoding, shapes, the float64 twin of
the browser's forward pass, and bad inputs. test_widget_browser.py checks the JavaScript side
against decode_with_state in a real browser."""

from __future__ import annotations

import base64
import json

import numpy as np
import pytest
import torch
import traitlets
from torch import nn

from vae_lib.model import VAE, VAEConfig
from vae_lib.widgets import (
    ExplorerConfig,
    LatentExplorer,
    decode_array,
    decode_with_state,
    decoder_state,
    encode_array,
    posterior_digits,
)


@pytest.fixture
def square_vae():
    """A small VAE on 4 x 4 'images' with two hidden layers, in float64."""
    torch.manual_seed(0)
    return VAE(VAEConfig(x_dim=16, hidden_dims=(8, 6), z_dim=3, activation="tanh")).double().eval()


@pytest.mark.parametrize("shape", [(5,), (3, 4), (2, 3, 4), (0, 7)], ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("dtype", ["float16", "float32"])
def test_float_round_trip(shape, dtype):
    rng = np.random.default_rng(0)
    array = rng.normal(size=shape) * 10
    encoded = encode_array(array, dtype)
    assert encoded["shape"] == list(shape) and encoded["dtype"] == dtype
    json.dumps(encoded)  # the state must be plain JSON
    decoded = decode_array(encoded)
    assert decoded.shape == shape
    # Round-to-nearest to the stored precision, exactly what numpy's cast does.
    np.testing.assert_array_equal(decoded, array.astype(np.float16 if dtype == "float16" else np.float32))


def test_float16_is_little_endian_and_compact():
    encoded = encode_array(np.array([1.0, -2.0]), "float16")
    # 1.0 = 0x3C00 and -2.0 = 0xC000 in IEEE half precision, low byte first.
    assert base64.b64decode(encoded["data"]) == bytes([0x00, 0x3C, 0x00, 0xC0])


def test_uint8_and_torch_inputs():
    image = torch.tensor([[0, 17, 255]], dtype=torch.uint8)
    np.testing.assert_array_equal(decode_array(encode_array(image, "uint8")), image.numpy())
    weights = torch.randn(3, 2, dtype=torch.float64, requires_grad=True)
    np.testing.assert_allclose(decode_array(encode_array(weights, "float32")), weights.detach().numpy(), rtol=1e-7)


@pytest.mark.parametrize("array, dtype, error, match", [
    (np.array([1.0, np.nan]), "float16", ValueError, "NaN or infinite"),
    (np.array([np.inf]), "float32", ValueError, "NaN or infinite"),
    (np.array([7e4]), "float16", ValueError, "overflows float16"),
    (np.array([1.0]), "float64", ValueError, "unsupported dtype"),
    (np.array(["a"]), "float16", TypeError, "numeric array"),
    (np.array([-1, 3]), "uint8", ValueError, r"\[0, 255\]"),
    (np.array([256]), "uint8", ValueError, r"\[0, 255\]"),
])
def test_encode_rejects_bad_input(array, dtype, error, match):
    with pytest.raises(error, match=match):
        encode_array(array, dtype)


def test_decode_rejects_bad_input():
    good = encode_array(np.ones((2, 3)), "float32")
    with pytest.raises(ValueError, match="keys 'dtype', 'shape' and 'data'"):
        decode_array({"shape": [2, 3]})
    with pytest.raises(ValueError, match="keys"):
        decode_array("not a dict")
    with pytest.raises(ValueError, match="do not fill the shape"):
        decode_array({**good, "shape": [4, 3]})
    with pytest.raises(ValueError, match="unsupported dtype"):
        decode_array({**good, "dtype": "int64"})


def test_decoder_state_shapes(square_vae):
    state = decoder_state(square_vae)
    assert (state["z_dim"], state["x_dim"], state["image_shape"], state["activation"]) == (3, 16, [4, 4], "tanh")
    # The decoder mirrors the encoder: z_dim -> 6 -> 8 -> x_dim; weights are (out, in) like torch.
    assert [layer["weight"]["shape"] for layer in state["layers"]] == [[6, 3], [8, 6], [16, 8]]
    assert [layer["bias"]["shape"] for layer in state["layers"]] == [[6], [8], [16]]
    # The state also accepts the decoder alone.
    assert decoder_state(square_vae.decoder) == state


@pytest.mark.parametrize("batch_shape", [(), (5,), (2, 4)], ids=["single", "batch", "grid"])
def test_decode_with_state_matches_torch(square_vae, batch_shape):
    z = torch.randn(*batch_shape, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected = torch.sigmoid(square_vae.decode(z)).numpy()
    # float32 weights: only float32 rounding of the weights separates the two (relative 6e-8).
    exact = decode_with_state(decoder_state(square_vae, "float32"), z.numpy())
    assert exact.shape == (*batch_shape, 16)
    np.testing.assert_allclose(exact, expected, atol=1e-6)
    # float16 weights: each weight is off by at most 2**-11 relative; far below one grey level.
    rounded = decode_with_state(decoder_state(square_vae, "float16"), z.numpy())
    assert np.abs(rounded - expected).max() < 1 / 255
    assert np.abs(rounded - expected).max() > 0  # the rounding is real, the tolerance is needed


def test_decode_with_state_is_the_rounded_network(square_vae):
    """With the float16-rounded weights loaded into torch, torch and the twin agree in float64."""
    state = decoder_state(square_vae)
    rounded = VAE(square_vae.config).double()
    linears = [m for m in rounded.decoder.net if isinstance(m, nn.Linear)]
    with torch.no_grad():
        for linear, layer in zip(linears, state["layers"]):
            linear.weight.copy_(torch.from_numpy(decode_array(layer["weight"]).astype(np.float64)))
            linear.bias.copy_(torch.from_numpy(decode_array(layer["bias"]).astype(np.float64)))
        z = torch.randn(10, 3, dtype=torch.float64)
        np.testing.assert_allclose(decode_with_state(state, z.numpy()),
                                   torch.sigmoid(rounded.decode(z)).numpy(), rtol=1e-12)


def test_relu_decoder_and_wrong_latent_size():
    torch.manual_seed(0)
    model = VAE(VAEConfig(x_dim=9, hidden_dims=(5,), z_dim=2, activation="relu"))
    state = decoder_state(model)
    assert state["activation"] == "relu"
    with pytest.raises(ValueError, match="z_dim=2"):
        decode_with_state(state, np.zeros(3))


def test_decoder_state_rejects_unsupported_models(tiny_vae):
    with pytest.raises(ValueError, match="not a square image"):
        decoder_state(tiny_vae)  # x_dim = 12
    with pytest.raises(TypeError, match="vae_lib VAE or Decoder"):
        decoder_state(nn.Linear(2, 4))
    model = VAE(VAEConfig(x_dim=4, hidden_dims=(3,), z_dim=2))
    model.decoder.net.append(nn.Sigmoid())
    with pytest.raises(ValueError, match="cannot run a Sigmoid layer"):
        decoder_state(model)
    model = VAE(VAEConfig(x_dim=4, hidden_dims=(3, 3), z_dim=2, activation="relu"))
    model.decoder.net[3] = nn.Tanh()
    with pytest.raises(ValueError, match="mixes activations"):
        decoder_state(model)
    model = VAE(VAEConfig(x_dim=4, hidden_dims=(3,), z_dim=2))
    model.decoder.net[0] = nn.Linear(2, 3, bias=False)
    with pytest.raises(ValueError, match="needs a bias"):
        decoder_state(model)


def test_posterior_digits_are_the_encoder_outputs(square_vae):
    x = torch.rand(4, 16, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    digits = posterior_digits(square_vae, x, labels=[3, 1, 4, 1])
    with torch.no_grad():
        mu, logvar = square_vae.encode(x)
    assert digits["n"] == 4 and digits["labels"] == [3, 1, 4, 1]
    np.testing.assert_allclose(decode_array(digits["mu"]), mu.numpy(), rtol=1e-6)
    # sigma = exp(logvar / 2): the standard deviation, not the variance.
    np.testing.assert_allclose(decode_array(digits["sigma"]), torch.exp(0.5 * logvar).numpy(), rtol=1e-6)
    np.testing.assert_array_equal(decode_array(digits["images"]), np.round(x.numpy() * 255).astype(np.uint8))


@pytest.mark.parametrize("x, labels, match", [
    (torch.rand(16), None, r"\(n, x_dim\) tensor"),
    (torch.rand(0, 16), None, "between 1 and 100"),
    (torch.rand(101, 16), None, "between 1 and 100"),
    (torch.rand(2, 16) + 1, None, r"in \[0, 1\]"),
    (torch.rand(2, 16), [1], "got 1 labels for 2 digits"),
], ids=["1-d", "empty", "too-many", "range", "labels"])
def test_posterior_digits_rejects_bad_input(square_vae, x, labels, match):
    with pytest.raises(ValueError, match=match):
        posterior_digits(square_vae, x, labels)


def test_explorer_state_and_z(square_vae):
    explorer = LatentExplorer(square_vae, digits=torch.rand(3, 16), labels=[0, 1, 2], title="t")
    state = explorer.get_state()
    assert "export default" in state["_esm"] and ".vle" in state["_css"]
    assert state["z"] == [0.0, 0.0, 0.0] and state["title"] == "t" and state["digits"]["n"] == 3
    json.dumps(state)
    explorer.z = [0.5, -1, 2]
    assert explorer.z == [0.5, -1.0, 2.0]
    np.testing.assert_allclose(explorer.image(), decode_with_state(explorer.decoder, [0.5, -1, 2]).reshape(4, 4))
    assert explorer.image().shape == (4, 4)
    with pytest.raises(traitlets.TraitError, match="z_dim=3"):
        explorer.z = [0.0, 0.0]
    with pytest.raises(traitlets.TraitError, match="finite"):
        explorer.z = [0.0, float("nan"), 0.0]
    assert LatentExplorer(square_vae).digits == {}  # no posterior view without digits


@pytest.mark.parametrize("kwargs, match", [
    ({"z_range": 0}, "z_range"), ({"z_range": float("inf")}, "z_range"),
    ({"image_px": 10}, "image_px"), ({"dtype": "int8"}, "dtype"),
])
def test_explorer_config_rejects_bad_values(kwargs, match):
    with pytest.raises(ValueError, match=match):
        ExplorerConfig(**kwargs)


@pytest.mark.slow
def test_explorer_syncs_z_with_a_live_kernel(tmp_path):
    """In a real kernel: the front end's update message (what save_changes sends when a slider is
    released) sets explorer.z, and setting explorer.z in Python sends the update that moves the
    sliders."""
    import os
    from pathlib import Path

    from jupyter_client.manager import KernelManager

    repo = Path(__file__).resolve().parents[1]
    km = KernelManager(kernel_name="python3")
    km.start_kernel(env={**os.environ, "PYTHONPATH": str(repo)}, cwd=str(tmp_path))
    kc = km.client()
    kc.start_channels()
    try:
        kc.wait_for_ready(timeout=120)

        def run(code: str) -> list[dict]:
            msg_id = kc.execute(code)
            messages = []
            while True:
                msg = kc.get_iopub_msg(timeout=120)
                if msg["parent_header"].get("msg_id") != msg_id:
                    continue
                messages.append(msg)
                if msg["msg_type"] == "error":
                    pytest.fail("\n".join(msg["content"]["traceback"]))
                if msg["msg_type"] == "status" and msg["content"]["execution_state"] == "idle":
                    return messages

        opened = run("import torch\nfrom vae_lib.model import VAE, VAEConfig\n"
                     "from vae_lib.widgets import LatentExplorer\ntorch.manual_seed(0)\n"
                     "w = LatentExplorer(VAE(VAEConfig(x_dim=16, hidden_dims=(8,), z_dim=3)))\nw")
        comm_id = next(m["content"]["comm_id"] for m in opened if m["msg_type"] == "comm_open"
                       and m["content"]["data"]["state"].get("_model_name") == "AnyModel")
        # The message the browser sends on slider release.
        kc.shell_channel.send(kc.session.msg("comm_msg", {
            "comm_id": comm_id, "data": {"method": "update", "state": {"z": [0.5, -1.0, 2.0]}, "buffer_paths": []}}))
        printed = run("print(w.z, w.image().shape)")
        text = "".join(m["content"]["text"] for m in printed if m["msg_type"] == "stream")
        assert text.strip() == "[0.5, -1.0, 2.0] (4, 4)"

        updates = run("w.z = [1.0, 2.0, 3.0]")
        states = [m["content"]["data"].get("state", {}) for m in updates
                  if m["msg_type"] == "comm_msg" and m["content"]["comm_id"] == comm_id]
        assert {"z": [1.0, 2.0, 3.0]} in states
    finally:
        kc.stop_channels()
        km.shutdown_kernel(now=True)
