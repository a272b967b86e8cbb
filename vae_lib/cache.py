"""The checksummed cache behind trained runs, cached evaluations and latent snapshots.

Introduced in book/first_vae.md. Every entry is a folder `<cache>/<kind>/<hash>/` holding one
torch file and a JSON file that records, among whatever its user stores, the torch file's sha256
under "sha256". An entry whose file fails its checksum is reported and computed again, never
used; both files are written atomically, the JSON last, so an interrupted write leaves no entry.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import torch

from .data import atomic_write_bytes, sha256_file
from .train import atomic_torch_save


def cache_dir() -> Path:
    """$VAE_LIB_CACHE, else ~/.cache/vae_lib."""
    return Path(os.environ.get("VAE_LIB_CACHE", Path.home() / ".cache" / "vae_lib"))


def tensor_digest(t: torch.Tensor) -> str:
    """sha256 of a tensor's dtype, shape and bytes (on the CPU)."""
    h = hashlib.sha256(f"{t.dtype}{tuple(t.shape)}".encode())
    h.update(t.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def model_digest(model: torch.nn.Module) -> str:
    """sha256 over a model's state dict, name by name: equal digests mean equal parameters."""
    h = hashlib.sha256()
    for name, value in sorted(model.state_dict().items()):
        h.update(name.encode())
        h.update(tensor_digest(value).encode())
    return h.hexdigest()


def load_checked(data_path: Path, info_path: Path, map_location=None):
    """(object, info) of a cache entry whose data file matches its recorded sha256, else None.

    A missing entry returns None quietly; a corrupt one says so on stdout before returning None.
    """
    if not (data_path.is_file() and info_path.is_file()):
        return None
    info = json.loads(info_path.read_text())
    if sha256_file(data_path) != info.get("sha256"):
        print(f"vae_lib: cached file {data_path} fails its checksum; computing it again")
        return None
    return torch.load(data_path, map_location=map_location, weights_only=True), info


def save_checked(obj, data_path: Path, info_path: Path, info: dict) -> dict:
    """Write obj (torch.save) and info plus obj's sha256 (JSON), each atomically; return that info."""
    atomic_torch_save(obj, data_path)
    info = {**info, "sha256": sha256_file(data_path)}
    atomic_write_bytes(info_path, json.dumps(info, indent=1).encode())
    return info
