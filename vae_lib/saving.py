"""Save a trained VAE with its configuration, and load it back: the files `python -m vae_lib`
writes and reads.

Introduced with the command line (docs/cli.md). A saved model is one torch file holding a dict:
`format` (FORMAT), `model_config` (VAEConfig as a dict), `state_dict` (CPU tensors) and
`metadata` (a JSON string: training configuration, history, ...). It is written atomically and
read with `torch.load(weights_only=True)`, which refuses to run code from the file.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch

from .model import VAE, VAEConfig
from .train import atomic_torch_save

FORMAT = "vae_lib.saved_model/1"


class ModelFileError(ValueError):
    """A file that exists but is not a readable model saved by `save_model`."""


@dataclass
class SavedModel:
    model: VAE  # in eval mode
    metadata: dict


def save_model(model: VAE, path: str | Path, metadata: dict | None = None) -> Path:
    """Write `model` (its config and weights) and JSON-serialisable `metadata` to `path`, atomically."""
    if not isinstance(model, VAE):
        raise TypeError(f"save_model saves a vae_lib.model.VAE, got {type(model).__name__}")
    path = Path(path)
    payload = {
        "format": FORMAT,
        "model_config": model.config.to_dict(),
        "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        "metadata": json.dumps(metadata or {}),
    }
    atomic_torch_save(payload, path)
    path.chmod(0o644)  # the atomic write's temporary file was readable by its owner only
    return path


def load_model(path: str | Path, device: torch.device | str = "cpu") -> SavedModel:
    """Rebuild the VAE saved at `path` on `device`; clear errors for a missing or foreign file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no saved model at {path}; train one with `python -m vae_lib train --out {path}`")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        # torch's own message suggests weights_only=False, which would let the file run code: not repeated.
        raise ModelFileError(
            f"cannot read {path} ({type(err).__name__}): the file is corrupt, truncated, or was not "
            "written by vae_lib (`python -m vae_lib train --out FILE` or vae_lib.saving.save_model)"
        ) from err
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        found = payload.get("format") if isinstance(payload, dict) else type(payload).__name__
        hint = (" It looks like a training checkpoint (it has 'optimizer'); the saved model is the file "
                "given to --out." if isinstance(payload, dict) and "optimizer" in payload else "")
        raise ModelFileError(f"{path} is not a model saved by vae_lib: expected format {FORMAT!r}, found {found!r}.{hint}")
    try:
        model = VAE(VAEConfig(**payload["model_config"]))
        model.load_state_dict(payload["state_dict"])
        metadata = json.loads(payload["metadata"])
    except (KeyError, TypeError, ValueError, RuntimeError) as err:
        raise ModelFileError(f"{path} holds a damaged model (configuration and weights disagree): {err}") from err
    return SavedModel(model.to(device).eval(), metadata)
