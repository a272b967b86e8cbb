"""Settings the chapters share: the smoke mode and the device.

Introduced in book/first_vae.md. Set the environment variable VAE_BOOK_SMOKE=1 to build every
chapter with tiny budgets (a few hundred images, one or two epochs, small K): the same code
path runs, only smaller. CI uses it for the test build.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch


def smoke_mode() -> bool:
    """True when VAE_BOOK_SMOKE is set to anything but '', '0' or 'false'."""
    return os.environ.get("VAE_BOOK_SMOKE", "").strip().lower() not in ("", "0", "false", "no")


def pick(full, smoke):
    """`smoke` in smoke mode, `full` otherwise: budgets are written `pick(20, 1)` in chapters."""
    return smoke if smoke_mode() else full


def default_device() -> torch.device:
    """CUDA if available (and not disabled by VAE_LIB_DEVICE), else Apple's MPS, else the CPU."""
    name = os.environ.get("VAE_LIB_DEVICE")
    if name:
        return torch.device(name)
    if torch.cuda.is_available():
        return torch.device("cuda")
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def bench_results(kind: str = "speed") -> dict[str, dict]:
    """The committed benchmark files of the book's repository, by file stem: kind "speed" reads
    bench/results/<device>.json (bench/train_speed.py), "burda" bench/results/burda_<device>.json
    (bench/reproduce_burda.py). Looks in the working folder and its parents, then beside vae_lib;
    returns {} where there is no repository (vae_lib installed from a wheel, as on Colab).
    Introduced in book/gpu.md.
    """
    if kind not in ("speed", "burda"):
        raise ValueError(f"kind must be 'speed' or 'burda', got {kind!r}")
    here = Path(__file__).resolve().parent.parent
    for folder in [Path.cwd(), *Path.cwd().parents, here]:
        results = folder / "bench" / "results"
        if results.is_dir():
            return {f.stem: json.loads(f.read_text()) for f in sorted(results.glob("*.json"))
                    if f.stem.startswith("burda_") == (kind == "burda")}
    return {}
